"""What fits where (tinyray/resources.py), as tables of resource dicts: no Ray here. Whether a
run fits and can be fed, what a stalled run lacks, how many trials run at once, what a trial's
driver reserves, and the lines a wait for resources ends in."""
import json
import os

import pytest

from tinyray.config import TrainConfig
from tinyray.errors import TinyrayError
from tinyray.resources import auto_concurrency, check_fits, thread_counts, trial_resources
from tinyray.sweepfile import SweepConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "cluster")
SIX = {"model": ["model1", "model2", "model3", "model4", "model5", "model6"]}


def cfg(**kw):
    return TrainConfig(**{"model": "tinycnn", "data": "s3://tinyray/staged-sample", **kw})


@pytest.mark.parametrize("kw,nodes,message", [
    ({"workers": 2, "cpus_per_worker": 1}, [{"CPU": 3}], None),
    ({"workers": 2, "cpus_per_worker": 1}, [{"CPU": 2}], "leave at most 0 CPU free on a node, and Ray Data's file "
                                                         "listing needs 1 whole CPU .*: --cpus-per-worker 0.5 would fit"),
    # the two hanging shapes on a 2-CPU machine: 0.5 CPU left is not enough
    ({"workers": 1, "cpus_per_worker": 1.5}, [{"CPU": 2}], "leave at most 0.5 CPU .*--cpus-per-worker 1 would fit"),
    ({"workers": 2, "cpus_per_worker": 0.75}, [{"CPU": 2}], "--cpus-per-worker 0.5 would fit"),
    ({"workers": 2, "cpus_per_worker": 0.5}, [{"CPU": 2}], None),
    ({"workers": 1, "cpus_per_worker": 2}, [{"CPU": 2}, {"CPU": 2}], None),  # the other node lists
    ({"workers": 2, "cpus_per_worker": 2}, [{"CPU": 2}, {"CPU": 2}], "--cpus-per-worker 1 would fit"),
    # GPU workers pack onto the GPU node; the CPU-only head lists
    ({"workers": 1, "cpus_per_worker": 8, "gpus_per_worker": 1}, [{"CPU": 2}, {"CPU": 8, "GPU": 1}], None),
    ({"workers": 3, "cpus_per_worker": 1}, [{"CPU": 2}], "3 workers × 1 CPU = 3 CPU, more than the cluster"),
    ({"workers": 1, "cpus_per_worker": 4}, [{"CPU": 2}, {"CPU": 2}], "one worker needs 4 CPU"),
    ({"workers": 1, "gpus_per_worker": 1}, [{"CPU": 8}], "one worker needs 1 CPU and 1 GPU"),
    ({"workers": 2, "gpus_per_worker": 1}, [{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}], None),
    ({"workers": 4, "gpus_per_worker": 1}, [{"CPU": 8, "GPU": 4}], None),
    ({"workers": 5, "gpus_per_worker": 1}, [{"CPU": 8, "GPU": 4}], "5 workers × 1 GPU"),
])
def test_check_fits(kw, nodes, message):
    if message is None:
        check_fits(cfg(**kw), nodes)
    else:
        with pytest.raises(TinyrayError, match=message):
            check_fits(cfg(**kw), nodes)


@pytest.mark.parametrize("kw,free,expected", [
    # the workers hold theirs; another run holds the rest: what would fit beside it now
    ({"workers": 1, "cpus_per_worker": 0.5}, 0.75, "0.75 of the cluster's 4 CPU are free (other runs hold the rest): "
                                                   "--cpus-per-worker 0.25 would fit now"),
    ({"workers": 2, "cpus_per_worker": 1}, 0.5, "--cpus-per-worker 0.75 would fit now"),
    ({"workers": 1, "cpus_per_worker": 0.5}, 0.25, "wait for CPUs to free up, or add a node"),
    ({"workers": 1, "cpus_per_worker": 1}, 2, "the reads are slow, not starved"),
])
def test_a_stalled_run_says_what_is_missing_and_what_would_fit(kw, free, expected):
    from tinyray.resources import stall_message

    line = stall_message(cfg(**kw), "val", 30, free, 4)
    assert line.startswith("no val data arrived within 30 s (--data-timeout): Ray Data's file listing needs 1 free "
                           f"CPU beside this run's {kw['workers']} × {kw['cpus_per_worker']:g} CPU workers")
    assert expected in line and "\n" not in line


