"""Shared, real components for the suite: generated sample releases, one embedded S3 endpoint
and one local Ray cluster per test session (started here, stopped here)."""
import os
import shutil

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"  # a stray ~/.ray/auth_token must not turn auth on
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# A run whose workers are never placed ends in its one line after 5 minutes here, not the 20 a GPU
# node's boot needs: well inside a test's limit, so such a test fails with the line (ResourceWatch)
os.environ.setdefault("TINYRAY_RESOURCE_TIMEOUT", "300")

from tinyray.data.sample import SampleSpec, write_sample  # noqa: E402
from tinyray.data.storage import EmbeddedS3  # noqa: E402

SAMPLE = SampleSpec(classes=4, train_per_class=24, val_per_class=6, test_images=3, seed=1)


@pytest.fixture(scope="session")
def sample_release(tmp_path_factory):
    """A small sample release folder (do not modify: copy it with ``release_copy``)."""
    return write_sample(str(tmp_path_factory.mktemp("release")), SAMPLE)


@pytest.fixture
def release_copy(sample_release, tmp_path):
    """A private copy of the sample release that a test may damage."""
    dst = tmp_path / "tiny-imagenet-200"
    shutil.copytree(sample_release, dst)
    return str(dst)


@pytest.fixture(scope="session")
def s3():
    with EmbeddedS3(bucket="tinyray") as server:
        yield server


@pytest.fixture(scope="session")
def staged(sample_release, s3):
    """The sample release staged into the embedded store: (uri, manifest)."""
    from tinyray.data.stage import StageConfig, stage_dataset

    uri = "s3://tinyray/staged-sample"
    manifest = stage_dataset(StageConfig(sample_release, uri, rows_per_shard=20, progress=False), s3.options)
    return uri, manifest


@pytest.fixture(scope="session")
def ray_cluster(s3):
    """One local Ray cluster for the session. Four logical CPUs on this 2-core machine: two
    1-CPU Train workers plus room for Ray Data's read tasks. Workers reach the embedded store
    through the runtime environment, as on a real cluster."""
    import ray

    from tinyray.cluster import repoint_stale_cluster_file

    ray.init(address="local", num_cpus=4, resources={"tinyray_driver": 4},
             runtime_env={"env_vars": {**s3.public_env, "TF_USE_LEGACY_KERAS": "1", "RAY_AUTH_MODE": "disabled"}},
             log_to_driver=False)
    # A `ray start` cluster that an earlier test stopped may have left Ray's cluster pointer behind.
    repoint_stale_cluster_file(ray.get_runtime_context().gcs_address)
    yield ray
    ray.shutdown()


# ------------------------------------------- `ray start --head` clusters, stopped by their pid


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hold_cpus(cpus):
    """Another job on the connected cluster: an actor holding ``cpus`` CPUs until ``ray.kill``."""
    import ray

    @ray.remote(num_cpus=cpus)
    class OtherJob:
        def ready(self):
            return True

    other = OtherJob.remote()
    ray.get(other.ready.remote())
    return other


def shipped_head_env() -> dict:
    """The variables cluster/aws-gpu.yaml sets on its head's `ray start` (``NAME=value`` before
    the command): a test's head starts as the shipped one does."""
    import yaml

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = yaml.safe_load(open(os.path.join(root, "cluster", "aws-gpu.yaml")))
    start = next(c for c in cfg["head_start_ray_commands"] if "ray start" in c)
    return dict(t.split("=", 1) for t in start.split("ray start")[0].split() if "=" in t)


