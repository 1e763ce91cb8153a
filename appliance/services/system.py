"""Health, GPUs (NVML), workspace usage and the list of running jobs."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from appliance import __version__
from appliance.store.imports import IN_PROGRESS
from appliance.store.status import ACTIVE
from appliance.store.tables import Evaluation, Experiment, Export, ImportJob, Project
from appliance.store.paths import Workspace
from appliance.services.ray_runtime import ray_is_up


def health(session: Session, workspace: Workspace) -> dict:
    try:
        session.execute(text("SELECT 1"))
        database = True
    except Exception:
        database = False
    return {
        "ray": ray_is_up(),
        "database": database,
        "workspace_writable": _writable(workspace.root),
        "version": __version__,
    }


def _writable(folder: Path) -> bool:
    probe = folder / f".probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
        return True
    except OSError:
        return False


def gpus() -> dict:
    """Per-GPU facts from NVML; an empty list and the reason on hosts without an NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no driver, no library: a normal situation on CPU hosts
        return {"gpus": [], "reason": f"NVML unavailable: {exc}"}
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            found.append({
                "index": index,
                "name": name.decode() if isinstance(name, bytes) else name,
                "memory_total": int(memory.total),
                "memory_used": int(memory.used),
                "utilization": int(util.gpu),
                "temperature": int(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
            })
        return {"gpus": found, "reason": None if found else "NVML found no GPU"}
    except Exception as exc:
        return {"gpus": [], "reason": f"NVML error: {exc}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def workspace_usage(session: Session, workspace: Workspace) -> dict:
    usage = shutil.disk_usage(workspace.root)
    projects = [
        {"project_id": pid, "name": name, "bytes": _folder_bytes(workspace.project_dir(pid))}
        for pid, name in session.execute(select(Project.id, Project.name)).all()
    ]
    return {"path": str(workspace.root), "projects": projects, "free_bytes": usage.free, "total_bytes": usage.total}


def active_jobs(session: Session) -> list[dict]:
    """Queued and running work of every kind, oldest first."""
    jobs: list[dict] = []
    for kind, model in (("import", ImportJob), ("training", Experiment), ("evaluation", Evaluation), ("export", Export)):
        statuses = IN_PROGRESS if kind == "import" else ACTIVE  # an import being cancelled still runs
        for row in session.scalars(select(model).where(model.status.in_(statuses))):
            done, total = getattr(row, "done", None), getattr(row, "total", None)
            if kind == "training":
                done, total = row.epochs_done, row.params.get("epochs")
            jobs.append({
                "kind": kind, "id": row.id, "project_id": row.project_id, "status": row.status,
                "done": done, "total": total, "created_at": row.created_at,
            })
    return sorted(jobs, key=lambda j: j["created_at"])
