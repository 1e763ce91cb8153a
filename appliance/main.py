"""The FastAPI application factory. `serve.py` wraps it in a Ray Serve ingress; tests may use it bare."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles

from appliance import __version__
from appliance.api import (
    datasets, deployments, docs, evaluation, export, health, pages, projects, splits, system, training, weights,
)
from appliance.http.auth import TokenAuthMiddleware
from appliance.http.limits import BodyLimitMiddleware
from appliance.http.hosts import AllowedHostsMiddleware
from appliance.config import Settings, get_settings
from appliance.store.db import get_engine, migrate, session_factory
from appliance.http.envelope import install_error_handlers, request_id
from appliance.http.slots import Slots
from appliance.services.runner import JobRunner
from appliance.store.paths import Workspace
from appliance.services import datasets as dataset_service, recovery
from appliance.web import PACKAGE_DIR

log = logging.getLogger("aistudio")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Built here, not at import: Serve pickles the app, and pools/engines don't pickle.
        app.state.workspace = Workspace(settings.workspace)
        app.state.workspace.ensure()
        migrate(get_engine(settings.db_url))
        app.state.sessions = session_factory(settings.db_url)
        app.state.runner = JobRunner()
        app.state.stopping = threading.Event()  # also set by the ingress's prepare_shutdown (serve.py)
        app.state.predict_slots = Slots(settings.max_concurrent_predictions)
        app.state.sse_slots = Slots(settings.max_sse_streams)
        recovery.recover_all(app)
        yield
        app.state.stopping.set()
        app.state.runner.shutdown()
        dataset_service.stop_import_workers(settings.workspace)

    app = FastAPI(
        title="AI Studio",
        version=__version__,
        description="Import images, split, train, evaluate and export image models on Ray.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None,  # /docs from vendored assets (api/docs.py); ReDoc needs a CDN
    )
    app.state.settings = settings

    @app.middleware("http")
    async def _request_id(request: Request, call_next):
        response = await call_next(request)
        response.headers["X-Request-ID"] = request_id(request)
        return response

    if settings.api_token:
        app.add_middleware(TokenAuthMiddleware, token=settings.api_token)
    # Counts request bodies as they stream, before any other layer reads them (added after
    # auth: outside it); the host check is added last, so it is the outermost.
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(AllowedHostsMiddleware, allowed=settings.trusted_hosts)  # outermost: DNS rebinding
    install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="static")
    for module in (projects, datasets, splits, training, evaluation, export, deployments, system, health, weights,
                   pages, docs):
        app.include_router(module.router)
    return app
