"""Serve an export on Ray Serve: ``POST /predict`` with one image answers its top-k as JSON.

    tinyray serve EXPORT [--port 8000] [--replicas N] [--gpus-per-replica G]
    curl --data-binary @cat.jpeg http://127.0.0.1:8000/predict?top=3
    curl -F image=@cat.jpeg http://127.0.0.1:8000/predict

The answer is what ``tinyray predict --json`` prints for that image: ``{"file", "top": [{"wnid",
"name", "prob"}]}`` (``file`` is the form's file name, or null for raw bytes). An image that cannot
be read, or a body over ``--max-bytes``, is a 400 with ``{"error": one line}``.

Each replica loads the model with predict's loader (``models.load_model_file``: the file is data,
never code), and concurrent requests are predicted together (``serve.batch``). The model's bytes
travel with the deployment, read here by the driver: the replicas need no storage credentials, so
none travels (Ray keeps a deployment's arguments in its controller, never in a runtime env).
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from email.message import Message

import numpy as np
from ray import serve

from tinyray.data.pipeline import decode_image
from tinyray.errors import TinyrayError
from tinyray.predict import Export, load_model, top_k

APP_NAME = "tinyray"
DEFAULT_PORT = 8000
MAX_REQUEST_BYTES = 8 << 20  # one image: Tiny ImageNet's are ~2 KB, a phone photo a few MB
# Concurrent requests are predicted as one batch of at most this many (a replica keeps up to
# MAX_ONGOING requests in hand, so a batch can fill while the previous one is computed).
MAX_BATCH = 16
MAX_ONGOING = 64
# The bound on the wait for the replicas to start and the route to answer (the model's load and,
# on an autoscaling cluster, a node's start included).
SERVE_TIMEOUT = 600
# Once the replicas run, the proxy answers within seconds: past this, it listens somewhere else.
ROUTE_WAIT = 30


# ------------------------------------------------------------------ a request's image (pure)


def image_from_request(body: bytes, content_type: str | None) -> tuple[str | None, bytes]:
    """(file name or None, image bytes) of a request: the raw body, or the one file of a
    ``multipart/form-data`` body. Raises ValueError with the reason, as one line."""
    header = Message()
    header["content-type"] = content_type or "application/octet-stream"
    if header.get_content_type() != "multipart/form-data":
        if not body:
            raise ValueError("the request holds no image: POST the image's bytes, or a multipart form with one file")
        return None, body
    boundary = header.get_param("boundary")
    if not boundary:
        raise ValueError("a multipart/form-data request needs a boundary in its Content-Type")
    files = [(name, data) for name, data in form_parts(body, str(boundary)) if name is not None]
    if len(files) != 1:
        raise ValueError(f"send one image per request: the form holds {len(files)} files")
    name, data = files[0]
    if not data:
        raise ValueError(f"{name or 'the form file'} is empty")
    return name, data


def form_parts(body: bytes, boundary: str) -> list[tuple[str | None, bytes]]:
    """(file name or None for a plain field, content) of each part of a multipart body (RFC 7578).
    Split on the delimiter itself, so a part's bytes come back exactly as sent."""
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    pieces = (b"\r\n" + body).split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise ValueError("the multipart body is cut short or malformed (no closing delimiter)")
    parts = []
    for piece in pieces[1:-1]:
        head, sep, content = piece.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a part of the multipart body has no headers")
        disposition = Message()
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition["content-disposition"] = value.strip()
        parts.append((disposition.get_filename() if disposition.get("content-disposition") else None, content))
    return parts


def parse_top(value: str | None, default: int, classes: int) -> int:
    """The ``?top=K`` of a request: 1 ≤ K ≤ the number of classes."""
    if value is None:
        return min(default, classes)
    try:
        k = int(value)
    except ValueError:
        raise ValueError(f"top={value!r} is not a whole number") from None
    if not 1 <= k <= classes:
        raise ValueError(f"top={k}: give 1 to {classes} (the model's classes)")
    return k


