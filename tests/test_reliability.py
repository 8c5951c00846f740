"""Faults a shared GPU cluster has, on a real multi-node Ray cluster on this machine: a head
(trial drivers, Ray Data's listing) and three worker nodes, each its own `ray start` process
tree. A preemption notice (`ray drain-node`) and then a node lost without notice, in one sweep."""
import glob
import json
import os
import re
import subprocess
import time

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from conftest import start_ray_head, start_ray_node, stop_process_tree, submit_job

NODES = ("node_a", "node_b", "node_c")
EPOCHS = 16


@pytest.fixture(scope="module")
def multi_node():
    """The head (1 CPU for Ray Data's listing, the trial-driver slots) and three 2-CPU nodes,
    each marked by a custom resource of its name; yields (address, env, gcs, {name: process})."""
    from ray.util import get_node_ip_address

    head, address, env = start_ray_head("--num-cpus=1", '--resources={"tinyray_driver": 2}')
    gcs = f"{get_node_ip_address()}:{head.gcs_port}"
    nodes = {}
    try:
        for name in NODES:  # one at a time: nodes starting together on one machine trip over each other
            nodes[name] = start_ray_node(gcs, "--num-cpus=2", f'--resources={{"{name}": 1}}', env=env)
            deadline = time.time() + 90
            while name not in alive_nodes(address, env):
                assert time.time() < deadline and nodes[name].poll() is None, f"{name} did not join"
                time.sleep(1)
        yield address, env, gcs, nodes
    finally:
        for proc in nodes.values():
            stop_process_tree(proc, graceful=False)
        stop_process_tree(head)


