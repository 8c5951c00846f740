"""The Ray cluster as tinyray meets it: connecting (or starting a local one), what it holds and
what its autoscaler can add, and the bounded wait for a placement (``ResourceWatch``). What fits
where is pure arithmetic in ``resources``. Every workaround tinyray carries for a quirk of Ray
(or of TensorFlow under Ray) is listed, with its test, in docs/workarounds.md."""
from __future__ import annotations

import json
import os
import socket

from tinyray.data.storage import StorageOptions
from tinyray.errors import TinyrayError
from tinyray.resources import DRIVER_RESOURCE, RESOURCE_TIMEOUT, launch_failures, resource_wait_line

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


# ------------------------------------------------------------------- the running autoscaler


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


def stop_late_group(group: dict) -> None:
    """End a placement group's wait: kill the actor that created it (Train's controller, for a
    run's workers) and remove the group. The GCS keeps an actor's group until its job ends too,
    so a group left behind would still be placed, for nothing, when resources come free."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    creator = group.get("creator_actor_id") or ""
    if creator.strip("0f"):  # nil (made by the driver itself): no actor to stop
        handle = ray._private.worker.global_worker.core_worker.get_actor_handle(ray.ActorID(bytes.fromhex(creator)))
        ray.kill(handle, no_restart=True)
    remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group["placement_group_id"]))))


def job_placements() -> dict[str, dict]:
    """This job's placement groups that wait to be placed or are placed, as
    ``placement_group_table()`` shows them, each with its creator (Train's controller, for a
    run's workers). Other jobs' groups are left out: a sweep or run is never ended by another
    user's wait (the public table does not say whose a group is; the GCS's record does)."""
    import ray
    from ray._private import state
    from ray.core.generated import gcs_pb2

    job = ray.get_runtime_context().get_job_id()
    table = gcs_pb2.PlacementGroupTableData
    out = {}
    for raw in state.state._connect_and_get_accessor().get_placement_group_table():
        data = table.FromString(raw)
        if data.creator_job_id.hex() == job and data.state in (table.PENDING, table.CREATED):
            info = state.state._gen_placement_group_info(data)
            info["creator_actor_id"] = data.creator_actor_id.hex()
            out[info["placement_group_id"]] = info
    return out


def pending_placements() -> dict[str, dict]:
    """This job's placement groups that wait to be placed (``job_placements``, pending only)."""
    return {pid: g for pid, g in job_placements().items() if g.get("state") == "PENDING"}


class ResourceWatch:
    """Ends a wait for resources that nothing will satisfy: workers of this job that stay
    unplaced longer than ``timeout`` make ``poll()`` true, and ``reason`` is the one line the wait
    ends in. Polled by Tune in a sweep (as a Stopper, see ``sweep.resource_stopper``) and by
    ``train.fit_bounded`` for ``tinyray train``.

    A wait is followed by who waits (the group's creator: a run's Train controller), not by the
    group: Train removes a worker group's placement group when it is not placed within its start
    timeout (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s) and asks again with a new one, so a
    group never pends longer than that, and a bound per group (1200 s) would never be reached
    (found in CI: a run waited 12 minutes through 11 groups). The clock stops when one of the
    creator's groups is placed, or when it has had none pending for ``FORGET_S``."""

    FORGET_S = 30.0  # longer than Train's pause between removing a group and asking anew

    def __init__(self, timeout: float | None = None, autoscaling: bool = False, every: float = 5.0, clock=None,
                 who: str = "a trial's workers"):
        import time

        # a caller's own bound, else the environment's (TINYRAY_RESOURCE_TIMEOUT), else the default
        self.timeout = float(timeout or os.environ.get("TINYRAY_RESOURCE_TIMEOUT") or RESOURCE_TIMEOUT)
        self.autoscaling = autoscaling
        self.who = who
        self.every = every
        self.clock = clock or time.monotonic
        self.first_seen: dict[str, float] = {}  # who waits (creator, else the group) -> since when
        self.last_pending: dict[str, float] = {}
        self.last_poll = -1e18
        self.reason: str | None = None
        self.late_group: dict | None = None  # the group that waited too long, once one has

    def poll(self, groups: dict | None = None, status: dict | None = None) -> bool:
        """Whether to stop now. ``groups``: as ``placement_group_table()``, each with its
        ``creator_actor_id`` when known (default: this job's pending and placed groups, see
        ``job_placements``)."""
        if self.reason:
            return True
        now = self.clock()
        if groups is None and now - self.last_poll < self.every:
            return False
        self.last_poll = now
        if groups is None:
            groups = job_placements()

        def who(pid, group):
            creator = group.get("creator_actor_id") or ""
            return creator if creator.strip("0f") else pid  # nil: the driver's own group

        pending = {who(pid, g): g for pid, g in groups.items() if g.get("state") == "PENDING"}
        placed = {who(pid, g) for pid, g in groups.items() if g.get("state") == "CREATED"} - set(pending)
        for key in pending:
            self.first_seen.setdefault(key, now)
            self.last_pending[key] = now
        for key in list(self.first_seen):
            if key in placed or now - self.last_pending[key] > self.FORGET_S:
                del self.first_seen[key], self.last_pending[key]
        late = [key for key, t in self.first_seen.items() if key in pending and now - t > self.timeout]
        if not late:
            return False
        self.late_group = pending[late[0]]
        bundles = list((self.late_group.get("bundles") or {}).values())
        status = status if status is not None else autoscaler_status()
        self.reason = resource_wait_line(now - self.first_seen[late[0]], bundles, launch_failures(status),
                                         self.autoscaling, who=self.who)
        return True


