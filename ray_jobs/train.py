"""Training on Ray Train (V2 API): one `TorchTrainer` worker — pinned to one GPU on GPU hosts,
CPU otherwise — running the Ray-free Lightning core with Ray's DDP strategy and environment.

The same entrypoint runs from the UI (launched as a zero-CPU Ray task) and from
`ray job submit -- python -m ray_jobs.train --project P --experiment E [--resume]`:
it takes the appliance's storage settings from the event-bus actor, so both kinds of run land
in the same database and stream to the same page.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
import traceback
from pathlib import Path
from typing import Annotated

import ray
import typer

from appliance.store import runs
from appliance.store.db import session_scope
from appliance.store.errors import AppError
from appliance.store.paths import Workspace
from appliance.store.records import get_owned
from appliance.store.status import JobStatus
from appliance.store.tables import Experiment
from ray_jobs.events import appliance_settings, get_event_bus, pass_gate
from ray_jobs.gpus import cluster_gpus

CHECKPOINTS_KEPT = 2


class RunReporter:
    """Worker side: persist each epoch, publish it on the bus, log a line, answer stop requests.
    Writes only while the run still holds `claim_id` (a worker of an older claim writes nothing)."""

    def __init__(self, db_url: str, experiment_id: str, log_file: str, claim_id: str | None = None):
        self.db_url, self.experiment_id, self.log_file, self.claim_id = db_url, experiment_id, log_file, claim_id
        self.bus = get_event_bus()

    def epoch_end(self, event: dict) -> None:
        runs.record_epoch(self.db_url, self.experiment_id, event, self.claim_id)
        self.bus.publish.remote(self.experiment_id, "epoch_end", event)
        self.log(
            f"epoch {event['epoch']}/{event['epochs']}  train_loss {_fmt(event['train_loss'])}  "
            f"val_loss {_fmt(event['val_loss'])}  val_metric {_fmt(event['val_metric'])}  "
            f"lr {_fmt(event['lr'])}  {event['seconds']:.1f}s  {event['images_per_s']:.1f} img/s"
        )

    def progress(self, event: dict) -> None:
        """Batches done in the current epoch (throttled by `BatchProgressCallback`); on the bus only."""
        self.bus.publish.remote(self.experiment_id, "progress", event)

    def log(self, line: str) -> None:
        write_log(self.log_file, line)
        self.bus.publish.remote(self.experiment_id, "log", {"line": line})

    def should_stop(self) -> bool:
        return bool(ray.get(self.bus.stop_requested.remote(self.experiment_id)))


def write_log(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}\n")


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4g}"


CHECKPOINT_NAME = "checkpoint.ckpt"  # the file inside each Ray checkpoint directory


def report_to_ray_callback(checkpoints):
    """A Lightning callback that reports each epoch to Ray Train with the `last.ckpt` just written
    as the checkpoint — linked, not saved a second time (RayTrainReportCallback would serialise
    the whole model and optimiser again every epoch)."""
    import tempfile

    import ray.train
    from lightning.pytorch.callbacks import Callback

    class ReportToRay(Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            metrics["epoch"] = trainer.current_epoch
            with tempfile.TemporaryDirectory() as folder:
                checkpoint = None
                if trainer.is_global_zero and checkpoints.last_path.is_file():
                    target = os.path.join(folder, CHECKPOINT_NAME)
                    try:
                        os.link(checkpoints.last_path, target)
                    except OSError:
                        shutil.copyfile(checkpoints.last_path, target)
                    checkpoint = ray.train.Checkpoint.from_directory(folder)
                ray.train.report(metrics, checkpoint=checkpoint)

    return ReportToRay()


def epoch_gate_callback(bus, experiment_id: str):
    """Test hook (setting `training_gates`): rank 0 passes gate `epoch:<n>` before epoch n trains,
    after every callback of epoch n-1 (event, checkpoint files, Ray's report) has run."""
    from lightning.pytorch.callbacks import Callback

    class EpochGate(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.is_global_zero:
                pass_gate(bus, experiment_id, f"epoch:{trainer.current_epoch + 1}")

    return EpochGate()


def batch_gate_callback(bus, experiment_id: str):
    """Test hook (setting `training_gates`): rank 0 passes gate `batch:<n>` after the first batch of
    epoch n, once its progress event is published — a test can hold a run mid-epoch there."""
    from lightning.pytorch.callbacks import Callback

    class BatchGate(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.is_global_zero and batch_idx == 0:
                pass_gate(bus, experiment_id, f"batch:{trainer.current_epoch + 1}")

    return BatchGate()


EPOCH_LINE = re.compile(r"^\S+ \S+  epoch (\d+)/\d+  ")  # a line `RunReporter.epoch_end` wrote


def checkpoint_epoch(path: str | Path) -> tuple[int, int]:
    """(epochs completed, global step) of a Lightning checkpoint written at the end of an epoch
    (its `epoch` is then the 0-based index of that epoch). Memory-mapped: the weights are not read."""
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)
    return int(state["epoch"]) + 1, int(state["global_step"])


def newest_checkpoint(candidates: list[tuple[str, str]]) -> tuple[str, str, int] | None:
    """Of (description, path) candidates, the one furthest into training as (description, path,
    epochs completed); unreadable ones are skipped. Ties go to the earlier candidate."""
    best = None
    for name, path in candidates:
        try:
            epoch, step = checkpoint_epoch(path)
        except Exception:
            continue
        if best is None or (epoch, step) > best[0]:
            best = ((epoch, step), name, path)
    return None if best is None else (best[1], best[2], best[0][0])


def rewind_log(log_file: str, epoch: int) -> None:
    """Drop the log's epoch lines after `epoch` (those epochs are trained again), atomically."""
    path = Path(log_file)
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    kept = [line for line in lines if not ((m := EPOCH_LINE.match(line)) and int(m.group(1)) > epoch)]
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)


def resume_point(reporter: RunReporter | None, cfg: dict, ray_checkpoint_file: str | None) -> str | None:
    """On resume: the newest checkpoint on disk — Ray's latest reported one, or the run's own
    `last.ckpt` when it is further on (Ray registers a reported checkpoint a little later, so after
    a kill -9 its latest may lag the run by epochs). The recorded history and the log are made to
    match it: epochs recorded after it are forgotten and trained again (by the rank-0 worker, the one
    given a `reporter`). None: start afresh."""
    candidates = [("Ray's checkpoint", ray_checkpoint_file)] if ray_checkpoint_file else []
    last = Path(cfg["weights_dir"]) / "last.ckpt"
    if last.is_file():
        candidates.append(("the run's last.ckpt", str(last)))
    chosen = newest_checkpoint(candidates)
    if reporter is None:
        return None if chosen is None else chosen[1]
    epoch = 0 if chosen is None else chosen[2]
    dropped = runs.rewind(cfg["db_url"], cfg["experiment_id"], epoch, cfg.get("claim_id"))
    rewind_log(cfg["log_file"], epoch)
    if chosen is None:
        reporter.log("no checkpoint to resume from: training from the start")
        return None
    span = f" {dropped[0]}" if len(dropped) == 1 else f"s {dropped[0]}-{dropped[-1]}" if dropped else ""
    note = f"; recorded epoch{span} not in it, trained again" if dropped else ""
    reporter.log(f"resuming after epoch {epoch} from {chosen[0]}{note}")
    return chosen[1]


def cuda_usable() -> bool:
    """CUDA really works in this process: Ray may assign a GPU (and set CUDA_VISIBLE_DEVICES) on a node
    that only declares one (`ray start --num-gpus=1` without a driver), where training must use the CPU."""
    import torch

    return torch.cuda.is_available()


def _cpu_ddp_strategy():
    """Ray's DDP strategy on the CPU: its `root_device` is Ray's device, which is `cuda:0` as soon as
    Ray assigned a GPU, even one CUDA cannot open."""
    import torch
    from ray.train.lightning import RayDDPStrategy

    class CpuRayDDPStrategy(RayDDPStrategy):
        @property
        def root_device(self) -> torch.device:
            return torch.device("cpu")

    return CpuRayDDPStrategy()


def torch_config():
    """Ray Train's torch setup with the process-group backend chosen on the workers themselves: NCCL
    where CUDA works, Gloo where Ray assigned a GPU that CUDA cannot open (NCCL refuses to start
    there: "ProcessGroupNCCL is only supported with GPUs, no GPUs found")."""
    import dataclasses

    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _TorchBackend  # Ray 2.60; pinned

    class CudaAwareBackend(_TorchBackend):
        def on_start(self, worker_group, backend_config):
            if backend_config.backend in (None, "nccl") and not all(worker_group.execute(cuda_usable)):
                backend_config = dataclasses.replace(backend_config, backend="gloo")
            super().on_start(worker_group, backend_config)

    @dataclasses.dataclass
    class CudaAwareTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return CudaAwareBackend

    return CudaAwareTorchConfig()


def _worker_cpus() -> int | None:
    """The CPUs Ray gave this Train worker (DataLoader workers are sized from it)."""
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:
        return None
    return max(1, round(cpus)) if cpus else None


def train_loop_per_worker(cfg: dict) -> None:
    """Runs on the Train worker. On resume, continues from the newest checkpoint on disk (`resume_point`)."""
    import ray.train
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

    from ray_jobs.core.data import set_max_image_pixels
    from ray_jobs.core.fit import BatchProgressCallback, BestLastCheckpoint, EpochEventCallback, assemble_fit
    from ray_jobs.core.module import TrainConfig

    set_max_image_pixels(cfg.get("max_image_pixels"))
    reporter = RunReporter(cfg["db_url"], cfg["experiment_id"], cfg["log_file"], cfg.get("claim_id"))
    checkpoints = BestLastCheckpoint(cfg["weights_dir"])
    callbacks = [  # in this order: the event, then the files, then Ray's copy of last.ckpt
        EpochEventCallback(reporter.epoch_end, reporter.should_stop),
        checkpoints,
        report_to_ray_callback(checkpoints),
        BatchProgressCallback(reporter.progress),
    ]
    if cfg.get("gates"):
        callbacks.insert(0, epoch_gate_callback(reporter.bus, cfg["experiment_id"]))
        callbacks.append(batch_gate_callback(reporter.bus, cfg["experiment_id"]))  # after the progress event
    on_gpu = cfg["use_gpu"] and cuda_usable()
    if cfg["use_gpu"] and not on_gpu:
        reporter.log(f"Ray gave this worker a GPU share (GPU ids {ray.get_gpu_ids()}) but CUDA is not available "
                     "on its node: training on the CPU")
    trainer, module, datamodule = assemble_fit(
        TrainConfig.from_dict(cfg["config"]), cfg["train_samples"], cfg["val_samples"], callbacks,
        cache_dir=cfg.get("cache_dir"), cache_max_bytes=cfg.get("cache_max_bytes"), cpus=_worker_cpus(),
        log=reporter.log, accelerator="gpu" if on_gpu else "cpu", devices="auto",
        strategy=RayDDPStrategy() if on_gpu else _cpu_ddp_strategy(), plugins=[RayLightningEnvironment()],
        default_root_dir=cfg["run_dir"],
    )
    trainer = prepare_trainer(trainer)
    checkpoint = ray.train.get_checkpoint() if cfg["resume"] else None
    with (checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext()) as folder:
        ckpt_path = None
        if cfg["resume"]:
            lead = reporter if ray.train.get_context().get_world_rank() == 0 else None
            ckpt_path = resume_point(lead, cfg, os.path.join(folder, CHECKPOINT_NAME) if folder else None)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)


