"""The Ray cluster: connecting, what it holds, what fits, how many trials at once — and every
workaround tinyray carries for a quirk of Ray (or of TensorFlow under Ray).

Workarounds, each with where it lives and the test that covers it. After a Ray or TensorFlow
upgrade, recheck each one; delete it when its test passes without it.

| quirk | workaround | covered by |
|---|---|---|
| Keras 3 fails in MultiWorkerMirroredStrategy's ``fit`` (keras-team/keras#20585, ray-project/ray#47464) | tf-keras: ``TF_USE_LEGACY_KERAS=1`` set on ``import tinyray`` and sent to every worker (``ensure_ray``) | every training test, e.g. test_train.py::test_two_workers_learn_the_sample_in_sync |
| Tune's default of 1 CPU per trial lets trial drivers hold every CPU, and no Train worker can start (Train V2 then retries its 60 s start timeout forever) | ``trial_resources``: drivers take 0 CPU and a ``tinyray_driver`` slot (or a token of memory) | test_sweep.py::test_trial_drivers_never_take_a_cpu, every sweep test |
| Ray Data's file listing (``ListFiles``, the first operator of 2.60's read plan) is a task with Ray Data's default of 1 whole CPU, which ``read_parquet(num_cpus=…)`` does not change: with less than 1 CPU free on every node beside Train's workers, the run hangs and says nothing | ``check_fits`` and ``auto_concurrency`` keep ``LIST_CPUS`` free on a node; the data watchdog (``data.pipeline.within``) ends any wait that is still left in one line | test_train.py::test_check_fits, test_train.py::test_resource_shapes_train_or_are_refused_and_none_hangs |
| A stale ``/tmp/ray/ray_current_cluster`` (left by a stopped ``ray start``) kills Train's placement-group cleaner, so trials stopped by ASHA keep their workers' resources | ``repoint_stale_cluster_file`` | test_cluster.py::test_stale_cluster_pointer_is_repointed_but_a_live_one_is_kept, test_sweep.py::test_asha_stops_weak_trials_early |
| Inside ``ray job submit``, ``ray.init(runtime_env=...)`` is refused if it sets a variable the job's runtime env sets | ``job_runtime_env_vars``: the job's values stand | test_sweep.py::test_killed_sweep_resumes_without_rerunning_finished_trials |
| ``iter_tf_batches`` deadlocks after ~9 epochs (ray-project/ray#62352) | ``to_tf`` in data/pipeline.py | test_pipeline.py (stream mode) |
| Ray Data's ``equal=True`` split may drop rows | val is read whole and filtered by ``rank_of`` (data/pipeline.py) | test_pipeline.py::test_rank_of_splits_files_exactly_once, val_count in the training tests |
| A TF checkpoint's optimizer slots restore lazily, after Ray has deleted the downloaded checkpoint folder | ``train.read_checkpoint`` builds the slots first | test_train.py::test_a_checkpoint_restores_weights_and_optimizer_state_before_its_folder_goes |
| Tune copies the driver's `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and session token into every trial actor's runtime env (`ray/tune/execution/class_cache.py`, `ENV_VARS_TO_PROPAGATE`), and Ray logs each runtime env in full (`runtime_env_agent.log`) | ``keep_credentials_out_of_tune``: those names are taken out of the set; trial actors sign in with what their node has | test_sweep.py::test_no_credential_reaches_a_log_a_file_or_the_state_api |
| Ray 2.60's v1 autoscaler (``ray up``, the fake provider) does not put its node types in the GCS (``get_cluster_config()`` is None there; only v2 does) | ``running_autoscaler_config`` reads the head's monitor's ``--autoscaling-config`` file | test_cluster.py::test_a_gpu_sweep_makes_the_autoscaler_add_and_remove_nodes |
| Train V2 retries a worker group that cannot be placed without end | ``ResourceWatch`` (a Tune stopper) ends the sweep in one line after ``TINYRAY_RESOURCE_TIMEOUT`` | test_sweep.py::test_a_trial_that_can_never_be_placed_ends_the_sweep_in_one_line |
| Nodes on one machine (fake multi-node, or several ``ray start``) share one session folder: removing a node deletes an uploaded working dir under the running job | those tests submit without ``--working-dir`` | test_cluster.py::test_a_gpu_sweep_makes_the_autoscaler_add_and_remove_nodes, test_reliability.py |
"""
from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import replace