def start_ray_head(*args, env=None, timeout=120, before_start=None):
    """`ray start --head --block` as this test's own child, in its own process group, with the
    shipped head's variables (``shipped_head_env``). ``before_start(port)`` may write files
    that name the GCS port. Returns (process, dashboard/job address, env)."""
    import subprocess
    import time

    port, dash = free_port(), free_port()
    if before_start:
        before_start(port)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **shipped_head_env(), **(env or {})}
    # Every port of its own: the session's local Ray already holds the default agent and
    # metrics ports, and a head whose dashboard agent cannot bind never accepts a job.
    own_ports = [f"--{flag}={free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "ray-client-server-port")]
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--disable-usage-stats", *own_ports,
         *[a.replace("{port}", str(port)) for a in args]],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + timeout
    while subprocess.run(["ray", "job", "list", "--address", address], env=env,
                         capture_output=True).returncode != 0:
        if time.time() > deadline or proc.poll() is not None:
            stop_process_tree(proc)
            raise RuntimeError("ray start --head did not come up")
        time.sleep(2)
    proc.gcs_port = port
    return proc, address, env


def start_ray_node(gcs_address, *args, env=None):
    """`ray start --address=GCS --block` as this test's own child, in its own process group: one
    more node of a cluster on this machine, with ports of its own. Stop it with
    ``stop_process_tree`` (that is how a test loses a node)."""
    import subprocess

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    own_ports = [f"--{flag}={free_port()}" for flag in (
        "node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "metrics-export-port", "runtime-env-agent-port")]
    return subprocess.Popen(["ray", "start", f"--address={gcs_address}", "--block", "--disable-usage-stats",
                             *own_ports, *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_process_tree(proc, graceful=True):
    """Stop `ray start --block` and every process it started (fake nodes included), by pid:
    never `ray stop`, which would stop every Ray on the machine. ``graceful=False``: SIGKILL at
    once, as a crashed or reclaimed machine goes (a node given SIGTERM drains first)."""
    import signal
    import subprocess
    import time

    import psutil

    try:
        family = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        family = [proc.pid]
    try:
        os.killpg(proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)  # gcs_server and raylet may ignore SIGTERM: they are killed below
    except subprocess.TimeoutExpired:
        pass
    if graceful:
        time.sleep(2)
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # `ray start` wrote Ray's "current cluster" pointer; do not leave it naming a dead cluster.
    pointer = "/tmp/ray/ray_current_cluster"
    port = getattr(proc, "gcs_port", None)
    try:
        if port and open(pointer).read().strip().endswith(f":{port}"):
            os.remove(pointer)
    except OSError:
        pass


def submit_job(address, env, entrypoint, runtime_env=None, wait=True, timeout=1200, working_dir=True):
    """`ray job submit --working-dir <repo>` as a user runs it. The head's job agent can lag
    the job API by a few seconds after start-up; that one answer is retried."""
    import json
    import subprocess
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = ["ray", "job", "submit", "--address", address] + (["--working-dir", root] if working_dir else [])
    if runtime_env:
        cmd += ["--runtime-env-json", json.dumps(runtime_env)]
    if not wait:
        cmd.append("--no-wait")
    deadline = time.time() + 180
    while True:
        out = subprocess.run(cmd + ["--", *entrypoint], env=env, capture_output=True, text=True, timeout=timeout)
        if "No available agent to submit job" not in out.stderr or time.time() > deadline:
            return out
        time.sleep(3)


# ------------------------------------------------- what the machine held around each test (opt-in)

LOAD_LOG = os.environ.get("TINYRAY_TEST_LOAD_LOG")


@pytest.fixture(autouse=True)
def _load_log(request):
    """With TINYRAY_TEST_LOAD_LOG=FILE: one line per test with its duration, the machine's
    process count and load average after it, and the Ray processes still alive, to find what a
    long suite accumulates (the same test ran 2x slower in the full suite than alone)."""
    if not LOAD_LOG:
        yield
        return
    import time

    import psutil

    start = time.time()
    yield
    procs = list(psutil.process_iter(["name", "cmdline", "status"]))
    ray_procs = sum(1 for p in procs if p.info["status"] != psutil.STATUS_ZOMBIE
                    and any("ray" in part for part in (p.info["cmdline"] or [])[:2]))
    with open(LOAD_LOG, "a") as f:
        f.write(f"{time.time() - start:8.1f}s  procs {len(procs):4d}  ray {ray_procs:3d}  "
                f"load {os.getloadavg()[0]:5.2f}  {request.node.nodeid}\n")