def ray_list(kind, address, env, *filters):
    out = subprocess.run(["ray", "list", kind, "--detail", "--format", "json", "--limit", "10000", "--address",
                          address, *[a for f in filters for a in ("--filter", f)]],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    # none found: "No resource in the cluster", not JSON
    return json.loads(out.stdout) if out.stdout.lstrip().startswith("[") else []


def alive_nodes(address, env) -> dict:
    """{node name (its custom resource) or "head": node id} of the alive nodes."""
    out = {}
    for n in ray_list("nodes", address, env, "state=ALIVE"):
        names = [k for k in n.get("resources_total", {}) if k in NODES]
        out[names[0] if names else "head"] = n["node_id"]
    return out


def worker_node(address, env) -> str | None:
    """The name of the node the (one) live Train worker runs on."""
    ids = {v: k for k, v in alive_nodes(address, env).items()}
    workers = ray_list("actors", address, env, "class_name=RayTrainWorker", "state=ALIVE")
    return ids.get(workers[0]["node_id"]) if len(workers) == 1 else None


def worker_pids(name, address, env) -> list[int]:
    """The Ray actor processes of a node (the Train worker among them): its raylet started them,
    but they are not its descendants (found here: with only its raylet dead, a training worker
    kept training and reporting to the run's controller)."""
    node_id = alive_nodes(address, env)[name]
    return [a["pid"] for a in ray_list("actors", address, env, "state=ALIVE") if a["node_id"] == node_id and a.get("pid")]


def lose_node(proc, pids) -> None:
    """The machine under a node gone at once: its `ray start` process tree and its Ray worker
    processes (``worker_pids``, listed beforehand: this must not wait on anything) SIGKILLed."""
    import psutil

    stop_process_tree(proc, graceful=False)
    for pid in pids:
        try:
            if any(k in " ".join(psutil.Process(pid).cmdline()) for k in ("ray::", "default_worker")):
                psutil.Process(pid).kill()
        except psutil.Error:
            pass


def registered(run_dir) -> dict:
    """state.json of the checkpoint Ray Train last registered (what a restart resumes from): a
    folder Ray has not registered yet is lost with the worker that wrote it."""
    try:
        snapshot = json.load(open(os.path.join(run_dir, "checkpoint_manager_snapshot.json")))
        name = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
        return json.load(open(os.path.join(run_dir, name, "state.json")))
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or being written
        return {}


def wait(what, check, timeout=300):
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(2400)  # its own waits add up to 25 minutes at most
def test_a_preempted_node_and_a_lost_node_cost_no_finished_work(multi_node, staged, s3, tmp_path):
    """Drain the worker's node as a spot interruption does: the run saves a checkpoint at the
    step it is at, and resumes there on another node when the node goes. Then kill the next
    node outright, mid-epoch: the run resumes from its last epoch on the third. The sweep
    completes, no epoch is lost or repeated, the optimizer's step count runs on, and the report
    lists both restarts."""
    address, env, gcs, nodes = multi_node
    uri, manifest = staged
    config = tmp_path / "one.yaml"
    # Epochs enough for both faults: a preemption notice has reached the workers as late as the
    # seventh epoch under load (CI), and the node loss needs epochs still to run after it.
    config.write_text(f"name: faults\ntrain: {{model: model2, epochs: {EPOCHS}, batch_size: 8, lr: 3e-3, "
                      "cpus_per_worker: 1.5}\n"
                      "grid: {optimizer: [adam]}\n")
    # No --working-dir: nodes on one machine share the session folder, and a node that goes
    # deletes the uploaded working dir under the running job (docs/workarounds.md).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = submit_job(address, env, ["python", os.path.join(root, "jobs", "train_all.py"), "--config", str(config),
                                    "--data", uri, "--storage", str(tmp_path)],
                     # these nodes share this machine's disk: a local folder is shared storage here
                     runtime_env={"env_vars": {**s3.public_env, "TINYRAY_SHARED_STORAGE": "1"}}, wait=False,
                     working_dir=False)
    assert out.returncode == 0, out.stderr
    job = re.search(r"raysubmit_\w+", out.stdout + out.stderr).group(0)
    client = JobSubmissionClient(address)
    run_dirs = lambda: glob.glob(str(tmp_path / "faults" / "train-runs" / "*"))  # noqa: E731

    # 1. a preemption notice once an epoch is checkpointed (it reaches the workers some seconds
    # later, through Ray Train's controller): a checkpoint mid-epoch, then the node goes
    run_dir = wait("the run folder", run_dirs)[0]
    wait("the first epoch's checkpoint", lambda: registered(run_dir).get("epochs_done"))
    first = wait("the Train worker", lambda: worker_node(address, env))
    drain = subprocess.run(["ray", "drain-node", "--address", gcs, "--node-id", alive_nodes(address, env)[first],
                            "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot interruption (test)",
                            "--deadline-remaining-seconds", "60"], env=env, capture_output=True, text=True, timeout=60)
    assert drain.returncode == 0, drain.stderr
    pids = worker_pids(first, address, env)
    saved = wait("a checkpoint saved on the notice", lambda: (r := registered(run_dir)).get("step_in_epoch") and r)
    lose_node(nodes[first], pids)  # the reclaim, as soon as the checkpoint is Ray Train's

    # 2. the run resumed elsewhere; once it has checkpointed another epoch, that node is lost outright.
    # The node is read after that epoch: a worker group that Train started and then replaced while
    # resuming once left the test killing a node the run no longer used (seen once in CI).
    wait("an epoch after the notice", lambda: registered(run_dir).get("epochs_done", 0) > saved["epochs_done"])
    second = wait("the worker on another node", lambda: (w := worker_node(address, env)) not in (None, first) and w)
    pids = worker_pids(second, address, env)
    assert pids, "no Train worker process found on the second node"
    lose_node(nodes[second], pids)  # inside the next epoch: listing the node took a second or two

    deadline = time.time() + 600
    while time.time() < deadline and not client.get_job_status(job).is_terminal():
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-3000:]

    result = json.load(open(os.path.join(run_dir, "result.json")))
    epochs = result["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))  # none lost, none repeated
    steps = epochs[0]["optimizer_step"]
    assert [e["optimizer_step"] for e in epochs] == [steps * k for k in range(1, EPOCHS + 1)]
    # every epoch trained on every image, as its train steps counted: the epoch cut by the notice
    # too (the part before the checkpoint is carried in it), and each at one worker's batch
    train = manifest["train"]["count"]
    assert [(e["train_images"], e["global_batch"]) for e in epochs] == [(train, 8)] * EPOCHS, epochs
    preempted_at = saved["step_in_epoch"]
    resumed = [(e["resumed_from_epoch"], e["resumed_at_step"]) for e in epochs]
    # after the first attempt: one at the step the notice saved, then one from an epoch's end
    notice, lost = (saved["epochs_done"], preempted_at), resumed[-1]
    assert set(resumed) - {(0, 0)} == {notice, lost}, resumed
    assert lost[0] > notice[0] and lost[1] == 0, resumed
    md = open(tmp_path / "faults" / "report.md").read()
    restarts = md.split("## Restarts")[1].split("##")[0]
    assert f"at step {preempted_at} of epoch {saved['epochs_done'] + 1}" in restarts, restarts
    assert f"after epoch {resumed[-1][0]}" in restarts, restarts