def test_an_autoscaler_node_type_counts_as_room():
    check_fits(cfg(gpus_per_worker=1, workers=2), [{"CPU": 2}], max_nodes=[{"CPU": 4, "GPU": 1}] * 2)


@pytest.mark.parametrize("cpus,threads", [(0.5, (1, 1)), (1, (1, 1)), (2, (2, 2)), (8, (8, 2))])
def test_thread_counts_follow_the_cpu_allotment(cpus, threads):
    assert thread_counts(cpus) == threads


def test_trial_drivers_never_take_a_cpu():
    assert trial_resources({"CPU": 8, "tinyray_driver": 4}) == {"CPU": 0, "tinyray_driver": 1}
    assert trial_resources({"CPU": 8}) == {"CPU": 0, "memory": 1}


@pytest.mark.parametrize("kw,nodes,max_nodes,expected", [
    ({"workers": 1, "cpus_per_worker": 1}, [{"CPU": 2}], None, 1),  # 2 × 1 CPU would starve the reads
    ({"workers": 1, "cpus_per_worker": 0.5}, [{"CPU": 2}], None, 2),
    ({"workers": 1, "cpus_per_worker": 1}, [{"CPU": 4}], None, 3),
    ({"workers": 2, "cpus_per_worker": 1}, [{"CPU": 8}], None, 3),
    ({"workers": 1, "cpus_per_worker": 4, "gpus_per_worker": 1}, [{"CPU": 4}], [{"CPU": 8, "GPU": 1}] * 3, 3),
    ({"workers": 1, "cpus_per_worker": 4, "gpus_per_worker": 1}, [{"CPU": 4}], [{"CPU": 48, "GPU": 4}] * 2, 6),
    ({"workers": 1, "cpus_per_worker": 1}, [{"CPU": 64, "tinyray_driver": 3}], None, 3),
    ({"workers": 1, "cpus_per_worker": 4}, [{"CPU": 2}], None, 1),  # never 0: check_fits says why
])
def test_auto_concurrency(kw, nodes, max_nodes, expected):
    trials = SweepConfig(train=kw, grid=SIX).expand("d")
    assert auto_concurrency(trials, nodes, max_nodes) == expected


def test_trials_of_different_shapes_are_sized_by_the_largest():
    trials = SweepConfig(train={"model": "tinycnn"}, grid={"workers": [1, 2], "seed": [0, 1]}).expand("d")
    assert auto_concurrency(trials, [{"CPU": 8}], None) == 3  # 2 workers × 1 CPU + 0.25 per trial


def test_cluster_capacity_counts_what_the_autoscaler_can_reach():
    from tinyray.cluster import load_cluster_config
    from tinyray.resources import auto_concurrency, cluster_capacity
    from tinyray.sweepfile import load_sweep

    config = load_cluster_config(os.path.join(ROOT, "cluster", "aws-gpu.yaml"))
    nodes, extra = cluster_capacity([{"CPU": 0, "tinyray_driver": 32}], config)
    assert nodes == [{"CPU": 0, "tinyray_driver": 32}]
    # spot and on-demand: 8 + 8 g5.xlarge, 2 + 2 g5.12xlarge
    assert extra.count({"CPU": 4, "GPU": 1}) == 16 and extra.count({"CPU": 48, "GPU": 4}) == 4
    seed = load_sweep(os.path.join(ROOT, "sweeps", "seed.yaml")).expand("s3://b/d")
    # 16 g5.xlarge (1 trial each at 3 CPUs + 1 GPU) + 4 g5.12xlarge (4 GPU each) = 32 slots; 6 trials
    assert auto_concurrency(seed, nodes, extra) == 6
    assert cluster_capacity([{"CPU": 2}], None) == ([{"CPU": 2}], [])


