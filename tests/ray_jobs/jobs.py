"""Test side of `ray job submit`: submitting to the session's own cluster through the Jobs API."""

from __future__ import annotations


def pin_cluster() -> str:
    """An entrypoint prefix naming this session's cluster: Ray's job supervisor hands the job
    `RAY_ADDRESS` of the local cluster started *last* (/tmp/ray/ray_current_cluster), which on a
    host running several test sessions may be another session's."""
    import ray

    return f"RAY_ADDRESS={ray.get_runtime_context().gcs_address} "


def submit(client, entrypoint: str, **options) -> str | None:
    """Submit, or None while the dashboard's job agent is not up yet (it says "try again later")."""
    try:
        return client.submit_job(entrypoint=entrypoint, **options)
    except RuntimeError as exc:
        if "No available agent to submit job" in str(exc):
            return None
        raise
