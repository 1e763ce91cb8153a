"""The Ray Serve ingress: the FastAPI app behind `@serve.deployment` + `@serve.ingress`.

One replica with `num_cpus=0` so training can have the CPUs of a small host; the job runner's
lanes live in that replica, so there is exactly one of it. `app_builder` is the import path a
RayService `serveConfigV2` (Helm chart) points at.
"""

from __future__ import annotations

from ray import serve

from appliance.config import get_settings, job_config
from appliance.main import create_app

DEPLOYMENT_NAME = "AIStudioIngress"


def build_fastapi_app():
    """Built on the replica (the app holds pools and engines that must not be pickled)."""
    from appliance.importers import apply_pixel_limit

    apply_pixel_limit(get_settings().max_image_pixels)  # Pillow's own guard, for this whole process
    return create_app()


@serve.deployment(
    name=DEPLOYMENT_NAME,
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=200,
    health_check_period_s=10,
)
@serve.ingress(build_fastapi_app)
class AIStudioIngress:
    def __init__(self):
        from ray_jobs.events import ensure_event_bus

        # The bus hands the workspace and database to `ray job submit` runs too.
        ensure_event_bus(job_config(get_settings()))


def app_builder(args: dict | None = None):
    """Serve application for `serve run appliance.serve:app_builder` and RayService configs."""
    return AIStudioIngress.bind()
