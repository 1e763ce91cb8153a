"""All settings, in one place. Nothing else in the appliance reads os.environ.

Every field is read from an `AISTUDIO_<NAME>` environment variable (or a `.env` file).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AISTUDIO_", env_file=".env", extra="ignore")

    workspace: Path = Field(
        default=Path("./workspace"),
        description="Folder holding the database, datasets, checkpoints and exports.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Default: a SQLite file `aistudio.db` in the workspace.",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the UI and API.")
    import_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders that local-path imports may read from (JSON list or comma-separated). "
        "Default: `<workspace>/imports`.",
    )
    max_upload_bytes: int = Field(
        default=8 * 1024**3, gt=0, description="Largest ZIP upload, and largest uncompressed ZIP content."
    )
    max_json_body_bytes: int = Field(
        default=1024**2, gt=0,
        description="Largest request body of a JSON (or any other non-upload) route; larger bodies get 413.",
    )
    max_predict_image_bytes: int = Field(
        default=32 * 1024**2, gt=0, description="Largest image sent to \"try one image\" (predict); larger get 413."
    )
    max_image_pixels: int = Field(
        default=64_000_000, gt=0,
        description="Largest image (width x height) that is ever decoded: larger ones are skipped at import "
        "with a warning, and never decoded for thumbnails, training, evaluation or try-one-image. 64 MP "
        "holds any camera up to 61 MP and decodes to at most 256 MB (RGBA).",
    )
    max_annotation_bytes: int = Field(
        default=256 * 1024**2, gt=0,
        description="Largest annotation content one import reads: each COCO JSON or CSV file, and all YOLO "
        "label files together. Over it the import fails with INVALID_DATASET naming the file.",
    )
    disk_free_margin_bytes: int = Field(
        default=1024**3, ge=0,
        description="Free disk space an upload or a ZIP extraction must leave in the workspace, on top of "
        "its own size; short of it the request is refused with 507 (the job fails) before writing.",
    )
    max_active_imports: int = Field(
        default=16, gt=0,
        description="Imports that may be queued or running at once; one more is refused with 429.",
    )
    import_workers: int = Field(
        default=0, ge=0, le=256,
        description="Processes an import uses to read, hash, decode, store and thumbnail images (a process "
        "pool in the import's worker). 0 (default): one per CPU core the server may use; 1: no pool, all in the "
        "import's own process.",
    )
    near_duplicate_distance: int = Field(
        default=6, ge=0, le=10,
        description="Near-duplicate threshold of the dataset health check: two images whose 64-bit perceptual "
        "hashes differ in at most this many bits are near-duplicates (0: identical hashes only; 10 at most).",
    )
    api_token: str | None = Field(
        default=None, description="When set, every API and page request needs this bearer token."
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names (`Host` header, any port) the app answers besides localhost, 127.0.0.1, ::1 "
        "and the bind address; others get 400 HOST_NOT_ALLOWED (DNS-rebinding guard). Comma or JSON list; "
        "`*.example.com` matches subdomains; `*` allows any host (behind a proxy that checks it).",
    )
    session_max_age_s: int = Field(
        default=7 * 24 * 3600, gt=0,
        description="Lifetime of a browser sign-in (token mode): the session row and its cookie expire after it.",
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster to join (`auto`, `ray://…` or `host:port`). Default: start a local Ray.",
    )
    ray_dashboard_port: int = Field(default=8265, description="Dashboard / Jobs API port of the local Ray.")
    eval_gpu_fraction: float = Field(
        default=0.25, gt=0, le=1, description="GPU share of one evaluation task (four fit on one GPU at 0.25)."
    )
    train_gpu_fraction: float = Field(
        default=1.0, gt=0, le=1,
        description="GPU share reserved by the training worker. Below 1 lets evaluations share a single-GPU host.",
    )
    weights_dir: Path | None = Field(
        default=None, description="Pretrained weights cache. Default: `<workspace>/weights`."
    )
    weights_url: str | None = Field(
        default=None,
        description="Base URL of a mirror that serves torchvision's weights files by file name, for "
        "`aistudio fetch-weights` and the Training page's download. Default: torchvision's own URLs.",
    )
    weights_verify: bool = Field(
        default=True,
        description="Keep a downloaded weights file only if its SHA-256 starts with the hash in torchvision's "
        "file name. Off only for a mirror that serves other bytes under those names.",
    )
    sse_keepalive_s: float = Field(
        default=10.0, gt=0, le=300,
        description="Seconds of quiet after which a live training stream sends a `: keep-alive` comment.",
    )
    predict_timeout_s: float = Field(
        default=20.0, gt=0, le=600,
        description="Longest wait of a \"try one image\" request for its Ray task (e.g. while training holds the "
        "GPU or CPUs); beyond it the request gets 503 with Retry-After.",
    )
    max_concurrent_predictions: int = Field(
        default=4, ge=1, le=64,
        description="\"Try one image\" requests in flight at once; more get 503 with Retry-After at once.",
    )
    endpoint_cpus: float = Field(
        default=0.25, ge=0, le=64,
        description="CPUs Ray reserves for each replica of a prediction endpoint (Deploy page; fractions allowed); "
        "an ONNX replica runs ceil(this) onnxruntime threads (at least 1).",
    )
    endpoint_start_timeout_s: float = Field(
        default=300, gt=0, le=3600,
        description="How long a prediction endpoint may take to start before its deployment is marked failed.",
    )
    max_sse_streams: int = Field(
        default=100, ge=1, le=10000,
        description="Live training streams (SSE) open at once; more get 429 with Retry-After.",
    )
    shutdown_timeout_s: float = Field(
        default=12.0, gt=0, le=300,
        description="Bound on stopping (SIGTERM / Ctrl-C): open streams are ended, the ingress gets a few seconds "
        "to drain, then Serve and Ray are stopped.",
    )
    serve_mode: Literal["proxy", "throughput", "haproxy"] = Field(
        default="haproxy",
        description="How HTTP reaches the ingress (local Ray only; a cluster is started with the matching "
        "RAY_SERVE_* variables): `haproxy` (default) = RAY_SERVE_ENABLE_HA_PROXY (HAProxy on the port, the "
        "replicas serve HTTP themselves; the binary comes with ray[serve]; without it, `proxy`); `proxy` = "
        "Ray Serve's Python HTTP proxy (Ray's default); `throughput` = RAY_SERVE_THROUGHPUT_OPTIMIZED (proxy to replica over gRPC, "
        "user code on the replica's loop). benchmarks/README.md (serve_overhead.py) says what each costs.",
    )
    decoded_cache: bool = Field(
        default=True,
        description="Training decodes and resizes each image once into a per-experiment cache of uint8 arrays "
        "(`<experiment>/cache/`, deleted with it) and reads it every later epoch; off: decode every epoch.",
    )
    decoded_cache_max_bytes: int = Field(
        default=32 * 1024**3, gt=0,
        description="Largest decoded cache of one subset (images x side^2 x 3 bytes: 150 KB an image at 224 px); "
        "a larger subset is decoded every epoch instead. An experiment keeps at most its train and val caches.",
    )
    training_gates: bool = Field(
        default=False,
        description="Test hook, off in production: a run reports where it is and waits at gates a test closes "
        "on the event bus — before it starts and at the start of each epoch (`ray_jobs/events.py`).",
    )

    @field_validator("import_roots", mode="before")
    @classmethod
    def _split_roots(cls, value):
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [p for p in (s.strip() for s in value.split(",")) if p]
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value):
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [h for h in (s.strip() for s in value.split(",")) if h]
        return value

    @field_validator("workspace", "weights_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Ray's storage_path and temp dir must be absolute; resolve once here.
        return value.expanduser().resolve() if value is not None else None

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.workspace / 'aistudio.db'}"

    @property
    def allowed_import_roots(self) -> list[Path]:
        roots = self.import_roots or [self.workspace / "imports"]
        return [Path(r).expanduser().resolve() for r in roots]

    @property
    def trusted_hosts(self) -> list[str]:
        """Host names the app answers: loopback (never a DNS-rebinding vector), the bind address and
        AISTUDIO_ALLOWED_HOSTS, lower-case, without ports or IPv6 brackets."""
        names = ["localhost", "127.0.0.1", "::1", self.host, *self.allowed_hosts]
        return list(dict.fromkeys(n.strip().strip("[]").lower() for n in names if n.strip()))

    @property
    def local_url(self) -> str:
        """Where a process on this host reaches the appliance's HTTP port (Serve's proxy or HAProxy)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def exposed_without_token(self) -> bool:
        """Bound to every interface with no API token: anyone on the network can drive the appliance."""
        return self.host in ("0.0.0.0", "::") and not self.api_token

    @property
    def weights_cache(self) -> Path:
        return self.weights_dir or self.workspace / "weights"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as AISTUDIO_* variables, for the Ray processes the appliance starts (the ingress
    replica and what it launches): passed explicitly, since a process a cluster's raylet starts does
    not inherit the environment of the one that asked for it."""
    env = {}
    for name, value in settings.model_dump(exclude_none=True).items():
        if isinstance(value, list):  # import_roots, allowed_hosts: the comma form the settings parse
            value = ",".join(str(p) for p in value)
        env[f"AISTUDIO_{name.upper()}"] = str(value)
    return env


def job_config(settings: Settings) -> dict:
    """The settings Ray-side jobs need, as plain values (they travel through the event bus)."""
    return {
        "workspace": str(settings.workspace),
        "db_url": settings.db_url,
        "weights_dir": str(settings.weights_cache),
        "train_gpu_fraction": settings.train_gpu_fraction,
        "eval_gpu_fraction": settings.eval_gpu_fraction,
        "training_gates": settings.training_gates,
        "max_image_pixels": settings.max_image_pixels,
        "decoded_cache": settings.decoded_cache,
        "decoded_cache_max_bytes": settings.decoded_cache_max_bytes,
    }
