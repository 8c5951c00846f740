"""Sweep configs (pure), then Ray Tune sweeps on real clusters."""
import glob
import json
import os
import re
import subprocess
import time

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from conftest import start_ray_head, stop_process_tree, submit_job
from tinyray.errors import TinyrayError
from tinyray.sweep import SweepConfig, auto_concurrency, load_sweep, trial_resources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "sweeps", "*.yaml"))))
def test_every_shipped_sweep_config_loads(path):
    cfg = load_sweep(path)
    assert cfg.trials()


def test_grid_yaml_is_six_models_by_four_optimizers_by_three_lrs():
    cfg = load_sweep(os.path.join(ROOT, "sweeps", "grid.yaml"))
    assert len(cfg.trials()) == 6 * 4 * 3 and cfg.scheduler == "asha"
    assert {t["optimizer"] for t in cfg.trials()} == {"adam", "rmsprop", "sgd", "nadam"}


def test_seed_yaml_is_the_seeds_experiment():
    cfg = load_sweep(os.path.join(ROOT, "sweeps", "seed.yaml"))
    assert cfg.trials() == [{"model": f"model{i}", "optimizer": "adam", "lr": 1e-4} for i in range(1, 7)]


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("models: [model1]\nepochs: 5\nscheduler: fifo\n")
    cfg = load_sweep(str(path), {"epochs": 2, "scheduler": "asha", "name": None})
    assert (cfg.epochs, cfg.scheduler, cfg.name) == (2, "asha", "tinyray-sweep")


@pytest.mark.parametrize("text,message", [
    ("modles: [model1]\n", "unknown sweep field.*modles"),
    ("models: [model9]\n", "unknown model 'model9'"),
    ("optimizers: [adagrad]\n", "unknown optimizer"),
    ("learning_rates: [0]\n", "learning rates must be numbers > 0"),
    ("learning_rates: 0.001\n", "learning_rates must be a non-empty list"),
    ("epochs: 0\n", "epochs must be at least 1"),
    ("scheduler: hyperband\n", "scheduler must be one of fifo, asha"),
    ("scheduler: asha\nepochs: 3\ngrace_period: 5\n", "grace_period must be between 1 and epochs"),
    ("max_concurrent_trials: 0\n", "max_concurrent_trials must be 'auto' or an integer"),
    ("batch_size: -1\n", "batch_size must be at least 1"),
    ("- just\n- a list\n", "must be a mapping"),
    ("models: [model1\n", "not valid YAML"),
])
def test_bad_sweep_configs_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TinyrayError, match=message):
        load_sweep(str(path))


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
    cfg = SweepConfig(models=["model1", "model2", "model3", "model4", "model5", "model6"], **kw)
    assert auto_concurrency(cfg, nodes, max_nodes) == expected


# -------------------------------------------------------------------- real sweeps (slow)


def tiny_sweep(tmp_path, **kw):
    base = dict(models=["tinycnn"], optimizers=["adam", "sgd"], learning_rates=[3e-3, 1e-3, 3e-5],
                epochs=4, batch_size=16, workers=1, storage=str(tmp_path / "exp"), name="tiny")
    base.update(kw)
    return SweepConfig(**base)


def results(exp_uri):
    from tinyray.report import load_experiment

    return load_experiment(exp_uri)[1]


@pytest.mark.ray
@pytest.mark.slow
def test_asha_stops_weak_trials_early(ray_cluster, staged, s3, tmp_path):
    from tinyray.sweep import run_sweep

    uri, _ = staged
    cfg = tiny_sweep(tmp_path, scheduler="asha", grace_period=1, reduction_factor=3)
    exp = run_sweep(cfg, uri, s3.options)
    trials = results(exp)
    assert len(trials) == 6
    total = sum(len(t.history) for t in trials)
    assert total < 6 * 4  # fifo would run every trial for all 4 epochs
    assert any(t.status == "stopped early" for t in trials) and any(t.status == "completed" for t in trials)
    # Tune's TensorBoard files, the dashboards
    events = glob.glob(os.path.join(exp, "*", "events.out.tfevents.*"))
    assert len(events) == 6
    from tinyray.tfk import tf

    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value}
    assert "ray/tune/val_accuracy" in tags


# ---------------------------------------------- the main job on a `ray start --head` cluster


