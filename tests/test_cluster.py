"""Cluster deployment files: Ray's own schema, consistency with the repo, and autoscaling proven
on Ray's fake multi-node provider."""
import copy
import os
import re
import subprocess
import time

import pytest
import yaml

from conftest import start_ray_head, stop_process_tree, submit_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "cluster")


def load(*path):
    with open(os.path.join(CLUSTER, *path)) as f:
        return yaml.safe_load(f)


def ray_version():
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    return re.search(r'"ray\[[^\]]+\]==(\d+\.\d+)', text).group(1)


def test_aws_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(load("aws-gpu.yaml"))))


def test_aws_config_keeps_training_off_the_head_and_scales_gpus_from_zero():
    cfg = load("aws-gpu.yaml")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["resources"]["tinyray_driver"] >= 1
    gpu_types = [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert len(gpu_types) >= 2 and all(t["resources"]["GPU"] >= 1 and t["min_workers"] == 0 for t in gpu_types)
    assert {t["resources"]["GPU"] for t in gpu_types} == {1, 4}
    assert cfg["idle_timeout_minutes"] > 0
    # spot GPU types beside the on-demand ones; the head is on-demand; a spot node turns its
    # interruption notice into a Ray drain (cluster/spot-drain.sh, started on those types only)
    spot = {n for n, t in types.items() if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"}
    assert spot == {"gpu_1x_spot", "gpu_4x_spot"} and cfg["head_node_type"] not in spot
    for name, t in types.items():
        starts_watcher = any("cluster/spot-drain.sh" in c for c in t.get("worker_setup_commands", []))
        assert starts_watcher == (name in spot), name
    script = os.path.join(CLUSTER, "spot-drain.sh")
    assert os.access(script, os.X_OK) and "DRAIN_NODE_REASON_PREEMPTION" in open(script).read()
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    # the security group's rules are Ray's own (SSH + intra-cluster: tests/test_aws.py)
    assert "IpPermissions" not in cfg["provider"]["security_group"]
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])
    assert cfg["docker"]["image"].startswith(f"rayproject/ray:{ray_version()}.") and cfg["docker"]["image"].endswith("-gpu")


def test_gpu_nodes_install_tensorflows_cuda_wheels_at_ci_pins():
    """TF loads CUDA/cuDNN/NCCL from pip only through its and-cuda extra; every node installs with
    constraints.txt, whose pins this test environment (CI's) was installed with."""
    from importlib.metadata import version

    pins = dict(line.split("==") for line in open(os.path.join(ROOT, "constraints.txt")).read().splitlines()
                if line and not line.startswith("#"))
    for name in ("ray", "tensorflow", "tf-keras", "pyarrow", "numpy"):
        assert version(name) == pins[name], name
    tf_meta = __import__("importlib.metadata").metadata.metadata("tensorflow").get_all("Requires-Dist")
    cuda = {re.match(r"[A-Za-z0-9_.-]+", r).group(0): re.search(r">=([0-9.]+)", r).group(1)
            for r in tf_meta if 'extra == "and-cuda"' in r}
    assert cuda and all(pins[name] == floor for name, floor in cuda.items())  # what TF was built with
    cfg = load("aws-gpu.yaml")
    for name, t in cfg["available_node_types"].items():
        cmds = " ".join(t.get("worker_setup_commands", []) or cfg["setup_commands"])
        assert "-c /home/ray/tinyray/constraints.txt" in cmds, name
        extras = set(re.search(r"tinyray\[([a-z,]+)\]", cmds).group(1).split(","))
        assert ("gpu" in extras) == (t["resources"].get("GPU", 0) > 0) and "serve" in extras, name
    dockerfile = open(os.path.join(CLUSTER, "kuberay", "Dockerfile")).read()
    assert "-c constraints.txt" in dockerfile and '-e ".[gpu,serve,mlflow]"' in dockerfile
    assert "-c constraints.txt" in open(os.path.join(ROOT, ".ci", "run")).read()


