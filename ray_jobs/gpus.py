"""How many GPUs the cluster can give a task: the GPUs of the nodes that are up, or, on a cluster
that adds GPU nodes on demand (an autoscaled GPU worker group that may be at zero), what one such
node would bring. That cluster says so with a custom resource on its head (the Helm chart sets it):
`ray start --head --resources '{"aistudio_gpus_on_demand": N}'`. Then training, evaluation and
export still ask Ray for their GPU share while no GPU node is up, and the autoscaler starts one,
instead of the work running on the CPU."""

from __future__ import annotations

ON_DEMAND_RESOURCE = "aistudio_gpus_on_demand"


def schedulable_gpus(cluster_resources: dict) -> float:
    """GPUs a task may ask for, from `ray.cluster_resources()`."""
    return max(float(cluster_resources.get("GPU", 0)), float(cluster_resources.get(ON_DEMAND_RESOURCE, 0)))


def cluster_gpus() -> float:
    """schedulable_gpus of the connected cluster."""
    import ray

    return schedulable_gpus(ray.cluster_resources())