@pytest.fixture(scope="module")
def head_cluster():
    """A real `ray start --head` cluster, started by this test module and stopped by its pid."""
    proc, address, env = start_ray_head("--num-cpus=2", '--resources={"tinyray_driver": 2}')
    yield address, env
    stop_process_tree(proc)


def submit(address, env, *args, wait=True, runtime_env=None):
    return submit_job(address, env, ["python", "jobs/train_all.py", *args], runtime_env=runtime_env, wait=wait)


@pytest.mark.ray
@pytest.mark.slow
def test_smoke_sweep_submitted_as_a_ray_job(head_cluster, tmp_path):
    address, env = head_cluster
    out = submit(address, env, "--storage", str(tmp_path), "--name", "smoke-test")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "report: " in out.stdout
    md = open(tmp_path / "smoke-test" / "report.md").read()
    table = md.split("## The seed's table, reproduced")[1].split("##")[0]
    rows = [l for l in table.splitlines() if l.startswith("| model") and not l.startswith("| model |")]
    assert [r.split("|")[1].strip() for r in rows] == [f"model{i}" for i in range(1, 7)]
    assert "no finished epoch" not in table
    assert os.path.exists(tmp_path / "smoke-test" / "report.html")


@pytest.mark.ray
@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(head_cluster, staged, s3, tmp_path):
    address, env = head_cluster
    uri, _ = staged
    config = tmp_path / "resume.yaml"
    config.write_text("models: [tinycnn]\noptimizers: [adam]\nlearning_rates: [3.0e-3, 1.0e-3, 3.0e-4, 1.0e-4]\n"
                      "epochs: 3\nbatch_size: 16\nmax_concurrent_trials: 1\nname: resume-test\n")
    runtime_env = {"env_vars": s3.env}
    out = submit(address, env, "--config", str(config), "--data", uri, "--storage", str(tmp_path),
                 wait=False, runtime_env=runtime_env)
    assert out.returncode == 0, out.stderr
    job_id = re.search(r"raysubmit_\w+", out.stdout + out.stderr).group(0)
    client = JobSubmissionClient(address)
    exp = tmp_path / "resume-test"

    def finished_trials():
        done = {}
        for f in glob.glob(str(exp / "*" / "result.json")):
            lines = [json.loads(l) for l in open(f) if l.strip()]
            if lines and lines[-1].get("epoch") == 3:
                done[f] = open(f).read()
        return done

    deadline = time.time() + 600
    while time.time() < deadline and not finished_trials():
        status = client.get_job_status(job_id)
        assert status not in (JobStatus.FAILED, JobStatus.SUCCEEDED), client.get_job_logs(job_id)[-3000:]
        time.sleep(1)
    before = finished_trials()
    assert before, "no trial finished in time"
    stop = subprocess.run(["ray", "job", "stop", "--address", address, job_id], env=env, capture_output=True,
                          text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert client.get_job_status(job_id) == JobStatus.STOPPED
    # not all four can have finished: trials run one at a time and the job was stopped after the first
    out = submit(address, env, "--config", str(config), "--data", uri, "--storage", str(tmp_path), "--resume",
                 runtime_env=runtime_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    after = finished_trials()
    assert len(after) == 4
    for f, content in before.items():
        assert after[f] == content  # a finished trial was not rerun: not one line added
    rows = open(exp / "results.csv").read().splitlines()
    assert len(rows) == 5


def test_cluster_capacity_counts_what_the_autoscaler_can_reach():
    from tinyray.sweep import cluster_capacity, load_cluster_config

    config = load_cluster_config(os.path.join(ROOT, "cluster", "aws-gpu.yaml"))
    nodes, extra = cluster_capacity([{"CPU": 0, "tinyray_driver": 32}], config)
    assert nodes == [{"CPU": 0, "tinyray_driver": 32}]
    assert extra.count({"CPU": 4, "GPU": 1}) == 8 and extra.count({"CPU": 48, "GPU": 4}) == 2
    seed = load_sweep(os.path.join(ROOT, "sweeps", "seed.yaml"))
    # 8 g5.xlarge (1 trial each at 3 CPUs + 1 GPU) + 2 g5.12xlarge (4 GPU each) = 16 slots; 6 trials
    assert auto_concurrency(seed, nodes, extra) == 6
    assert cluster_capacity([{"CPU": 2}], None) == ([{"CPU": 2}], [])
