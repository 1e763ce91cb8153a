"""What the ingress needs to know about the Ray it runs on (all calls tolerate Ray being absent)."""

from __future__ import annotations


def ray_is_up() -> bool:
    try:
        import ray

        return ray.is_initialized() and bool(ray.cluster_resources())
    except Exception:
        return False


def cluster_gpus() -> float:
    """GPUs in the cluster; a fractional-GPU task on a cluster with none would wait forever."""
    try:
        import ray

        from ray_jobs.gpus import schedulable_gpus  # GPUs up, or added on demand

        return schedulable_gpus(ray.cluster_resources()) if ray.is_initialized() else 0.0
    except Exception:
        return 0.0