from tinyray.config import TrainConfig
from tinyray.data.pipeline import IngestConfig
from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError

# The custom resource that only Tune's trial drivers ask for; the head node of every cluster
# config in cluster/ offers it, so drivers never sit on (spot) GPU nodes.
DRIVER_RESOURCE = "tinyray_driver"
# CPU each run's Ray Data read tasks ask for, beside its Train workers.
DATA_CPUS = IngestConfig.read_cpus
# Ray Data's file listing runs first, as one task of 1 whole CPU (see the table): some node must
# keep that much free beside the workers, or no batch ever arrives.
LIST_CPUS = 1.0
CURRENT_CLUSTER_FILE = "/tmp/ray/ray_current_cluster"


# ----------------------------------------------------------------------------- connecting


def ensure_ray(opts: StorageOptions, address: str | None = None, driver_slots: bool = False,
               verbose: bool = False) -> None:
    """Connect to (or start) Ray, with where the store is in every worker's environment.

    A credential never travels: Ray logs a runtime env in full and serves it on the dashboard,
    and a copy taken at submit time would outlive temporary credentials (STS, instance profiles,
    IRSA) on a long sweep. Each process signs in with what it has where it runs: a local Ray
    started here inherits this process's environment; a cluster's nodes have their own identity.
    A local Ray started here for a sweep gets ``tinyray_driver`` slots (one per CPU) for Tune's
    trial drivers, as the head node of the cluster configs in cluster/ does. Quiet unless
    ``verbose`` (tinyray/console.py): the workers' output stays in Ray's logs.
    """
    import logging

    import ray

    from tinyray.console import quiet_driver, quiet_env

    if ray.is_initialized():
        return
    quiet_driver(verbose)
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    env = {**opts.public_env(), "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **quiet_env(verbose)}
    job_env = job_runtime_env_vars()
    env = {k: v for k, v in env.items() if k not in job_env}
    kwargs = {}
    if address == "local" and driver_slots:
        kwargs["resources"] = {DRIVER_RESOURCE: os.cpu_count() or 1}
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.WARNING, **kwargs)
    if address == "local":
        repoint_stale_cluster_file(ray.get_runtime_context().gcs_address)


def repoint_stale_cluster_file(gcs_address: str, path: str = CURRENT_CLUSTER_FILE) -> bool:
    """Point Ray's "current cluster" file at this local cluster when it names a dead one.

    Ray Train's placement-group cleaner finds its cluster through this file (its processes have
    no RAY_ADDRESS). A file naming a live cluster is left alone. Returns whether it was rewritten.
    """
    try:
        with open(path) as f:
            named = f.read().strip()
    except OSError:
        return False
    if not named or named == gcs_address:
        return False
    host, _, port = named.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return False  # someone's live cluster
    except (OSError, ValueError):
        pass
    with open(path, "w") as f:
        f.write(gcs_address)
    return True


def job_runtime_env_vars() -> dict:
    """env_vars of the runtime environment `ray job submit` gave this driver, if any."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    job = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR) or "{}")
    return dict((job.get("runtime_env") or {}).get("env_vars") or {})


# Never copied into a runtime env by tinyray; keep_credentials_out_of_tune stops Tune doing it.
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


def keep_credentials_out_of_tune() -> None:
    """Stop Tune from copying this process's AWS keys into every trial's runtime env (see the
    table above): Ray logs a runtime env in full. Trials sign in as every other process does."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(class_cache.ENV_VARS_TO_PROPAGATE) - set(CREDENTIAL_VARS)