async def read_body(request, limit: int) -> bytes:
    """The request's body, refused past ``limit`` bytes before more is read (the declared length
    first, then the bytes as they arrive, for a body sent without one)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ValueError(f"the request is {int(declared):,} bytes, over the {limit:,}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ValueError(f"the request is over the {limit:,}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------------------ the replica


class Classifier:
    """One replica: the export's model, loaded once; each request decoded here and predicted
    with the others that arrived with it."""

    def __init__(self, model_bytes: bytes, classes: list[dict], source: str, top: int, max_bytes: int, info: dict,
                 gpus: float = 0.0):
        from tinyray.tfk import tf

        devices = tf.config.list_physical_devices("GPU")
        # as in a training worker: a replica given a GPU that TensorFlow cannot see would serve from
        # its CPU, silently slower; replicas sharing a GPU (--gpus-per-replica 0.5) each grow into it
        if gpus > 0 and not devices and os.environ.get("TINYRAY_ALLOW_MISSING_GPU") != "1":
            from tinyray.doctor import tf_loader_notes

            raise TinyrayError(f"this replica was given a GPU but TensorFlow sees none: {tf_loader_notes()}")
        for device in devices:
            tf.config.experimental.set_memory_growth(device, True)
        self.model = load_model(model_bytes, source)
        self.classes, self.top, self.max_bytes, self.info = classes, top, max_bytes, info

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/")
        if request.method == "GET" and path in ("", "/healthz"):
            return JSONResponse(self.info)
        if path != "/predict":
            return JSONResponse({"error": f"no route {request.url.path}: POST an image to /predict"}, status_code=404)
        if request.method != "POST":
            return JSONResponse({"error": "POST the image to /predict"}, status_code=405)
        try:
            k = parse_top(request.query_params.get("top"), self.top, len(self.classes))
            name, data = image_from_request(await read_body(request, self.max_bytes),
                                            request.headers.get("content-type"))
            image = decode_image(data)
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        probs = await self.predict(image)
        return JSONResponse({"file": name, "top": top_k(probs[None], self.classes, k)[0]})

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.005)
    async def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        # off the event loop, so that requests keep arriving (and the next batch fills) meanwhile
        probs = await asyncio.get_running_loop().run_in_executor(
            None, lambda: np.asarray(self.model.predict_on_batch(np.stack(images))))
        return list(probs)


# ---------------------------------------------------------------------------- the driver


def replica_options(cpus: float, gpus: float, verbose: bool = False) -> dict:
    """A replica's Ray actor options. Only tinyray's own switches travel in its environment."""
    from tinyray.console import quiet_env

    if cpus <= 0 or gpus < 0:
        raise TinyrayError(f"a replica needs CPUs > 0 and GPUs >= 0, got {cpus:g} CPUs and {gpus:g} GPUs")
    return {"num_cpus": cpus, "num_gpus": gpus,
            "runtime_env": {"env_vars": {"TF_USE_LEGACY_KERAS": "1", **quiet_env(verbose)}}}


def build_app(export: Export, replicas: int = 1, cpus: float = 1.0, gpus: float = 0.0, top: int = 5,
              max_bytes: int = MAX_REQUEST_BYTES, verbose: bool = False):
    """The Serve application of an export (``Deployment.bind``)."""
    if replicas < 1:
        raise TinyrayError(f"--replicas must be at least 1, got {replicas}")
    if top < 1:
        raise TinyrayError(f"--top must be at least 1, got {top}")
    info = {"run": export.marker.get("run"), "model": export.marker.get("model"), "classes": len(export.classes),
            "export": export.uri, "predict": "POST an image (raw bytes or a multipart file) to /predict?top=K"}
    deployment = serve.deployment(Classifier, name="classifier", num_replicas=replicas,
                                  max_ongoing_requests=MAX_ONGOING,
                                  ray_actor_options=replica_options(cpus, gpus, verbose))
    return deployment.bind(export.model_bytes, export.classes, export.uri, top, max_bytes, info, gpus)


def deploy(app, host: str, port: int, asked: dict, timeout: float | None = None) -> str:
    """Deploy ``app`` on the connected Ray cluster's Serve and wait, bounded, until its replicas
    run and the proxy routes to it. ``asked``: one replica's CPU and GPU, for the line a stalled
    start ends in. Returns the URL of /predict."""
    from ray.serve.config import HTTPOptions

    serve.start(http_options=HTTPOptions(host=host, port=port))
    serve.run_many([serve.RunTarget(target=app, name=APP_NAME, route_prefix="/")],
                   wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
    wait = float(timeout or os.environ.get("TINYRAY_SERVE_TIMEOUT") or SERVE_TIMEOUT)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    deadline, running_since = time.monotonic() + wait, None
    while True:
        app_status = serve.status().applications.get(APP_NAME)
        state = str(app_status.status).split(".")[-1] if app_status else "NOT_STARTED"
        if state in ("DEPLOY_FAILED", "UNHEALTHY"):
            serve.delete(APP_NAME)
            raise TinyrayError(f"the Serve application failed to start: {_failure(app_status)}")
        if state == "RUNNING":
            if _answers(url + "/healthz"):
                return url + "/predict"
            running_since = running_since or time.monotonic()
        # Serve already running on the cluster keeps its own host and port (serve.start only warns):
        # replicas that run while the route never answers here are that, not a slow start
        if time.monotonic() > deadline or (running_since and time.monotonic() - running_since > ROUTE_WAIT):
            serve.delete(APP_NAME, _blocking=False)
            raise TinyrayError(_stalled(state, ROUTE_WAIT if running_since else wait, asked, url))
        time.sleep(0.5)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _failure(app_status) -> str:
    from tinyray.errors import failure_line

    texts = [app_status.message] + [d.message for d in app_status.deployments.values()]
    return failure_line("\n".join(t for t in texts if t)) or "no reason given (see the Serve logs)"


def _stalled(state: str, wait: float, asked: dict, url: str) -> str:
    import ray

    free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
    if state == "RUNNING":
        return (f"the replicas run, but {url} did not answer within {wait:g} s: Serve on this cluster already "
                "listens on another host or port (`serve status`; `serve shutdown` stops it), or a firewall is between")
    return (f"the Serve replicas did not start within {wait:g} s (TINYRAY_SERVE_TIMEOUT, state {state}):"
            f" each asks for {asked['CPU']:g} CPU and {asked['GPU']:g} GPU, and the cluster has "
            f"{free.get('CPU', 0):g} CPU and {free.get('GPU', 0):g} GPU free (see `ray status`)")


def serve_command(export_uri: str, opts, host: str = "127.0.0.1", port: int = DEFAULT_PORT, replicas: int = 1,
                  cpus: float = 1.0, gpus: float = 0.0, top: int = 5, max_bytes: int = MAX_REQUEST_BYTES,
                  address: str | None = None, verbose: bool = False) -> None:
    """``tinyray serve``: check the export here, deploy it, serve until Ctrl-C or SIGTERM, then
    delete the application."""
    import logging

    from tinyray.cluster import ensure_ray
    from tinyray.console import quiet_driver

    quiet_driver(verbose)  # before TensorFlow loads below
    export = Export(export_uri, opts)
    load_model(export.model_bytes, export_uri)  # a refused file is one line here, before Ray starts
    app = build_app(export, replicas, cpus, gpus, top, max_bytes, verbose)
    ensure_ray(opts, address, verbose=verbose)
    if not verbose:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    url = deploy(app, host, port, {"CPU": cpus, "GPU": gpus})
    # A flag, not a threading.Event: a handler that sets an Event deadlocks when the signal
    # arrives while the main thread holds that Event's lock inside wait().
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    print(f"serving {export.marker.get('run')} ({len(export.classes)} classes) on {replicas} replica(s) at {url}; "
          "Ctrl-C stops it", flush=True)
    while not stop:
        time.sleep(0.5)
    serve.delete(APP_NAME)
    print("stopped: the application is deleted", flush=True)
