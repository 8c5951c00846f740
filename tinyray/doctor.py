"""The preflight: is this cluster able to run a trial? Asked of the nodes themselves, in seconds.

``tinyray doctor [--data URI] [--gpus N]`` and the main job (once, before Tune starts) run one
small Ray task per worker shape the job uses, asking what a trial worker asks for, so an
autoscaling cluster launches one node of each type. Each task reports its node: versions, the GPUs
TensorFlow sees with the CUDA / cuDNN / NCCL it was built with against those it loaded, whether
the manifest at ``--data`` is readable with that node's own identity (and its region), free disk
and memory. A broken image shows here, not after 72 failed trials.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from tinyray.errors import TinyrayError

MIN_DISK_GB = 10.0  # a node's Ray temp dir holds spilled objects and downloaded checkpoints
PROBE_TIMEOUT = 900.0  # s: an autoscaled GPU node boots and installs TF's CUDA wheels first


def versions() -> dict[str, str]:
    """Installed versions, read from package metadata (no import of TensorFlow)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("ray", "tensorflow", "tf-keras", "tinyray"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def tf_loader_notes(limit: int = 3) -> str:
    """What TensorFlow's GPU loader says when it finds no GPU, from a fresh process with its C++
    logging on (quiet workers mute it; the reason is there: a missing libcudnn, an old driver)."""
    code = "import tensorflow as tf; tf.config.list_physical_devices('GPU')"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "TF_USE_LEGACY_KERAS": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(TF's loader could not be asked: {type(e).__name__})"
    keys = ("dlopen", "cuda", "cudnn", "gpu", "driver", "nccl")
    lines = [" ".join(l.split("] ", 1)[-1].split()) for l in out.stderr.splitlines()
             if any(k in l.lower() for k in keys)]
    return "; ".join(dict.fromkeys(lines[:limit])) or "TF's loader said nothing about GPUs"


def _loaded_version(sonames: tuple[str, ...], symbol: str, fmt) -> str | None:
    """A CUDA library's version as this process loaded it (TF dlopens them; a second dlopen of the
    same soname returns that copy). None when it is not loadable."""
    import ctypes

    for name in sonames:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        fn = getattr(lib, symbol, None)
        if fn is None:
            continue
        if symbol == "cudnnGetVersion":
            fn.restype = ctypes.c_size_t
            return fmt(int(fn()))
        value = ctypes.c_int(0)
        if fn(ctypes.byref(value)) == 0:
            return fmt(value.value)
    return None


def gpu_report() -> dict:
    """GPUs TensorFlow sees; CUDA / cuDNN TF was built with; CUDA / cuDNN / NCCL it loaded."""
    from tinyray.tfk import tf

    gpus = tf.config.list_physical_devices("GPU")
    build = tf.sysconfig.get_build_info()
    out = {"gpus": len(gpus), "built_cuda": build.get("cuda_version"), "built_cudnn": build.get("cudnn_version")}
    if gpus:
        out["loaded_cuda"] = _loaded_version(("libcudart.so.12",), "cudaRuntimeGetVersion",
                                             lambda v: f"{v // 1000}.{v % 1000 // 10}")
        out["driver_cuda"] = _loaded_version(("libcuda.so.1",), "cuDriverGetVersion",
                                             lambda v: f"{v // 1000}.{v % 1000 // 10}")
        out["loaded_cudnn"] = _loaded_version(("libcudnn.so.9", "libcudnn.so.8", "libcudnn.so"), "cudnnGetVersion",
                                              lambda v: f"{v // 10000}.{v % 10000 // 100}.{v % 100}" if v >= 90000
                                              else f"{v // 1000}.{v % 1000 // 100}.{v % 100}")
        out["loaded_nccl"] = _loaded_version(("libnccl.so.2",), "ncclGetVersion",
                                             lambda v: f"{v // 10000}.{v % 10000 // 100}.{v % 100}")
    return out


def probe(data: str | None, endpoint_url: str | None, gpus_asked: float) -> dict:
    """One node's answers (runs as a Ray task on the node, with that node's identity)."""
    import psutil
    import ray

    from tinyray.data.storage import StorageOptions

    row = {"node": ray.util.get_node_ip_address(), "gpus_asked": gpus_asked, **versions(), "failures": []}
    if gpus_asked:
        row.update(gpu_report())
        if not row["gpus"]:
            if os.environ.get("TINYRAY_ALLOW_MISSING_GPU") == "1":
                row["gpu_note"] = "none visible (allowed: TINYRAY_ALLOW_MISSING_GPU)"
            else:
                row["failures"].append(f"asked for {gpus_asked:g} GPU but TensorFlow sees none: {tf_loader_notes()}")
        elif row.get("built_cudnn") and row.get("loaded_cudnn") and \
                str(row["loaded_cudnn"]).split(".")[0] != str(row["built_cudnn"]).split(".")[0]:
            row["failures"].append(f"TensorFlow was built for cuDNN {row['built_cudnn']} but loaded "
                                   f"{row['loaded_cudnn']}: install tinyray's gpu extra")
    temp = ray._private.worker._global_node.get_temp_dir_path() if ray.is_initialized() else "/tmp"
    row["disk_free_gb"] = round(shutil.disk_usage(temp).free / 2**30, 1)
    row["mem_free_gb"] = round(psutil.virtual_memory().available / 2**30, 1)
    if row["disk_free_gb"] < MIN_DISK_GB:
        row["failures"].append(f"only {row['disk_free_gb']:g} GiB free under {temp} (Ray spills and checkpoints "
                               f"there; {MIN_DISK_GB:g} GiB at least)")
    if data:
        row.update(data_check(data, StorageOptions.from_env(endpoint_url)))
        if row.get("data_error"):
            row["failures"].append(row["data_error"])
    return row


def data_check(data: str, opts) -> dict:
    """Can this process read the manifest at ``data``, and in which region is its bucket?"""
    from tinyray.data import storage
    from tinyray.data.stage import MANIFEST

    try:
        opts = opts.for_bucket(data)
        storage.read_bytes(storage.join(data, MANIFEST), opts)
        return {"data": "readable", "region": opts.region or "-"}
    except FileNotFoundError:
        return {"data": "no manifest", "data_error": f"{data} has no {MANIFEST}: stage it first (tinyray data stage)"}
    except TinyrayError as e:
        return {"data": "unreadable", "data_error": f"{data}: {e}"}


def shapes_of(trials) -> list[tuple[float, float]]:
    """The distinct (CPU, GPU) a trial worker asks for, over the trials."""
    return sorted({(t.cpus_per_worker, t.gpus_per_worker) for t in trials})


def run_probes(shapes: list[tuple[float, float]], data: str | None, endpoint_url: str | None,
               timeout: float | None = None, autoscaling: bool = False) -> tuple[list[dict], list[str]]:
    """One probe per shape, each bounded. Returns (rows, failure lines)."""
    import ray

    timeout = float(os.environ.get("TINYRAY_RESOURCE_TIMEOUT") or timeout or PROBE_TIMEOUT)
    # TF's C++ notes are wanted here (tf_loader_notes asks a fresh process for them)
    task = ray.remote(probe)
    pending = {}
    for cpus, gpus in shapes:
        ref = task.options(num_cpus=cpus, num_gpus=gpus, max_retries=0).remote(data, endpoint_url, gpus)
        pending[ref] = (cpus, gpus)
    rows, failures = [], []
    deadline = time.monotonic() + timeout
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            break
        ref = done[0]
        cpus, gpus = pending.pop(ref)
        try:
            row = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - a node that cannot run the probe is a failure line
            text = str(e).strip().splitlines()
            row = {"node": "?", "gpus_asked": gpus, "failures": [f"the probe failed: {text[-1] if text else e}"]}
        row["shape"] = f"{cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")
        rows.append(row)
        failures += [f"{row['shape']} node {row['node']}: {f}" for f in row["failures"]]
    if pending:
        from tinyray.cluster import autoscaler_status
        from tinyray.resources import launch_failures, resource_wait_line

        why = launch_failures(autoscaler_status())  # an IAM denial or no capacity, named
    for ref, (cpus, gpus) in pending.items():
        ray.cancel(ref, force=True)
        shape = f"{cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")
        failures.append(resource_wait_line(timeout, [{"CPU": cpus, "GPU": gpus}], why, autoscaling,
                                           who="the probe"))
        rows.append({"shape": shape, "node": "none", "failures": ["did not come up"]})
    return rows, failures


