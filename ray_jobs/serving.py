"""Live prediction endpoints (issue #16): each one is its own Ray Serve application.

`deploy(...)` runs a `ModelEndpoint` application named `model-<name>` at the route prefix
`/models/<name>`, beside the UI ingress (application `aistudio`, prefix `/`), which it never touches:
`serve.run` with another application name adds or updates that application only. Each replica loads
the export's bundle ZIP (the model file, labels, preprocessing), answers `POST /models/<name>/predict`
(multipart `file`, raw `image/*` bytes or JSON `{"image_base64": ...}`), checks the endpoint's API key
(only its SHA-256 travels here) and batches requests with `@serve.batch`. It also answers the KServe v2 /
Open Inference Protocol `POST /models/<name>/infer` with an already preprocessed tensor.

Preprocessing and post-processing are `ray_jobs.prediction`, the very file the bundle ships as
`aistudio_prediction.py`, so an endpoint and the bundle's predict.py give the same answer.

Figures (requests, errors, latencies) are counted in the replicas and sent to one named zero-CPU actor,
`EndpointMetrics` ("aistudio-endpoint-metrics"): nothing is kept in the ingress's memory, the figures
of every replica add up, and they outlive an ingress restart (not a restart of Ray).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import math
import shutil
import tempfile
import time
import zipfile
from collections import deque
from pathlib import Path

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from ray_jobs.prediction import NotAnImage, classification, detection, image_hw, preprocess

APP_PREFIX = "model-"
ROUTE_PREFIX = "/models/"
DEPLOYMENT = "ModelEndpoint"
METRICS_ACTOR, METRICS_NAMESPACE = "aistudio-endpoint-metrics", "aistudio"
TOP_K = 5
LATENCY_WINDOW = 2000  # the last requests whose latencies give p50/p99
RPS_WINDOW_S = 10.0
FLUSH_EVERY_S = 0.25  # a replica sends its counts to the metrics actor at most this often


def app_name(name: str) -> str:
    return APP_PREFIX + name


def route_prefix(name: str) -> str:
    return ROUTE_PREFIX + name


# ----------------------------------------------------------------------------- figures


@ray.remote(num_cpus=0)
class EndpointMetrics:
    """Per endpoint: totals, the latencies of the last requests, their times (for requests/s)."""

    def __init__(self):
        self._data: dict[str, dict] = {}

    def _entry(self, name: str) -> dict:
        return self._data.setdefault(name, {"requests": 0, "errors": 0, "recent": deque(maxlen=LATENCY_WINDOW),
                                            "since": time.time()})

    def record(self, name: str, errors: int, samples: list[tuple[float, float]]) -> None:
        entry = self._entry(name)
        entry["requests"] += len(samples)
        entry["errors"] += errors
        entry["recent"].extend(samples)

    def reset(self, name: str) -> None:
        self._data.pop(name, None)

    def snapshot(self, name: str) -> dict:
        entry = self._entry(name)
        now = time.time()
        latencies = np.array([ms for _, ms in entry["recent"]], dtype=np.float64)
        window = min(RPS_WINDOW_S, max(now - entry["since"], 1e-3))
        recent = sum(1 for t, _ in entry["recent"] if t >= now - window)
        return {
            "requests": entry["requests"], "errors": entry["errors"],
            "p50_ms": round(float(np.percentile(latencies, 50)), 3) if latencies.size else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 3) if latencies.size else None,
            "rps": round(recent / window, 3),
        }


def metrics_actor():
    return EndpointMetrics.options(name=METRICS_ACTOR, namespace=METRICS_NAMESPACE, lifetime="detached",
                                   get_if_exists=True).remote()


# ----------------------------------------------------------------------------- the model


def _load_bundle(bundle: str) -> tuple[dict, list[str], dict, Path]:
    """export.json, labels, preprocess spec, and the model file unpacked to a private temp folder
    (the caller removes it once the model is loaded: every runner reads the whole file at load)."""
    with zipfile.ZipFile(bundle) as zf:
        meta = json.loads(zf.read("export.json"))
        labels = json.loads(zf.read("labels.json"))
        spec = json.loads(zf.read("preprocess.json"))
        folder = Path(tempfile.mkdtemp(prefix="aistudio-endpoint-"))
        model_file = Path(zf.extract(meta["model_file"], folder))
    return meta, labels, spec, model_file


class _Model:
    """Runs a batch of preprocessed images; per image: logits (classification) or (boxes, scores, labels)."""

    def __init__(self, meta: dict, path: Path, use_gpu: bool, cpus: float = 1.0):
        self.task, self.fmt = meta["task"], meta["format"]
        self.batched = self.task == "classification" and not meta.get("batch_fixed")
        if self.fmt == "onnx":
            import onnxruntime as ort

            providers = ["CPUExecutionProvider"]
            if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            # The same model file and providers as the bundle's predict.py (bundle_templates/runtime_onnx.py),
            # but threads sized to the replica: onnxruntime's default is a spinning thread per core, which
            # on a small host takes the CPU the HTTP proxy and the other replicas need (benchmarks/README.md,
            # endpoint_load: CPU per request -30 %). Thread count changes no result beyond float rounding.
            session = ort.InferenceSession(str(path), onnx_session_options(cpus), providers=providers)
            name = session.get_inputs()[0].name
            self._run = lambda x: session.run(None, {name: x})
        else:  # torchscript, tensorrt: the export package's runners (torch; TensorRT where it is installed)
            from ray_jobs.core.export.formats import load_runner

            runner = load_runner(path, self.fmt, self.task, "cuda" if use_gpu else "cpu")

            def run(x):
                out = runner(x)
                if self.task == "classification":
                    return [out]
                d = out[0]
                return [d["boxes"], d["scores"], d["labels"]]

            self._run = run

    def __call__(self, xs: list[np.ndarray]) -> list:
        if self.batched and len(xs) > 1:
            logits = self._run(np.concatenate(xs))[0]
            return [logits[i] for i in range(len(xs))]
        outs = [self._run(x) for x in xs]
        return [o[0][0] for o in outs] if self.task == "classification" else outs


def onnx_session_options(cpus: float):
    """onnxruntime options for an endpoint replica reserving `cpus` CPUs: that many intra-op threads
    (at least 1: the calling thread alone), and no spin-waiting (idle threads yield the CPU at once)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, math.ceil(cpus))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


