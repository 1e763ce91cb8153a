"""What this host has, found out the way a user would (not through the appliance's own checks)."""

from __future__ import annotations

import shutil
import subprocess


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # ImportError, or a stub package whose libraries are missing
        return False
    return True


def tensorrt_usable() -> bool:
    """TensorRT imports and PyTorch sees a CUDA GPU: an engine can be built here."""
    return tensorrt_importable() and cuda_available()


def nvidia_smi_gpus() -> list[dict]:
    """[{name, memory_total (bytes)}] per GPU as `nvidia-smi` lists them; [] without the tool."""
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        name, mib = (part.strip() for part in line.rsplit(",", 1))
        gpus.append({"name": name, "memory_total": int(mib) * 2**20})
    return gpus