COLUMNS = ("shape", "node", "ray", "tensorflow", "tf-keras", "tinyray", "gpus", "built_cuda", "loaded_cuda",
           "driver_cuda", "built_cudnn", "loaded_cudnn", "loaded_nccl", "data", "region", "disk_free_gb",
           "mem_free_gb")


def table(rows: list[dict]) -> str:
    """The doctor's table: a row per node probed, a column per answer ('-' where not asked)."""
    def cell(row, col):
        if col == "gpus" and not row.get("gpus_asked"):
            return "not asked"
        if col == "gpus" and row.get("gpus") == 0:
            return "no GPU visible"
        value = row.get(col)
        return "-" if value is None else str(value)

    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows) or c == "gpus"]
    cells = [[cell(r, c) for c in cols] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *[line(r) for r in cells]])


def preflight(trials, data: str, endpoint_url: str | None, autoscaling: bool = False) -> None:
    """The main job's check, once before Tune starts: one probe per worker shape; one line if any
    fails. The versions on the nodes must be the driver's (a node built from another image)."""
    rows, failures = run_probes(shapes_of(trials), data, endpoint_url, autoscaling=autoscaling)
    mine = versions()
    for row in rows:
        for name in ("ray", "tensorflow", "tf-keras"):
            if row.get(name) and row[name] != mine[name]:
                failures.append(f"{row['shape']} node {row['node']} has {name} {row[name]}, the driver {mine[name]}: "
                                f"build every node from the same image / constraints.txt")
    if failures:
        more = f" (and {len(failures) - 1} more: tinyray doctor shows all)" if len(failures) > 1 else ""
        raise TinyrayError(f"preflight: {failures[0]}{more}")