ROUTE_PROBE_HEADER = "X-AIStudio-Route-Probe"  # wait_routed's GET: answered 405 like any GET, never counted
MAX_INFER_BATCH = 64  # images in one /infer request (each goes through the endpoint's batching)


def infer_input(body: bytes, spec: dict, max_batch: int) -> tuple[np.ndarray, str | None]:
    """An Open Inference Protocol request body -> ([N, 3, H, W] float32, its `id`); BadInput naming the
    field otherwise. H, W: the model's input size (`preprocess.json`)."""
    h, w = image_hw(spec)
    try:
        request = json.loads(body)
    except ValueError:
        raise BadInput(400, "VALIDATION_ERROR", "body: not JSON (send {\"inputs\": [{\"name\", \"shape\", "
                                                "\"datatype\": \"FP32\", \"data\"}]})") from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadInput(400, "VALIDATION_ERROR", "inputs: a list of exactly one input tensor")
    tensor = inputs[0]
    if tensor.get("datatype") != "FP32":
        raise BadInput(400, "VALIDATION_ERROR", "inputs[0].datatype: must be FP32")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) != 4 or not all(type(n) is int for n in shape)
            or not 1 <= shape[0] <= max_batch or shape[1:] != [3, h, w]):
        raise BadInput(400, "VALIDATION_ERROR", f"inputs[0].shape: must be [N, 3, {h}, {w}] with N from 1 to "
                                                f"{max_batch} (the input of preprocess.json)")
    try:
        x = np.asarray(tensor.get("data"), dtype=np.float32)
    except (TypeError, ValueError):
        x = None
    if x is None or x.size != math.prod(shape) or not np.isfinite(x).all():
        raise BadInput(400, "VALIDATION_ERROR", f"inputs[0].data: {math.prod(shape)} finite numbers "
                                                "(flat, row-major, or nested as the shape)")
    request_id = request.get("id")
    return x.reshape(shape), request_id if isinstance(request_id, str) else None


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"status": "error", "error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