def run_training(experiment_id: str, resume: bool, claim_id: str, ray_driver: str | None = None) -> dict:
    """Drive one claimed run (`appliance.store.runs.claim` returned `claim_id`) to its end and
    return `{"status", "best_metric", "error"}`. A record that is no longer queued under that claim
    (claimed again, stopped, reaped, deleted) is refused with a 409 `Conflict` and left untouched.
    Never leaves a run it took `running`: every exit path goes through `runs.finish`.
    `ray_driver` identifies this driver to Ray (`task:…`, `driver:…`), so a reaper can ask Ray later."""
    settings = appliance_settings()
    bus = get_event_bus()
    gates = bool(settings.get("training_gates"))
    db_url, workspace = settings["db_url"], Workspace(Path(settings["workspace"]))
    # A driver waiting to start is alive too: heart-beat from here, so a queued run is not reaped.
    beating = threading.Event()
    threading.Thread(target=_heartbeat, args=(db_url, experiment_id, claim_id, beating), daemon=True).start()
    try:
        if gates:
            pass_gate(bus, experiment_id, "start")
        run = runs.plan(db_url, workspace, experiment_id)
        if run is None:
            raise SystemExit(f"Experiment {experiment_id} not found")
        if run.status == JobStatus.QUEUED and run.claim_id == claim_id and ray.get(bus.stop_requested.remote(experiment_id)):
            # Stopped while queued: end before anything is touched (history, checkpoints, log).
            return _finish(bus, db_url, experiment_id, claim_id, beating, JobStatus.STOPPED, None)
        # The claim check (queued → running only under `claim_id`), then the training slot: a
        # Conflict here leaves this experiment as it was.
        runs.mark_running(db_url, experiment_id, claim_id, os.environ.get("RAY_JOB_SUBMISSION_ID") or "ui", resume,
                          ray_driver=ray_driver or _driver_identity())
    except BaseException:
        beating.set()
        raise
    bus.publish.remote(experiment_id, "status", {"status": JobStatus.RUNNING.value})

    status, error = JobStatus.FAILED, None
    try:
        status = _train(settings, bus, workspace, experiment_id, run, resume, gates, claim_id)
    except BaseException as exc:  # includes KeyboardInterrupt from `ray job stop`
        error = _reason(exc)
        status = (JobStatus.STOPPED if isinstance(exc, KeyboardInterrupt)
                  else JobStatus.INTERRUPTED if lost_process(exc) else JobStatus.FAILED)
        if status == JobStatus.INTERRUPTED:
            error = f"A Ray process of the run was lost (its node died or was killed); resume it: {error}"[:2000]
        write_log(str(run.log_file), f"{status}: {error}")
        if not isinstance(exc, Exception):
            raise
    finally:
        outcome = _finish(bus, db_url, experiment_id, claim_id, beating, status, error)
    return outcome