def test_kuberay_manifests_are_consistent_with_the_repo():
    cluster = load("kuberay", "raycluster.yaml")
    job = load("kuberay", "rayjob.yaml")
    assert cluster["kind"] == "RayCluster" and job["kind"] == "RayJob"
    dockerfile = open(os.path.join(CLUSTER, "kuberay", "Dockerfile")).read()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    assert base.startswith(f"rayproject/ray:{ray_version()}.") and base.endswith("-gpu")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"].startswith(ray_version()) and spec["enableInTreeAutoscaling"] is True
        images = {c["image"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
                  for c in g["template"]["spec"]["containers"]}
        assert images == {"REGISTRY/tinyray:0.1.0"}  # the image the Dockerfile builds
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        assert "tinyray_driver" in spec["headGroupSpec"]["rayStartParams"]["resources"]
        gpus = [g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
                for g in spec["workerGroupSpecs"]]
        assert gpus and all(g >= 1 for g in gpus)
        assert all(g["minReplicas"] == 0 for g in spec["workerGroupSpecs"])
    # every file the job's entrypoint names exists in the repo, where the Dockerfile copies it
    paths = re.findall(r"/home/ray/tinyray/(\S+)", job["spec"]["entrypoint"])
    assert paths and all(os.path.exists(os.path.join(ROOT, p)) for p in paths)
    copied = re.findall(r"^COPY \S+ (\S+) ", dockerfile, re.M)
    assert all(p.split("/")[0] in {c.split("/")[0] for c in copied} or p.split("/")[0] in
               " ".join(re.findall(r"^COPY .*", dockerfile, re.M)) for p in paths)
    assert "WORKDIR /home/ray/tinyray" in dockerfile


def test_fake_cluster_config_mirrors_the_aws_node_types():
    from ray.autoscaler._private.util import validate_config

    fake, aws = load("fake-gpu.yaml"), load("aws-gpu.yaml")
    validate_config(fake)
    workers = set(fake["available_node_types"]) - {fake["head_node_type"]}
    assert workers and workers <= set(aws["available_node_types"])
    # the head under the name Ray's fake provider gives its head node: any other name and the
    # autoscaler churns "head" nodes (it finds no entry for the running one)
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE

    assert fake["head_node_type"] == FAKE_HEAD_NODE_TYPE
    assert fake["available_node_types"]["gpu_1x"]["resources"]["GPU"] == 1


def test_stale_cluster_pointer_is_repointed_but_a_live_one_is_kept(tmp_path):
    import socket

    from tinyray.cluster import repoint_stale_cluster_file

    pointer = tmp_path / "ray_current_cluster"
    pointer.write_text("127.0.0.1:9")  # nothing listens on port 9
    assert repoint_stale_cluster_file("127.0.0.1:6379", str(pointer)) is True
    assert pointer.read_text() == "127.0.0.1:6379"
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        pointer.write_text(f"127.0.0.1:{live.getsockname()[1]}")
        assert repoint_stale_cluster_file("127.0.0.1:6379", str(pointer)) is False
    assert repoint_stale_cluster_file("127.0.0.1:6379", str(tmp_path / "missing")) is False


# ------------------------------------------------------ autoscaling on the fake provider (slow)


@pytest.mark.ray
@pytest.mark.slow
def test_a_gpu_sweep_makes_the_autoscaler_add_and_remove_nodes(staged, s3, tmp_path):
    from ray.util.state import list_nodes

    cfg = load("fake-gpu.yaml")
    cfg["provider"]["gcs_address"] = "127.0.0.1:{port}"
    cfg_path = tmp_path / "fake.yaml"
    head, address, env = start_ray_head(
        "--num-cpus=0", '--resources={"tinyray_driver": 4}', f"--autoscaling-config={cfg_path}",
        env={"RAY_FAKE_CLUSTER": "1"}, before_start=lambda port: cfg_path.write_text(
            yaml.safe_dump(cfg).replace("{port}", str(port))))
    try:
        sweep = tmp_path / "gpu.yaml"
        sweep.write_text("name: fake-gpu\ntrain: {model: tinycnn, epochs: 2, batch_size: 16, workers: 1, "
                         "cpus_per_worker: 1, gpus_per_worker: 1}\ngrid: {lr: [3.0e-3, 1.0e-3]}\n")
        # the doctor on fake GPU nodes: the autoscaler starts one for its probe, and the fake GPU is
        # reported as what it is (no device behind it) when TINYRAY_ALLOW_MISSING_GPU is not set
        doc = submit_job(address, env, ["tinyray", "doctor", "--gpus", "1", "--cpus", "1"],
                         runtime_env={"env_vars": s3.public_env}, working_dir=False)
        assert doc.returncode != 0, doc.stdout[-2000:]
        assert "no GPU visible" in doc.stdout and "asked for 1 GPU but TensorFlow sees none" in doc.stdout, doc.stdout
        local = submit_job(address, env, ["python", os.path.join(ROOT, "jobs", "train_all.py"), "--config", str(sweep),
                                          "--data", staged[0], "--storage", str(tmp_path / "exp")],
                           runtime_env={"env_vars": s3.public_env}, working_dir=False)
        assert local.returncode != 0 and "is a local folder, and this cluster has (or can add) other nodes" in local.stdout + local.stderr
        uri, _ = staged
        runtime_env = {"env_vars": {**s3.public_env, "TINYRAY_ALLOW_MISSING_GPU": "1"}}
        # The mission's command, no --cluster-config: a head with no GPU and no worker node, which
        # the job sizes from the running autoscaler's own config. No --working-dir here: fake nodes
        # share one Ray session folder, and a fake node that the autoscaler removes deletes the
        # uploaded working dir under the running job. The repo is installed (pip install -e).
        out = submit_job(address, env, ["python", os.path.join(ROOT, "jobs", "train_all.py"),
                                        "--config", str(sweep), "--data", uri, "--storage", "s3://tinyray/fake-exp"],
                         runtime_env=runtime_env, working_dir=False)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "the autoscaler can add up to 3 × gpu_1x (2 CPU, 1 GPU)" in out.stdout
        assert "2 trials, 2 at a time" in out.stdout  # auto concurrency counted the nodes it could add
        from tinyray.data.storage import read_bytes

        rows = read_bytes("s3://tinyray/fake-exp/fake-gpu/results.csv", s3.options).decode().splitlines()
        assert len(rows) == 3 and all(",completed," in r for r in rows[1:])
        nodes = list_nodes(address=address, detail=True)
        gpu_nodes = [n for n in nodes if n.resources_total.get("GPU")]
        assert gpu_nodes, "the autoscaler started no GPU node"
        # and nothing else: every node it ever started (dead ones included) was one the work asked for
        assert all(n.is_head_node or n.resources_total.get("GPU") for n in nodes), [
            (n.node_id[-5:], n.state, n.resources_total) for n in nodes]
        # idle GPU nodes are removed (idle_timeout_minutes: 0.1)
        deadline = time.time() + 120
        while time.time() < deadline:
            alive = [n for n in list_nodes(address=address, detail=True)
                     if n.state == "ALIVE" and n.resources_total.get("GPU")]
            if not alive:
                break
            time.sleep(3)
        assert not alive, "idle GPU nodes were not removed"
    finally:
        stop_process_tree(head)


# ---------------------------------------------- the running autoscaler's config, bounded waits


def test_the_head_monitors_config_file_is_found_by_its_clusters_gcs_port(tmp_path):
    from tinyray.cluster import monitor_config_path

    def process(pid, *args):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes("\0".join(args).encode() + b"\0")

    script = "/venv/lib/python3.11/site-packages/ray/autoscaler/_private/monitor.py"
    process(10, "python", script, "--gcs-address=10.0.0.5:6379", "--autoscaling-config=/home/ray/a.yaml")
    process(11, "python", script, "--gcs-address=127.0.0.1:41000", "--autoscaling-config=/tmp/b.yaml")
    process(12, "python", script, "--gcs-address=127.0.0.1:42000")  # a cluster with no autoscaler
    process(13, "python", "other.py", "--gcs-address=127.0.0.1:43000", "--autoscaling-config=/tmp/c.yaml")
    assert monitor_config_path("10.0.0.5:6379", str(tmp_path)) == "/home/ray/a.yaml"
    assert monitor_config_path("127.0.0.1:41000", str(tmp_path)) == "/tmp/b.yaml"
    assert monitor_config_path("127.0.0.1:42000", str(tmp_path)) is None
    assert monitor_config_path("127.0.0.1:43000", str(tmp_path)) is None


def test_the_resource_watch_ends_only_a_wait_longer_than_its_bound():
    from tinyray.cluster import ResourceWatch

    now = [0.0]
    watch = ResourceWatch(timeout=60, clock=lambda: now[0])
    pending = {"pg1": {"state": "PENDING", "bundles": {0: {"CPU": 1.0, "GPU": 1.0}}}}
    created = {"pg1": {"state": "CREATED", "bundles": {0: {"CPU": 1.0, "GPU": 1.0}}}}
    assert not watch.poll(pending, status={})
    now[0] = 50
    assert not watch.poll(created, status={})  # placed: the clock starts again if it pends anew
    now[0] = 100
    assert not watch.poll(pending, status={})
    now[0] = 159
    assert not watch.poll(pending, status={})
    now[0] = 161
    assert watch.poll(pending, status={})
    assert "waited 61 s for 1 CPU + 1 GPU" in watch.reason


def test_the_resource_watch_follows_a_run_through_the_groups_train_makes_anew():
    """Train removes a placement group it could not place within 60 s and asks again with a new
    one: the wait is the controller's, across its groups, until one of them is placed."""
    from tinyray.cluster import ResourceWatch

    now = [0.0]
    watch = ResourceWatch(timeout=1200, clock=lambda: now[0])
    ctrl, other = "a1" * 14, "b2" * 14  # two runs' controllers (actor ids)

    def group(state, creator, n):
        return {f"pg{n}": {"state": state, "creator_actor_id": creator, "bundles": {0: {"CPU": 1.0}}}}

    placed_elsewhere = group("CREATED", other, 0)
    for n in range(20):  # a new group each minute, each pending 58 s, a second apart
        now[0] = n * 60.0
        assert not watch.poll({**group("PENDING", ctrl, n + 1), **placed_elsewhere}, status={})
        now[0] = n * 60.0 + 58
        assert not watch.poll({**group("PENDING", ctrl, n + 1), **placed_elsewhere}, status={})
        now[0] = n * 60.0 + 59
        assert not watch.poll(placed_elsewhere, status={})  # between two groups: none pending
    now[0] = 1201.0
    assert watch.poll(group("PENDING", ctrl, 21), status={})
    assert "waited 1201 s for 1 CPU" in watch.reason and watch.late_group["creator_actor_id"] == ctrl
    # one of its groups placed stops the clock; so does a long absence (the run moved on)
    again = ResourceWatch(timeout=100, clock=lambda: now[0])
    now[0] = 0.0
    again.poll(group("PENDING", ctrl, 1), status={})
    now[0] = 90.0
    again.poll(group("CREATED", ctrl, 1), status={})
    now[0] = 150.0
    assert not again.poll(group("PENDING", ctrl, 2), status={})
    now[0] = 200.0
    again.poll({}, status={})
    now[0] = 240.0  # 40 s without a pending group: forgotten
    assert not again.poll(group("PENDING", ctrl, 3), status={})
    now[0] = 339.0
    assert not again.poll(group("PENDING", ctrl, 3), status={})
    now[0] = 341.0
    assert again.poll(group("PENDING", ctrl, 3), status={})


# What EKS lets pods allocate on each instance type: vCPU less kubelet's CPU reserve (6 % of the
# first core, 1 % of the next, 0.5 % of the next two, 0.25 % beyond) and memory less kube-reserved
# (255 MiB + 11 MiB per pod at the type's max pods) and the 100 MiB eviction threshold.
INSTANCES = {"m6i.2xlarge": (8, 32, 58), "g5.xlarge": (4, 16, 58), "g5.12xlarge": (48, 192, 737)}


def allocatable(instance):
    vcpu, gib, pods = INSTANCES[instance]
    reserve = 0.06 + 0.01 + 0.005 * 2 + 0.0025 * max(0, vcpu - 4)
    return vcpu - reserve, gib - (255 + 11 * pods + 100) / 1024


def quantity(text):
    units = {"Gi": 1.0, "Mi": 1 / 1024}
    for unit, scale in units.items():
        if str(text).endswith(unit):
            return float(str(text)[:-len(unit)]) * scale
    return float(text)


def test_kuberay_pods_fit_their_instance_types_use_token_auth_and_only_their_own_pods_reach_them():
    policy = load("kuberay", "networkpolicy.yaml")
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    sources = policy["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": selected}} in sources  # its own pods
    assert any("namespaceSelector" in s and s["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
               for s in sources) and len(sources) == 2
    job = load("kuberay", "rayjob.yaml")
    assert job["spec"]["submissionMode"] == "HTTPMode"  # the operator submits: the policy admits it
    assert "--cluster-config" not in job["spec"]["entrypoint"] and "--storage s3://" in job["spec"]["entrypoint"]
    for spec in (load("kuberay", "raycluster.yaml")["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["authOptions"] == {"mode": "token"}
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            pod = group["template"]
            assert pod["metadata"]["labels"].items() >= selected.items()
            instance = pod["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"]
            cpu, mem = allocatable(instance)
            res = pod["spec"]["containers"][0]["resources"]
            assert res["requests"]["cpu"] == res["limits"]["cpu"] and res["requests"]["memory"] == res["limits"]["memory"]
            assert quantity(res["requests"]["cpu"]) <= cpu and quantity(res["requests"]["memory"]) <= mem, instance


def test_the_shipped_heads_start_workers_as_fast_as_a_trial_needs():
    """A head with --num-cpus=0 would start one Python worker at a time (Ray's default: the CPU
    count) and print start-up warnings to every driver: the shipped heads raise it."""
    from conftest import shipped_head_env
    from tinyray.resources import STARTUP_CONCURRENCY

    assert shipped_head_env()["RAY_worker_maximum_startup_concurrency"] == str(STARTUP_CONCURRENCY)
    kuberay = yaml.safe_load(open(os.path.join(ROOT, "cluster", "kuberay", "raycluster.yaml")))
    head = kuberay["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e["value"] for e in head["env"]}["RAY_worker_maximum_startup_concurrency"] == str(
        STARTUP_CONCURRENCY)
