"""The Ray Serve ingress: the FastAPI app behind `@serve.deployment` + `@serve.ingress`.

One replica with `num_cpus=0` so training can have the CPUs of a small host; the job runner's
lanes live in that replica, so there is exactly one of it. `app_builder` is the import path a
RayService `serveConfigV2` (Helm chart) points at.
"""

from __future__ import annotations

from ray import serve

from appliance.config import Settings, get_settings, job_config, settings_env
from appliance.main import create_app

DEPLOYMENT_NAME = "AIStudioIngress"


def build_fastapi_app():
    """Built on the replica (the app holds pools and engines that must not be pickled)."""
    from appliance.importers import apply_pixel_limit

    apply_pixel_limit(get_settings().max_image_pixels)  # Pillow's own guard, for this whole process
    return create_app()


# Stopping is bounded: once told to stop (`prepare_shutdown`) the live streams end within a second,
# Serve waits at most this long for requests still in flight, then kills the replica.
GRACEFUL_SHUTDOWN_TIMEOUT_S = 5.0
GRACEFUL_SHUTDOWN_WAIT_LOOP_S = 0.5
# Long-lived requests (live streams) count as ongoing: leave room for ordinary requests beside the most
# streams the app admits (AISTUDIO_MAX_SSE_STREAMS), so a page full of streams never queues the API.
REQUEST_HEADROOM = 100


@serve.deployment(
    name=DEPLOYMENT_NAME,
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=200,
    health_check_period_s=10,
    graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_TIMEOUT_S,
    graceful_shutdown_wait_loop_s=GRACEFUL_SHUTDOWN_WAIT_LOOP_S,
)
@serve.ingress(build_fastapi_app)
class AIStudioIngress:
    def __init__(self):
        from ray_jobs.events import ensure_event_bus

        # The bus hands the workspace and database to `ray job submit` runs too.
        ensure_event_bus(job_config(get_settings()))

    def prepare_shutdown(self) -> bool:
        """Called (through a handle) before Serve deletes the app: the live streams end and the runner's watch
        lane stops, so the replica drains at once instead of waiting on streams that never end."""
        state = getattr(self.app, "state", None)
        stopping = getattr(state, "stopping", None)
        if stopping is None:  # the app's start-up has not run
            return False
        stopping.set()
        return True


def app_builder(args: dict | None = None, settings: Settings | None = None):
    """Serve application for `serve run appliance.serve:app_builder` and RayService configs.

    The settings go with the replica (its `runtime_env`): on a cluster the replica is started by a
    raylet, with that raylet's environment and working folder, not the caller's. What the replica
    starts (the event bus, training drivers, evaluation and export tasks, import workers) inherits them."""
    from ray_jobs.events import ON_HEAD

    settings = settings or get_settings()
    return AIStudioIngress.options(
        max_ongoing_requests=settings.max_sse_streams + REQUEST_HEADROOM,
        ray_actor_options={"num_cpus": 0, "resources": ON_HEAD,  # the head: a worker node may be lost
                           "runtime_env": {"env_vars": settings_env(settings)}},
    ).bind()