def _driver_identity() -> str | None:
    """This process as Ray knows it, outside a task: its job (a `ray job submit` entrypoint is the
    driver of the submission's job; Ray's State API reports the submission's status under it)."""
    try:
        return f"driver:{ray.get_runtime_context().get_job_id()}"
    except Exception:
        return None


def _train(settings: dict, bus, workspace: Workspace, experiment_id: str, run: runs.RunPlan, resume: bool,
           gates: bool, claim_id: str) -> JobStatus:
    """Fit on one Train worker; `completed`, or `stopped` when a stop ended it short of the plan."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ray_jobs.core.module import TrainConfig

    db_url, run_dir, log_file, params = settings["db_url"], run.run_dir, run.log_file, run.params
    train_samples, val_samples = runs.run_inputs(db_url, workspace, experiment_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = workspace.ray_results_dir
    if not resume:
        shutil.rmtree(storage / experiment_id, ignore_errors=True)
        shutil.rmtree(run_dir / "weights", ignore_errors=True)
        log_file.unlink(missing_ok=True)
    use_gpu = cluster_gpus() >= settings["train_gpu_fraction"]  # GPUs up, or added on demand
    device = f"{settings['train_gpu_fraction']:g} of a GPU" if use_gpu else "CPU"
    write_log(str(log_file), f"{'resuming' if resume else 'starting'} {run.model} for {params['epochs']} epochs on "
              f"{device}: {len(train_samples)} train / {len(val_samples)} val images, "
              f"{'from pretrained weights' if params.get('pretrained') else 'training from scratch (no pretrained weights)'}")
    config = TrainConfig.from_run(run.model, run.class_names, params, weights_dir=settings["weights_dir"]).to_dict()
    trainer = TorchTrainer(
        train_loop_per_worker, torch_config=torch_config(),
        train_loop_config={
            "config": config, "train_samples": train_samples, "val_samples": val_samples,
            "experiment_id": experiment_id, "db_url": db_url, "run_dir": str(run_dir),
            "weights_dir": str(run_dir / "weights"), "log_file": str(log_file), "use_gpu": use_gpu,
            "resume": resume, "gates": gates, "claim_id": claim_id,
            "max_image_pixels": settings.get("max_image_pixels"),
            "cache_dir": str(workspace.decoded_cache_dir(run.project_id, experiment_id))
            if settings.get("decoded_cache", True) else None,
            "cache_max_bytes": settings.get("decoded_cache_max_bytes"),
        },
        scaling_config=ScalingConfig(
            num_workers=1, use_gpu=use_gpu,
            resources_per_worker={"GPU": settings["train_gpu_fraction"]} if use_gpu else None,
        ),
        run_config=RunConfig(
            name=experiment_id, storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        ),
    )
    trainer.fit()
    stopped = ray.get(bus.stop_requested.remote(experiment_id))
    finished_all = runs.epochs_done(db_url, experiment_id) >= params["epochs"]
    # Early stopping also ends short of the plan: that is a completed run, not a stopped one.
    return JobStatus.STOPPED if stopped and not finished_all else JobStatus.COMPLETED


def _finish(bus, db_url: str, experiment_id: str, claim_id: str, beating: threading.Event, status: JobStatus,
            error: str | None) -> dict:
    beating.set()
    bus.clear_stop.remote(experiment_id)
    outcome = runs.finish(db_url, experiment_id, status, error, claim_id=claim_id)
    bus.publish.remote(experiment_id, "complete", {k: outcome.get(k) for k in ("status", "best_metric", "error")})
    return outcome


def _heartbeat(db_url: str, experiment_id: str, claim_id: str, done: threading.Event) -> None:
    while not done.wait(runs.HEARTBEAT_EVERY_S):
        try:
            runs.heartbeat(db_url, experiment_id, claim_id)
        except Exception:
            pass


def lost_process(exc: BaseException) -> bool:
    """The run ended because a Ray process of it died — a Train worker or the Train controller whose node
    was lost or killed — rather than because the training code raised. Ray Train does not retry (its
    `FailureConfig` keeps max_failures=0: a lost node must not restart a run behind the user's back),
    so such a run is `interrupted`, resumable from its last checkpoint, not `failed`."""
    from ray.exceptions import ActorUnavailableError, NodeDiedError, RayActorError, WorkerCrashedError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckTimeoutError  # Ray 2.60; pinned

    # A lost node shows as a failed (or unanswered) health check of the Train worker on it.
    lost = (RayActorError, ActorUnavailableError, NodeDiedError, WorkerCrashedError, WorkerHealthCheckTimeoutError)
    seen, todo = set(), [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, lost):
            return True
        todo += [err.__cause__, getattr(err, "controller_failure", None), getattr(err, "health_check_failure", None),
                 *(getattr(err, "worker_failures", None) or {}).values()]
    return False


def _reason(exc: BaseException) -> str:
    """The user-facing reason: the innermost worker error, with CUDA OOM spelled out."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    cause = exc
    while getattr(cause, "__cause__", None) is not None:
        cause = cause.__cause__
    inner = "".join(traceback.format_exception_only(type(cause), cause)).strip()
    if "CUDA out of memory" in text or "OutOfMemoryError" in inner:
        return "CUDA out of memory: lower batch_size or image_size, or turn on mixed precision"
    return (inner if cause is not exc else text)[-2000:]


@ray.remote(num_cpus=0, max_retries=0)
def run_training_task(experiment_id: str, resume: bool, claim_id: str) -> dict:
    """The UI's launcher: zero CPUs (the Train worker takes the CPU/GPU), never retried — a crashed
    driver leaves the run `interrupted`, resumable, rather than silently starting over. The task
    records its own id with the run, so a reaper can ask Ray whether it still runs."""
    return run_training(experiment_id, resume, claim_id, ray_driver=f"task:{ray.get_runtime_context().get_task_id()}")

cli = typer.Typer(add_completion=False)


@cli.command()
def main(
    project: Annotated[str, typer.Option(help="Project id (proj-…)")],
    experiment: Annotated[str, typer.Option(help="Experiment id (exp-…)")],
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint")] = False,
) -> None:
    """Train an experiment of a running AI Studio on this Ray cluster."""
    settings = appliance_settings()
    bus = get_event_bus()
    try:
        with session_scope(settings["db_url"]) as session:
            exp = get_owned(session, Experiment, "experiment", project, experiment)
            # Takes the training slot and queues the run, as a start from the UI does; refused
            # (409) while this experiment, or another one, is queued or training.
            claim_id = runs.claim(session, exp, before_queued=lambda run_id: ray.get(bus.reset.remote(run_id)))
    except AppError as exc:
        typer.echo(f"Refused: {exc.message}", err=True)
        raise typer.Exit(2) from None
    outcome = run_training(experiment, resume, claim_id)
    typer.echo(f"{experiment}: {outcome['status']} (best metric {outcome.get('best_metric')})")
    raise typer.Exit(0 if outcome["status"] in (JobStatus.COMPLETED, JobStatus.STOPPED) else 1)


if __name__ == "__main__":
    cli()