class BadInput(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@serve.deployment(name=DEPLOYMENT, ray_actor_options={"num_cpus": 0}, health_check_period_s=10,
                  graceful_shutdown_timeout_s=5)
class ModelEndpoint:
    def __init__(self, config: dict):
        self.name = config["name"]
        self.model_name = config.get("model") or self.name
        self.key_hash = config.get("api_key_hash")
        self.max_bytes = int(config.get("max_bytes", 20 * 1024**2))
        meta, self.labels, self.spec, path = _load_bundle(config["bundle"])
        self.task = meta["task"]
        self.score_threshold = float(meta.get("score_threshold", 0.25))
        try:
            self.model = _Model(meta, path, use_gpu=float(config.get("gpu_fraction", 0)) > 0,
                                cpus=float(config.get("cpus", 1)))
        finally:  # one unpacked copy per replica start would otherwise pile up in /tmp
            shutil.rmtree(path.parent, ignore_errors=True)
        self.predict_batch.set_max_batch_size(max(1, int(config.get("max_batch_size", 8))))
        self.predict_batch.set_batch_wait_timeout_s(max(0.0, float(config.get("batch_wait_ms", 5))) / 1000)
        self.metrics = metrics_actor()
        self._pending: list[tuple[float, float]] = []
        self._pending_errors = 0
        self._flush_handle = None
        self._last_flush = 0.0

    # -- figures: counted here, sent to the actor in small batches
    def _count(self, started: float, error: bool) -> None:
        now = time.time()
        self._pending.append((now, (time.perf_counter() - started) * 1000))
        self._pending_errors += int(error)
        if now - self._last_flush >= FLUSH_EVERY_S:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_EVERY_S, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._pending:
            self.metrics.record.remote(self.name, self._pending_errors, self._pending)
            self._pending, self._pending_errors = [], 0
        self._last_flush = time.time()

    # -- requests
    async def __call__(self, request: Request):
        if request.method == "GET" and ROUTE_PROBE_HEADER in request.headers:  # wait_routed: not a request
            return _error(405, "METHOD_NOT_ALLOWED", "Use POST to predict")
        started = time.perf_counter()
        try:
            response = await self._handle(request)
        except BadInput as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            response = _error(exc.status, exc.code, exc.message, headers)
        except Exception as exc:  # a model failure: the envelope, and counted
            response = _error(500, "INTERNAL", f"The model failed on this input: {type(exc).__name__}")
        self._count(started, response.status_code >= 400)
        return response

    def _authorize(self, request: Request) -> None:
        if not self.key_hash:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        import hashlib

        given = hashlib.sha256(key.strip().encode()).hexdigest()
        if scheme.lower() != "bearer" or not key or not hmac.compare_digest(given, self.key_hash):
            raise BadInput(401, "UNAUTHORIZED", "This endpoint needs its API key: Authorization: Bearer <api_key>")

    async def _handle(self, request: Request) -> JSONResponse:
        path, prefix = request.url.path.rstrip("/"), route_prefix(self.name)
        infer = path.endswith(f"{prefix}/infer")
        if not infer and not path.endswith(f"{prefix}/predict"):
            raise BadInput(404, "NOT_FOUND", f"Not found: {request.url.path} (this endpoint answers "
                                             f"POST {prefix}/predict and POST {prefix}/infer)")
        if request.method != "POST":
            raise BadInput(405, "METHOD_NOT_ALLOWED", "Use POST to predict")
        self._authorize(request)
        if infer:
            return await self._infer(request)
        data = await self._image_bytes(request)
        try:
            x, size = preprocess(data, self.spec)
        except NotAnImage as exc:
            raise BadInput(400, "INVALID_IMAGE", f"The request's image could not be read: {exc}") from None
        outputs = await self.predict_batch(x)
        if self.task == "classification":
            top = classification(outputs, self.labels, TOP_K)["top"]
            result = {"model": self.model_name, "predictions": [{"label": t["label"], "score": t["score"]} for t in top]}
        else:
            d = detection(outputs, self.labels, size, self.spec, self._threshold(request))
            result = {"model": self.model_name, "detections": [
                {"label": name, "score": score, "box": box}
                for name, score, box in zip(d["label_names"], d["scores"], d["boxes"])]}
        return JSONResponse({"status": "ok", "data": result})

    async def _infer(self, request: Request) -> JSONResponse:
        """KServe v2 / Open Inference Protocol: one FP32 input tensor, already preprocessed as the bundle's
        `preprocess.json` says ([N, 3, H, W]); the model's raw outputs back, unenveloped as the protocol
        has them. Errors keep the appliance's envelope."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise BadInput(413, "PAYLOAD_TOO_LARGE", f"The request is larger than {self.max_bytes} bytes")
        body = await request.body()
        if len(body) > self.max_bytes:
            raise BadInput(413, "PAYLOAD_TOO_LARGE", f"The request is larger than {self.max_bytes} bytes")
        x, request_id = infer_input(body, self.spec, max_batch=1 if self.task == "detection" else MAX_INFER_BATCH)
        outputs = await asyncio.gather(*(self.predict_batch(x[i:i + 1]) for i in range(len(x))))
        if self.task == "classification":
            logits = np.stack([np.asarray(o, np.float32).reshape(-1) for o in outputs])
            tensors = [{"name": "logits", "datatype": "FP32", "shape": list(logits.shape),
                        "data": logits.reshape(-1).tolist(), "parameters": {"labels": self.labels}}]
        else:
            boxes, scores, classes = (np.asarray(o) for o in outputs[0][:3])
            boxes = boxes.reshape(-1, 4).astype(np.float32)
            tensors = [
                {"name": "boxes", "datatype": "FP32", "shape": list(boxes.shape), "data": boxes.reshape(-1).tolist()},
                {"name": "scores", "datatype": "FP32", "shape": [len(scores)],
                 "data": scores.astype(np.float32).reshape(-1).tolist()},
                {"name": "labels", "datatype": "INT64", "shape": [len(classes)],
                 "data": classes.astype(np.int64).reshape(-1).tolist(), "parameters": {"labels": self.labels}}]
        answer = {"model_name": self.model_name, "outputs": tensors}
        if request_id is not None:
            answer["id"] = request_id
        return JSONResponse(answer)

    def _threshold(self, request: Request) -> float:
        given = request.query_params.get("score_threshold")
        if given is None:
            return self.score_threshold
        try:
            value = float(given)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 1:
            raise BadInput(400, "VALIDATION_ERROR", "score_threshold: a number from 0 to 1")
        return value

    async def _image_bytes(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise BadInput(413, "PAYLOAD_TOO_LARGE", f"The request is larger than {self.max_bytes} bytes")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise BadInput(400, "VALIDATION_ERROR", "file: the multipart form needs an image in the field 'file'")
            data = await upload.read()
        elif kind == "application/json":
            try:
                body = json.loads(await request.body())
                encoded = body["image_base64"]
                if not isinstance(encoded, str):
                    raise TypeError
                data = base64.b64decode(encoded.split(",", 1)[-1] if encoded.startswith("data:") else encoded,
                                        validate=True)
            except (ValueError, KeyError, TypeError, binascii.Error):
                raise BadInput(400, "VALIDATION_ERROR",
                               'image_base64: send JSON {"image_base64": "<base64 of the image file>"}') from None
        elif kind.startswith("image/") or kind == "application/octet-stream":
            data = await request.body()
        else:
            raise BadInput(400, "VALIDATION_ERROR",
                           f"Content-Type {kind or 'missing'}: send a multipart 'file', raw image bytes "
                           "(Content-Type: image/*) or JSON {\"image_base64\": ...}")
        if len(data) > self.max_bytes:
            raise BadInput(413, "PAYLOAD_TOO_LARGE", f"The image is larger than {self.max_bytes} bytes")
        if not data:
            raise BadInput(400, "INVALID_IMAGE", "The request's image is empty")
        return data

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def predict_batch(self, xs: list[np.ndarray]) -> list:
        return await asyncio.get_running_loop().run_in_executor(None, self.model, xs)


# ----------------------------------------------------------------------------- the driver side (the ingress)


def deploy(config: dict, *, min_replicas: int, max_replicas: int, gpu_fraction: float, cpus: float) -> None:
    """Start (or update) the endpoint's application; returns once Serve accepted it (not yet running)."""
    actor_options = {"num_cpus": cpus}
    if gpu_fraction > 0:
        actor_options["num_gpus"] = gpu_fraction
    batch = max(1, int(config.get("max_batch_size", 8)))
    app = ModelEndpoint.options(
        ray_actor_options=actor_options,
        max_ongoing_requests=max(32, 4 * batch),
        autoscaling_config={"min_replicas": min_replicas, "max_replicas": max_replicas,
                            "initial_replicas": min_replicas, "target_ongoing_requests": max(2, batch),
                            "upscale_delay_s": 5, "downscale_delay_s": 60},
    ).bind({**config, "cpus": cpus})
    ray.get(metrics_actor().reset.remote(config["name"]))
    serve.run(app, name=app_name(config["name"]), route_prefix=route_prefix(config["name"]), blocking=False)


def wait_running(name: str, timeout_s: float, stop=None) -> None:
    """Until the application runs; RuntimeError with Serve's message when it fails or takes too long."""
    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(app_name(name))
        status = str(getattr(app.status, "value", app.status)) if app else ""
        if status == "RUNNING":
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(_failure_message(app))
        if time.monotonic() > deadline:
            raise RuntimeError(f"The endpoint did not start within {timeout_s:.0f} s"
                               + (f": {_failure_message(app)}" if app else ""))
        if stop is not None and stop():
            return
        time.sleep(0.3)


def wait_routed(name: str, base_url: str, timeout_s: float, stop=None) -> bool:
    """Until the endpoint itself answers at `base_url` + its route (its 405 to a GET of /predict): Serve
    says RUNNING once the replicas run, but the ingress in front of them (HAProxy's reload, a proxy's
    route table) learns the new route a moment later, and meanwhile the route reaches the UI's app (404).
    False when it did not within `timeout_s`, or when nothing listens at `base_url` (a cluster whose
    proxies are elsewhere): Serve's word is then all there is."""
    import urllib.error
    import urllib.request

    probe = urllib.request.Request(f"{base_url.rstrip('/')}{route_prefix(name)}/predict",
                                   headers={ROUTE_PROBE_HEADER: "1"})  # not counted in the endpoint's figures
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(probe, timeout=5) as answer:
                status, body = answer.status, answer.read(4096)
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read(4096)
        except (OSError, ValueError):  # refused, unreachable: no ingress to probe from here
            return False
        if status == 405 and b'"METHOD_NOT_ALLOWED"' in body:
            return True
        if stop is not None and stop():
            return False
        time.sleep(0.2)
    return False


def _failure_message(app) -> str:
    messages = [app.message] + [d.message for d in app.deployments.values()]
    text = "; ".join(m for m in messages if m)
    return (text or "Serve reported the application failed")[-1500:]


def state(name: str) -> dict | None:
    """{"status": RUNNING | DEPLOYING | ..., "running": n, "target": n} of the application; None when absent."""
    app = serve.status().applications.get(app_name(name))
    if app is None:
        return None
    states = {}
    for dep in app.deployments.values():
        for replica_state, count in dep.replica_states.items():
            key = str(getattr(replica_state, "value", replica_state))
            states[key] = states.get(key, 0) + count
    running = states.get("RUNNING", 0)
    target = sum(count for key, count in states.items() if key not in ("STOPPING",))
    return {"status": str(getattr(app.status, "value", app.status)), "running": running, "target": target}


def figures(name: str, timeout_s: float = 2.0) -> dict:
    return ray.get(metrics_actor().snapshot.remote(name), timeout=timeout_s)


def undeploy(name: str) -> None:
    """Remove the application (blocks until Serve deleted it); the route then answers 404."""
    if app_name(name) in serve.status().applications:
        serve.delete(app_name(name))
    try:
        ray.get(metrics_actor().reset.remote(name), timeout=5)
    except Exception:
        pass