def test_the_heads_memory_caps_how_many_trials_run_at_once():
    from tinyray.resources import HEAD_MARK, HEAD_MB_PER_TRIAL, auto_concurrency, head_trial_cap
    from tinyray.sweepfile import SweepConfig

    # a head whose Ray memory holds 3.5 trials' worth, beside 8 GPU nodes the autoscaler may add
    head = {"CPU": 0, "tinyray_driver": 32, HEAD_MARK: 1, "memory": 3.5 * HEAD_MB_PER_TRIAL * 2**20}
    assert head_trial_cap([head, {"CPU": 4, "GPU": 1}]) == 3
    assert head_trial_cap([{"CPU": 4, "memory": 1e12}]) is None  # no live head: no cap from it
    trials = SweepConfig(train={"model": "tinycnn", "gpus_per_worker": 1},
                         grid={"seed": list(range(8))}).expand("d")
    assert auto_concurrency(trials, [head], [{"CPU": 4, "GPU": 1}] * 8) == 8
    assert auto_concurrency(trials, [head], [{"CPU": 4, "GPU": 1}] * 8, head_trial_cap([head])) == 3
    tiny = {**head, "memory": 10 * 2**20}
    assert auto_concurrency(trials, [tiny], [{"CPU": 4, "GPU": 1}] * 8, head_trial_cap([tiny])) == 1


def test_scale_from_zero_sizes_the_sweep_by_what_the_autoscaler_can_add():
    from tinyray.cluster import load_cluster_config
    from tinyray.resources import auto_concurrency, check_fits, cluster_capacity
    from tinyray.errors import TinyrayError
    from tinyray.sweepfile import load_sweep

    head = {"CPU": 0.0, "tinyray_driver": 32.0, "memory": 2e10, "node:__internal_head__": 1.0, "node:10.0.0.5": 1.0}
    trials = load_sweep(os.path.join(ROOT, "sweeps", "seed.yaml")).expand("s3://b/d")
    with pytest.raises(TinyrayError, match="largest node has 0 CPU and 0 GPU"):
        check_fits(trials[0], *cluster_capacity([head], None))  # live nodes only: refused
    nodes, extra = cluster_capacity([head], load_cluster_config(os.path.join(CLUSTER, "aws-gpu.yaml")))
    assert nodes == [{"CPU": 0.0, "tinyray_driver": 32.0, "memory": 2e10}]  # the live head, as it is
    check_fits(trials[0], nodes, extra)
    assert auto_concurrency(trials, nodes, extra) == 6


def test_local_storage_is_refused_on_a_cluster_of_several_nodes(monkeypatch):
    from tinyray.resources import check_shared_storage
    from tinyray.errors import TinyrayError

    check_shared_storage("/tmp/exp", multi_node=False)
    check_shared_storage("s3://b/experiments", multi_node=True)
    with pytest.raises(TinyrayError, match="use --storage s3://BUCKET/experiments"):
        check_shared_storage("/tmp/exp", multi_node=True)
    monkeypatch.setenv("TINYRAY_SHARED_STORAGE", "1")  # EFS / NFS mounted on every node
    check_shared_storage("/tmp/exp", multi_node=True)


def test_the_autoscalers_launch_failure_is_named_in_the_line():
    """The status dict as Ray's v1 monitor writes it (its own dataclasses, asdict)."""
    from dataclasses import asdict

    from ray.autoscaler._private.autoscaler import AutoscalerSummary
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeAvailabilityRecord, NodeAvailabilitySummary, UnavailableNodeInformation)

    from tinyray.resources import launch_failures, resource_wait_line

    record = NodeAvailabilityRecord(
        node_type="gpu_1x_spot", is_available=False, last_checked_timestamp=0.0,
        unavailable_node_information=UnavailableNodeInformation(
            category="UnauthorizedOperation", description="You are not authorized to perform this operation."))
    ok = NodeAvailabilityRecord(node_type="gpu_1x", is_available=True, last_checked_timestamp=0.0,
                                unavailable_node_information=None)
    summary = AutoscalerSummary(active_nodes={}, idle_nodes=None, pending_nodes=[], pending_launches={},
                                failed_nodes=[], node_availability_summary=NodeAvailabilitySummary(
                                    {"gpu_1x_spot": record, "gpu_1x": ok}))
    status = json.loads(json.dumps({"autoscaler_report": asdict(summary)}))
    failures = launch_failures(status)
    assert failures == {"gpu_1x_spot": "You are not authorized to perform this operation."}
    line = resource_wait_line(1201, [{"CPU": 3.0, "GPU": 1.0}], failures, autoscaling=True)
    assert "waited 1201 s for 3 CPU + 1 GPU" in line and "node type gpu_1x_spot: You are not authorized" in line
    assert "\n" not in line
    assert launch_failures(None) == {} and launch_failures({"autoscaler_report": None}) == {}