def cluster_nodes() -> list[dict]:
    """The resource dicts of the live nodes."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


# ------------------------------------------------------------------------ what fits (pure)


def spare_cpus(cfg: TrainConfig, nodes: list[dict]) -> float:
    """The most CPU that one node keeps free once the run's workers are placed, each on the
    fullest node that still holds it (as Train's PACK placement does). -1 if they do not fit."""
    free = [dict(n) for n in nodes]
    for _ in range(cfg.workers):
        fits = [n for n in free if n.get("CPU", 0) + 1e-9 >= cfg.cpus_per_worker
                and n.get("GPU", 0) + 1e-9 >= cfg.gpus_per_worker]
        if not fits:
            return -1.0
        node = min(fits, key=lambda n: (n.get("GPU", 0) - cfg.gpus_per_worker, n.get("CPU", 0)))
        node["CPU"] = node.get("CPU", 0) - cfg.cpus_per_worker
        node["GPU"] = node.get("GPU", 0) - cfg.gpus_per_worker
    return max((n.get("CPU", 0) for n in free), default=0.0)


def quarter(x: float) -> float:
    """``x`` rounded down to a quarter CPU, the grain of the requests suggested to a user."""
    return math.floor(x * 4 + 1e-9) / 4


def check_fits(cfg: TrainConfig, nodes: list[dict], max_nodes: list[dict] | None = None) -> None:
    """Refuse, before any worker starts, a run the cluster could never hold or never feed.

    ``nodes`` are the cluster's nodes; ``max_nodes`` adds the nodes an autoscaler could still
    start. A worker's bundle must fit on one node, all workers in the cluster, and some node
    must keep ``LIST_CPUS`` free beside them for Ray Data's file listing (see the table above).
    """
    candidates = list(nodes) + list(max_nodes or [])
    need = {"CPU": cfg.cpus_per_worker, "GPU": cfg.gpus_per_worker}

    def fits(node):
        return all(node.get(k, 0) >= v for k, v in need.items() if v)

    if not any(fits(n) for n in candidates):
        biggest = max(candidates, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        raise TinyrayError(
            f"one worker needs {cfg.cpus_per_worker:g} CPU and {cfg.gpus_per_worker:g} GPU, but the "
            f"largest node has {biggest.get('CPU', 0):g} CPU and {biggest.get('GPU', 0):g} GPU"
        )
    for key, per in need.items():
        total = sum(n.get(key, 0) for n in candidates)
        if per and per * cfg.workers > total:
            raise TinyrayError(
                f"{cfg.workers} workers × {per:g} {key} = {per * cfg.workers:g} {key}, more than the "
                f"cluster could ever hold ({total:g} {key})"
            )
    spare = spare_cpus(cfg, candidates)
    if spare + 1e-9 < LIST_CPUS:
        fit = next((c for c in (quarter(cfg.cpus_per_worker) - k / 4 for k in range(int(cfg.cpus_per_worker * 4)))
                    if c > 0 and spare_cpus(replace(cfg, cpus_per_worker=c), candidates) + 1e-9 >= LIST_CPUS),
                   None)
        hint = (f"--cpus-per-worker {fit:g} would fit" if fit else
                f"--workers {cfg.workers - 1} would fit" if cfg.workers > 1 else "no smaller request fits")
        raise TinyrayError(
            f"{cfg.workers} worker{'s' if cfg.workers > 1 else ''} × {cfg.cpus_per_worker:g} CPU leave at most "
            f"{max(spare, 0):g} CPU free on a node, and Ray Data's file listing needs {LIST_CPUS:g} whole CPU "
            f"beside them, or no batch ever arrives: {hint}"
        )


def stall_message(cfg: TrainConfig, split: str, seconds: float, free_cpus: float, total_cpus: float) -> str:
    """The line a run ends in when no batch of ``split`` arrived within ``seconds``, from what
    the cluster has free while this run's workers hold theirs."""
    held = cfg.workers * cfg.cpus_per_worker
    head = (f"no {split} data arrived within {seconds:g} s (--data-timeout): Ray Data's file listing needs "
            f"{LIST_CPUS:g} free CPU beside this run's {cfg.workers} × {cfg.cpus_per_worker:g} CPU workers, and "
            f"{free_cpus:g} of the cluster's {total_cpus:g} CPU are free")
    if free_cpus + 1e-9 >= LIST_CPUS:
        return head + ": the reads are slow, not starved; check the object store, or raise --data-timeout"
    fit = quarter((held + free_cpus - LIST_CPUS) / cfg.workers)
    if fit > 0:
        return head + f" (other runs hold the rest): --cpus-per-worker {fit:g} would fit now"
    return head + " (other runs hold the rest): wait for CPUs to free up, or add a node"


def thread_counts(cpus_per_worker: float) -> tuple[int, int]:
    """TF (intra-op, inter-op) threads for a worker's CPU allotment. TF's default is one
    thread per core of the machine, which oversubscribes a node shared by several workers."""
    n = max(1, int(cpus_per_worker))
    return n, max(1, min(n, 2))


def trial_resources(cluster: dict) -> dict:
    """What one Tune trial driver reserves: no CPU, and a slot that only drivers ask for."""
    if cluster.get(DRIVER_RESOURCE, 0) >= 1:
        return {"CPU": 0, DRIVER_RESOURCE: 1}
    return {"CPU": 0, "memory": 1}


HEAD_MARK = "node:__internal_head__"
# What one running trial holds in the head's memory: its Tune trial actor, Ray Train's
# controller and Ray Data's split coordinator. benchmarks/head_memory.py measured 134 + 135 + 117
# = 386 MB of peak USS per trial (2 concurrent sample trials on this machine); 450 leaves room
# for the coordinator's block metadata on the full dataset, which was not measured.
HEAD_MB_PER_TRIAL = 450


def cluster_capacity(live_nodes: list[dict], cluster_config: dict | None) -> tuple[list[dict], list[dict]]:
    """(nodes, nodes an autoscaler may add) for sizing a sweep.

    With an autoscaler config (the running cluster's, or cluster/aws-gpu.yaml given as
    ``--cluster-config``), capacity is what its node types can reach at ``max_workers``: the live
    worker nodes are part of that maximum, not in addition to it. The head is the live head when
    there is one (its ``ray start`` flags are what it has), else the config's. Without a config,
    only the live nodes count.
    """
    if not cluster_config:
        return list(live_nodes), []
    types = cluster_config.get("available_node_types", {})
    head_type = cluster_config.get("head_node_type")
    live_head = [{k: v for k, v in n.items() if not k.startswith("node:")} for n in live_nodes if HEAD_MARK in n]
    head = live_head or ([dict(types[head_type].get("resources", {}))] if head_type in types else [])
    extra = []
    for name, spec in types.items():
        if name != head_type:
            extra += [dict(spec.get("resources", {}))] * int(spec.get("max_workers", 0))
    return head, extra


MONITOR_SCRIPT = "autoscaler/_private/monitor.py"


def running_autoscaler_config(gcs_address: str | None = None, proc: str = "/proc") -> dict | None:
    """What the running cluster's autoscaler can grow to, as a launcher config's node types.

    Ray 2.60 has two places for it. Autoscaler v2 (KubeRay, v2 clusters) stores its node groups
    in the GCS (``ray._private.state.state.get_cluster_config()``, which Ray Train reads too).
    The default v1 autoscaler does not: it runs as the head's monitor process with
    ``--autoscaling-config=FILE`` (``ray up`` writes ~/ray_bootstrap_config.yaml), so on the head,
    where a submitted job's driver runs, that file is read, picked by this cluster's GCS address.
    None when neither says (a cluster without an autoscaler).
    """
    import ray

    gcs_address = gcs_address or ray.get_runtime_context().gcs_address
    try:
        groups = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an older GCS without the key: try the monitor's file
        groups = None
    if groups is not None and groups.node_group_configs:
        return {"available_node_types": {g.name: {"resources": dict(g.resources), "max_workers": int(g.max_count)}
                                         for g in groups.node_group_configs}}
    path = monitor_config_path(gcs_address, proc)
    return load_cluster_config(path) if path else None


def monitor_config_path(gcs_address: str, proc: str = "/proc") -> str | None:
    """The ``--autoscaling-config`` file of this machine's autoscaler monitor for the cluster at
    ``gcs_address`` (several clusters may share a machine), if one runs here."""
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(os.path.join(proc, pid, "cmdline"), "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(a.endswith(MONITOR_SCRIPT) for a in args):
            continue
        flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        # the monitor runs on this machine: its GCS port names the cluster (the host may be spelt
        # as another of this machine's addresses)
        same = flags.get("gcs-address", "").rpartition(":")[2] == gcs_address.rpartition(":")[2]
        if same and flags.get("autoscaling-config"):
            return os.path.expanduser(flags["autoscaling-config"])
    return None


def check_shared_storage(storage: str, multi_node: bool) -> None:
    """On a cluster of several nodes (or one that will grow), results must go where every node
    reads and writes: each trial's driver reads result.json that a worker on another node wrote,
    and a spot node's checkpoints must outlive it. A local folder is refused unless the user says
    it is one every node mounts (EFS, NFS: ``TINYRAY_SHARED_STORAGE=1``)."""
    from tinyray.data import storage as st

    if not multi_node or st.is_s3(storage) or os.environ.get("TINYRAY_SHARED_STORAGE") == "1":
        return
    raise TinyrayError(
        f"storage {st.local_path(storage)} is a local folder, and this cluster has (or can add) other nodes, "
        f"whose results and checkpoints would stay on their own disks: use --storage s3://BUCKET/experiments "
        f"(or set TINYRAY_SHARED_STORAGE=1 if every node mounts that folder)")


def load_cluster_config(path: str | None) -> dict | None:
    import yaml

    if not path:
        return None
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except FileNotFoundError:
        raise TinyrayError(f"cluster config {path} does not exist") from None
    except (OSError, yaml.YAMLError) as e:
        raise TinyrayError(f"cluster config {path} cannot be read: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict) or "available_node_types" not in cfg:
        raise TinyrayError(f"{path} is not a Ray cluster launcher config (no available_node_types)")
    return cfg


# ------------------------------------------------------------ waiting for resources, bounded

# The watch of the sweep this driver runs (sweep.ResourceStopper asks it); None between sweeps.
ACTIVE_WATCH = None
RESOURCE_TIMEOUT = 1200.0  # s: a GPU node's boot and setup (TF's CUDA wheels) take minutes


def launch_failures(status: dict | None) -> dict[str, str]:
    """{node type: the autoscaler's reason} for each node type whose last launch failed, from the
    status the v1 autoscaler writes to the GCS (``__autoscaling_status``)."""
    report = (status or {}).get("autoscaler_report") or {}
    records = ((report.get("node_availability_summary") or {}).get("node_availabilities")) or {}
    out = {}
    for name, rec in records.items():
        info = rec.get("unavailable_node_information") or {}
        if not rec.get("is_available", True) and info:
            reason = " ".join(str(info.get("description") or info.get("category") or "").split())
            out[name] = reason[:300]
    return out


def resource_wait_line(waited: float, bundles: list[dict], failures: dict[str, str], autoscaling: bool,
                       who: str = "a trial's workers") -> str:
    """The line a sweep ends in when ``who`` waited ``waited`` s for their resources (a trial's
    workers under Tune, or the preflight's probe before it)."""
    want = ", ".join(" + ".join(f"{v:g} {k}" for k, v in sorted(b.items()) if v) for b in bundles[:3]) or "resources"
    head = f"{who} waited {waited:.0f} s for {want} and the cluster never provided them"
    if failures:
        named = "; ".join(f"node type {t}: {why}" for t, why in sorted(failures.items()))
        return f"{head}: the autoscaler could not launch nodes ({named})"
    if autoscaling:
        return (f"{head}: the autoscaler added no node that fits (see `ray status` on the head; "
                f"TINYRAY_RESOURCE_TIMEOUT raises the bound)")
    return f"{head}: the cluster has no autoscaler and no free node that fits; add a node or ask for less"


def autoscaler_status() -> dict | None:
    """The v1 autoscaler's last status in the GCS, or None (no autoscaler, or v2)."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return None
    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


class ResourceWatch:
    """Ends a wait for resources that nothing will satisfy. Polled by Tune (as a Stopper, see
    ``sweep.resource_stopper``): a placement group of Train workers that stays PENDING longer than
    ``timeout`` stops the sweep, and ``reason`` is the one line it ends in."""

    def __init__(self, timeout: float | None = None, autoscaling: bool = False, every: float = 5.0, clock=None):
        import time

        self.timeout = float(os.environ.get("TINYRAY_RESOURCE_TIMEOUT") or timeout or RESOURCE_TIMEOUT)
        self.autoscaling = autoscaling
        self.every = every
        self.clock = clock or time.monotonic
        self.first_seen: dict[str, float] = {}
        self.last_poll = -1e18
        self.reason: str | None = None

    def poll(self, groups: dict | None = None, status: dict | None = None) -> bool:
        """Whether to stop now. ``groups`` is ``ray.util.placement_group_table()``."""
        if self.reason:
            return True
        now = self.clock()
        if groups is None and now - self.last_poll < self.every:
            return False
        self.last_poll = now
        if groups is None:
            from ray.util import placement_group_table

            groups = placement_group_table()
        pending = {pid: g for pid, g in groups.items() if g.get("state") == "PENDING"}
        self.first_seen = {pid: self.first_seen.get(pid, now) for pid in pending}
        late = [pid for pid, t in self.first_seen.items() if now - t > self.timeout]
        if not late:
            return False
        bundles = list((pending[late[0]].get("bundles") or {}).values())
        status = status if status is not None else autoscaler_status()
        self.reason = resource_wait_line(now - self.first_seen[late[0]], bundles, launch_failures(status),
                                         self.autoscaling)
        return True


def head_trial_cap(live_nodes: list[dict]) -> int | None:
    """How many trials the head's memory holds: Ray's ``memory`` resource on the live head (what
    Ray schedules there: about 70 % of the RAM free when it started) over ``HEAD_MB_PER_TRIAL``.
    None when no live node is marked head."""
    heads = [n for n in live_nodes if HEAD_MARK in n and n.get("memory")]
    return max(1, int(heads[0]["memory"] / 2**20 // HEAD_MB_PER_TRIAL)) if heads else None


def auto_concurrency(trials: list[TrainConfig], nodes: list[dict], max_nodes: list[dict] | None = None,
                     head_cap: int | None = None) -> int:
    """How many trials the cluster can run at once (with what an autoscaler may still add):
    whole trials' worth of worker bundles that fit, node by node, with ``DATA_CPUS`` per trial
    and ``LIST_CPUS`` left free for Ray Data, and no more than the head's memory holds
    (``head_cap``, see ``head_trial_cap``). Trials of different shapes are sized by the largest."""
    workers = max(t.workers for t in trials)
    per = {"CPU": max(t.cpus_per_worker for t in trials), "GPU": max(t.gpus_per_worker for t in trials)}

    def bundles(node):
        counts = [math.floor(node.get(k, 0) / v + 1e-9) for k, v in per.items() if v]
        return min(counts) if counts else 0

    everything = list(nodes) + list(max_nodes or [])
    slots = sum(bundles(n) for n in everything) // workers
    total_cpu = sum(n.get("CPU", 0) for n in everything)
    # Every running trial's reads, and one listing at a time (a listing is brief; they queue).
    while slots > 1 and slots * workers * per["CPU"] + max(LIST_CPUS, slots * DATA_CPUS) > total_cpu + 1e-9:
        slots -= 1
    drivers = sum(n.get(DRIVER_RESOURCE, 0) for n in nodes)
    if drivers >= 1:
        slots = min(slots, int(drivers))
    if head_cap:
        slots = min(slots, head_cap)
    return max(1, min(slots, len(trials)))
