"""What fits where, as pure arithmetic on resource dicts (``{"CPU": 4.0, "GPU": 1.0, …}``, as
``ray.nodes()`` reports them): whether a run fits the cluster, what a stalled run lacks, how many
trials run at once, what a trial's driver reserves, and the lines a wait for resources ends in.
No Ray here: ``cluster`` asks the running cluster and passes what it has to these functions."""
from __future__ import annotations

import math
import os
from dataclasses import replace

from tinyray.config import TrainConfig
from tinyray.data.storage import is_s3, local_path
from tinyray.errors import TinyrayError

# The custom resource that only Tune's trial drivers ask for; the head node of every cluster
# config in cluster/ offers it, so drivers never sit on (spot) GPU nodes.
DRIVER_RESOURCE = "tinyray_driver"


# CPU each of a run's Ray Data read tasks asks for, beside its Train workers (IngestConfig's default).
READ_CPUS = 0.25


# Ray Data's file listing runs first, as one task of 1 whole CPU (docs/workarounds.md): some node must
# keep that much free beside the workers, or no batch ever arrives.
LIST_CPUS = 1.0
# Python workers a raylet may start at once (RAY_worker_maximum_startup_concurrency), on the heads
# tinyray's cluster configs start (cluster/aws-gpu.yaml, the KubeRay head). Ray's default is the
# node's CPU count, and 1 on a head with --num-cpus=0: a trial starts about ten actors (Tune's trainable,
# Train's controller and its helpers, Ray Data's coordinators), so two trials on such a head
# queue their start-ups one by one, and the raylet prints "N PYTHON worker processes have been
# started ... Nx the maximum expected startup concurrency" to every driver's console (at 4x).
STARTUP_CONCURRENCY = 16


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
    must keep ``LIST_CPUS`` free beside them for Ray Data's file listing (docs/workarounds.md).
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


def check_shared_storage(storage: str, multi_node: bool) -> None:
    """On a cluster of several nodes (or one that will grow), results must go where every node
    reads and writes: each trial's driver reads result.json that a worker on another node wrote,
    and a spot node's checkpoints must outlive it. A local folder is refused unless the user says
    it is one every node mounts (EFS, NFS: ``TINYRAY_SHARED_STORAGE=1``)."""
    if not multi_node or is_s3(storage) or os.environ.get("TINYRAY_SHARED_STORAGE") == "1":
        return
    raise TinyrayError(
        f"storage {local_path(storage)} is a local folder, and this cluster has (or can add) other nodes, "
        f"whose results and checkpoints would stay on their own disks: use --storage s3://BUCKET/experiments "
        f"(or set TINYRAY_SHARED_STORAGE=1 if every node mounts that folder)")


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


def head_trial_cap(live_nodes: list[dict]) -> int | None:
    """How many trials the head's memory holds: Ray's ``memory`` resource on the live head (what
    Ray schedules there: about 70 % of the RAM free when it started) over ``HEAD_MB_PER_TRIAL``.
    None when no live node is marked head."""
    heads = [n for n in live_nodes if HEAD_MARK in n and n.get("memory")]
    return max(1, int(heads[0]["memory"] / 2**20 // HEAD_MB_PER_TRIAL)) if heads else None


def auto_concurrency(trials: list[TrainConfig], nodes: list[dict], max_nodes: list[dict] | None = None,
                     head_cap: int | None = None) -> int:
    """How many trials the cluster can run at once (with what an autoscaler may still add):
    whole trials' worth of worker bundles that fit, node by node, with ``READ_CPUS`` per trial
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
    while slots > 1 and slots * workers * per["CPU"] + max(LIST_CPUS, slots * READ_CPUS) > total_cpu + 1e-9:
        slots -= 1
    drivers = sum(n.get(DRIVER_RESOURCE, 0) for n in nodes)
    if drivers >= 1:
        slots = min(slots, int(drivers))
    if head_cap:
        slots = min(slots, head_cap)
    return max(1, min(slots, len(trials)))
