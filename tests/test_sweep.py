"""Ray Tune sweeps (tinyray.sweep): the searcher and scheduler Tune is given, then real sweeps on
the session cluster and on `ray start` clusters. The file format is test_sweepfile.py's."""
import glob
import json
import os
import re
import subprocess
import threading
import time

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from conftest import hold_cpus, start_ray_head, stop_process_tree, submit_job
from test_sweepfile import SEARCH
from tinyray.errors import TinyrayError
from tinyray.config import TrainConfig
from tinyray.sweepfile import SchedulerConfig, SweepConfig, load_sweep, parse_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_embedded_default_is_the_six_seed_models():
    from tinyray.main_job import resolve_sweep

    cfg, embedded_default = resolve_sweep(None, {})
    assert embedded_default and [t.model for t in cfg.expand("d")] == [f"model{i}" for i in range(1, 7)]


def test_beyond_yaml_lists_its_two_recipes_as_trials():
    from tinyray.sweep import search_plan

    cfg = load_sweep(os.path.join(ROOT, "sweeps", "beyond.yaml"))
    resnet, model5 = cfg.expand("s3://b/d")
    assert (resnet.model, resnet.optimizer, resnet.nesterov, resnet.lr, resnet.weight_decay, resnet.schedule,
            resnet.warmup_epochs, resnet.augment, resnet.cutmix, resnet.label_smoothing, resnet.weights) == (
        "resnet18", "sgd", True, 0.1, 5e-4, "cosine", 5, "crop_flip", 1.0, 0.1, "none")
    assert (model5.model, model5.optimizer, model5.nesterov, model5.cutmix) == ("model5", "adam", False, 0.0)
    assert model5.weights.endswith("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert cfg.axes[:3] == ["model", "optimizer", "nesterov"] and cfg.planned_trials == 2
    # Tune runs exactly these two, each axis a flat parameter
    space, searcher, n = search_plan(cfg, 1)
    assert n == 2 and set(space) == set(cfg.axes) and searcher._points_to_evaluate == cfg.combinations()


@pytest.mark.parametrize("text", [
    "train: {model: tinycnn, epochs: 1}\ngrid: [{lr: 0.1}, {lr: 0.2}]\n",
    "train: {model: tinycnn, epochs: 1}\ngrid: {lr: [0.1, 0.2]}\n",
    "search: random\nnum_samples: 3\ntrain: {model: tinycnn, epochs: 1}\nspace: {lr: {uniform: [0.1, 0.2]}}\n",
    "search: optuna\nnum_samples: 3\ntrain: {model: tinycnn, epochs: 1}\nspace: {lr: {uniform: [0.1, 0.2]}}\n",
])
def test_every_shape_of_sweep_holds_its_concurrency_in_the_searcher(text):
    """Tune ignores max_concurrent_trials for a searcher handed to it ready-made (a listed grid
    and a random search are BasicVariantGenerators), so the limit must be the searcher's own."""
    from tinyray.sweep import search_plan

    _, searcher, _ = search_plan(parse_sweep(text), 3)
    assert searcher.max_concurrent == 3


@pytest.mark.ray
@pytest.mark.slow  # 10 s of Ray; the fast lane keeps the searcher check above
def test_a_listed_grid_runs_no_more_trials_at_once_than_the_sweep_allows(ray_cluster, tmp_path):
    from ray import tune

    from tinyray.sweep import search_plan

    space, searcher, n = search_plan(parse_sweep("train: {model: tinycnn, epochs: 1}\ngrid: [{lr: 0.1}, {lr: 0.2}, {lr: 0.3}]\n"), 1)
    marks = tmp_path / "marks"
    marks.mkdir()

    def trial(config):  # each trial notes the window it ran in
        start = time.time()
        time.sleep(1.5)
        (marks / str(config["lr"])).write_text(f"{start} {time.time()}")

    tune.Tuner(tune.with_resources(trial, {"CPU": 0.25}), param_space=space,
               tune_config=tune.TuneConfig(search_alg=searcher, num_samples=n),
               run_config=tune.RunConfig(storage_path=str(tmp_path / "exp"), verbose=0)).fit()
    windows = sorted(tuple(map(float, f.read_text().split())) for f in marks.iterdir())
    assert len(windows) == 3
    assert all(end <= next_start for (_, end), (next_start, _) in zip(windows, windows[1:])), windows




def test_a_search_checks_every_corner_of_its_space_before_tune_starts():
    cfg = parse_sweep(SEARCH)
    assert cfg.planned_trials == 6 and cfg.axes == ["optimizer", "lr"]
    assert cfg.combinations() == [{"optimizer": o, "lr": lr} for o in ("adam", "sgd") for lr in (1e-5, 1e-3)]
    # a corner that no trial may be: nesterov is refused for adam, found before any trial runs
    with pytest.raises(TinyrayError, match="nesterov is a momentum option of optimizer sgd, not adam"):
        parse_sweep(SEARCH.replace("epochs: 3}", "epochs: 3, nesterov: true}"))
    # ints are drawn as ints, bounds included
    from tinyray.sweep import search_plan

    space, _, n = search_plan(parse_sweep(SEARCH.replace("  lr:", "  warmup_epochs: {uniform: [0, 2]}\n  lr:")), 1)
    assert n == 6 and {space["warmup_epochs"].sample() for _ in range(200)} == {0, 1, 2}


def test_the_report_describes_a_search_and_scatters_a_continuous_lr():
    from tinyray.folders import Trial
    from tinyray.report import continuous_lr, search_summary, variants_section

    sweep = parse_sweep(SEARCH).to_dict()
    assert search_summary(sweep) == "optuna search of 6 draws: optimizer (choice adam, sgd), lr (loguniform 1e-05, 0.001)"
    assert continuous_lr(sweep) and not continuous_lr(parse_sweep(SEARCH.replace(
        "{loguniform: [1.0e-5, 1.0e-3]}", "{choice: [1.0e-5, 1.0e-3]}")).to_dict())

    def trial(name, optimizer, lr, acc):
        cfg = TrainConfig(model="tinycnn", data="d", optimizer=optimizer, lr=lr).to_dict()
        return Trial(name, {"optimizer": optimizer, "lr": lr}, cfg, [{"epoch": 1, "val_accuracy": acc}], None,
                     "completed")

    images = {}
    section = variants_section([trial("a", "adam", 2.1e-4, 0.5), trial("b", "sgd", 7.3e-5, 0.25)], True, images)
    assert list(images) == ["lr_scatter_tinycnn.png"] and images["lr_scatter_tinycnn.png"][:4] == b"\x89PNG"
    assert "against lr" in section.title


# -------------------------------------------------------------------- real sweeps (slow)


def dashboard_hparams(logdir) -> set:
    """`tensorboard --logdir LOGDIR` (the README's command) started as this test's child, on its
    own port; the hyperparameter names its HParams plugin lists. Bounded: 120 s to come up."""
    import urllib.request

    from conftest import free_port

    port = free_port()
    proc = subprocess.Popen(["tensorboard", "--logdir", str(logdir), "--port", str(port), "--host", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=5).read()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "tensorboard did not come up"
                time.sleep(1)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/data/plugin/hparams/experiment",
                                         data=b'{"experimentName": ""}', method="POST",
                                         headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"})
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        return {h["name"] for h in answer["hparamInfos"]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def results(exp_uri):
    from tinyray.folders import load_experiment

    return load_experiment(exp_uri)[1]


@pytest.mark.parametrize("per_model,actions", [
    # per model: model2's best variant is ranked against model2's only, and goes on
    (True, ["CONTINUE", "STOP", "CONTINUE", "STOP"]),
    # one ASHA over both (opt-in): model2's 22 % variants are cut by model5's 90 % at the first rung
    (False, ["CONTINUE", "STOP", "STOP", "STOP"]),
])
def test_asha_ranks_a_trial_only_against_its_own_models_variants(per_model, actions):
    from ray.tune.experiment import Trial

    from tinyray.sweep import make_scheduler

    scheduler = make_scheduler(SchedulerConfig("asha", grace_period=1, reduction_factor=2, per_model=per_model), 4)
    assert scheduler.set_search_properties("val_accuracy", "max")
    trials = [Trial("probe", config={"model": m, "lr": lr}, stub=True)
              for m, lr in (("model5", 1e-3), ("model5", 1e-4), ("model2", 1e-3), ("model2", 1e-4))]
    for t in trials:
        scheduler.on_trial_add(None, t)
    got = [scheduler.on_trial_result(None, t, {"training_iteration": 1, "val_accuracy": acc})
           for t, acc in zip(trials, (0.90, 0.80, 0.22, 0.10))]
    assert got == actions


@pytest.mark.ray
@pytest.mark.slow
def test_asha_stops_weak_trials_early(ray_cluster, staged, s3, tmp_path):
    from tinyray.sweep import run_sweep

    uri, _ = staged
    cfg = SweepConfig(name="tiny", storage=str(tmp_path / "exp"),
                      train={"model": "tinycnn", "epochs": 4, "batch_size": 16},
                      grid={"optimizer": ["adam", "sgd"], "lr": [3e-3, 3e-5]},
                      scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3})
    exp = run_sweep(cfg, uri, s3.options)
    trials = results(exp)
    assert len(trials) == 4
    total = sum(len(t.history) for t in trials)
    assert total < 4 * 4  # fifo would run every trial for all 4 epochs
    assert any(t.status == "stopped early" for t in trials) and any(t.status == "completed" for t in trials)
    # Tune sees the grid axes only, flat: its table's columns and TensorBoard's hyperparameters
    params = [json.load(open(p)) for p in glob.glob(os.path.join(exp, "*", "params.json"))]
    assert sorted((p["optimizer"], p["lr"]) for p in params) == sorted(
        (o, lr) for o in ("adam", "sgd") for lr in (3e-3, 3e-5))
    assert all(set(p) == {"optimizer", "lr"} for p in params)
    # Tune's TensorBoard files, the dashboards, with the axes as hyperparameters
    events = glob.glob(os.path.join(exp, "*", "events.out.tfevents.*"))
    assert len(events) == 4
    from tinyray.tfk import tf

    values = [v for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value]
    assert "ray/tune/val_accuracy" in {v.tag for v in values}
    # the dashboards as the README starts them: the HParams tab lists the axes
    assert dashboard_hparams(exp) == {"optimizer", "lr"}
    # a trial that ran all its epochs is a whole `tinyray train` run folder; one that ASHA
    # stopped (its actor is ended by Tune) keeps the checkpoints of the epochs it ran
    for t in trials:
        run_dir = os.path.join(exp, "train-runs", TrainConfig.from_dict(t.config).run_name)
        assert os.path.exists(os.path.join(run_dir, "checkpoint_manager_snapshot.json"))
        if t.status == "completed":
            result = json.load(open(os.path.join(run_dir, "result.json")))
            assert result["config"] == t.config and len(result["epochs"]) == len(t.history) == 4
            assert os.path.exists(os.path.join(run_dir, "model", "model.keras"))


@pytest.mark.ray
@pytest.mark.slow
def test_an_optuna_search_draws_its_trials_from_the_space_and_the_report_scatters_them(
        ray_cluster, staged, s3, tmp_path):
    from tinyray.report import write_report
    from tinyray.sweep import run_sweep

    uri, _ = staged
    cfg = parse_sweep(SEARCH.replace("epochs: 3}", "epochs: 1, batch_size: 16}").replace("num_samples: 6", "num_samples: 3")
                      .replace("name: s", f"name: search\nstorage: {tmp_path / 'exp'}"))
    exp = run_sweep(cfg, uri, s3.options)
    trials = results(exp)
    assert len(trials) == 3 and all(t.status == "completed" for t in trials), [(t.status, t.error) for t in trials]
    params = [json.load(open(p)) for p in glob.glob(os.path.join(exp, "*", "params.json"))]
    assert all(set(p) == {"optimizer", "lr"} and p["optimizer"] in ("adam", "sgd") and 1e-5 <= p["lr"] <= 1e-3
               for p in params), params
    assert len({p["lr"] for p in params}) == 3  # drawn from the range, not picked from a list
    # each trial is a `tinyray train` run of base + its draw
    for t in trials:
        result = json.load(open(os.path.join(exp, "train-runs", TrainConfig.from_dict(t.config).run_name, "result.json")))
        assert (result["config"]["optimizer"], result["config"]["lr"]) == (t.optimizer, t.lr)
    write_report(exp, s3.options)
    md = open(os.path.join(exp, "report.md")).read()
    assert "optuna search of 3 draws: optimizer (choice adam, sgd), lr (loguniform 1e-05, 0.001)" in md
    assert "lr_scatter_tinycnn.png" in md and os.path.exists(os.path.join(exp, "lr_scatter_tinycnn.png"))


# ---------------------------------------------- the main job on a `ray start --head` cluster


# The head node's own credentials, as an instance profile or the node's environment gives them
# on a real cluster. They must appear in no log, file or API answer (moto accepts any keys).
# Made at run time: the tests' own source is uploaded with the working dir and must not match.
SENTINEL = "tinyray-sentinel-" + __import__("uuid").uuid4().hex


@pytest.fixture(scope="module")
def head_cluster():
    """A real `ray start --head` cluster, started by this test module and stopped by its pid,
    with its session folder in a temp dir of its own (short: Ray's socket paths are bounded)."""
    import shutil
    import tempfile

    temp = tempfile.mkdtemp(prefix="/tmp/trh")
    proc, address, env = start_ray_head("--num-cpus=2", '--resources={"tinyray_driver": 2}', f"--temp-dir={temp}",
                                        env={"AWS_ACCESS_KEY_ID": "sentinel-id", "AWS_SECRET_ACCESS_KEY": SENTINEL})
    yield address, env, temp, proc.gcs_port
    stop_process_tree(proc)
    shutil.rmtree(temp, ignore_errors=True)


def submit(address, env, *args, wait=True, runtime_env=None):
    return submit_job(address, env, ["python", "jobs/train_all.py", *args], runtime_env=runtime_env, wait=wait)


@pytest.mark.ray
@pytest.mark.slow
def test_the_embedded_default_runs_from_a_plain_install_as_the_readme_runs_it(tmp_path):
    """`pip install .` (not editable), then the job script from another folder, as the README's
    first command runs it: tinyray starts its own local Ray (Ray's default start-up concurrency,
    the CPU count), the embedded default finds its sweep file inside the package and runs the
    smoke sweep, and the console holds tinyray's lines only."""
    import shutil
    import sys

    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              ROOT], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere.mkdir()
    shutil.copy(os.path.join(ROOT, "jobs", "train_all.py"), elsewhere)
    # a user's shell: no cluster address, no start-up concurrency, no auth mode (Ray then starts
    # its local cluster with token auth and says so), no TF log level (importing tinyray set one)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_worker_maximum_startup_concurrency", "TF_CPP_MIN_LOG_LEVEL",
                        "RAY_AUTH_MODE")}
    env["PYTHONPATH"] = str(target)
    where = subprocess.run([sys.executable, "-c", "import tinyray; print(tinyray.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(target)), where  # the plain install, not this checkout
    # Two of the six seed models, one epoch: the suite's time (all six took 297 s here). The
    # embedded default's six models are checked by test_the_embedded_default_is_the_six_seed_models.
    out = subprocess.run([sys.executable, "train_all.py", "--storage", str(tmp_path), "--name", "smoke-test",
                          "--epochs", "1", "--batch-size", "32", "--models", "model1,model2"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "no --data: embedded default" in out.stdout and "sweep smoke-test: 2 trials" in out.stdout
    assert "report: " in out.stdout
    for noise in ("RayTrainWorker", "TrainingReport", "I0000", "oneDNN", "Traceback", "(raylet)",
                  "maximum expected startup concurrency", "INFO", "WARNING"):
        assert noise not in out.stdout + out.stderr, noise  # quiet by default
    # the main job's console, counted: its own lines, each of a kind it prints, nothing of Ray's
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    kinds = (r"no --data: embedded default\. .*", r"staged 240 train .*", r"sweep smoke-test: 2 trials, .*",
             r"\s*trial\s+status\s+model\s+epochs\s+val top-1", r"[- ]+", r"\w+\s+(planned|pending|running|done)\s+model[12]\s+[01]/1\s+.*",
             r"model=model[12]  epoch 1/1  loss .* img/s", r"report: .*", r"dashboards: tensorboard --logdir .*")
    strays = [line for line in lines if not any(re.fullmatch(k, line) for k in kinds)]
    assert not strays and len(lines) <= 24, "\n".join(lines)
    md = open(tmp_path / "smoke-test" / "report.md").read()
    table = md.split("## The seed's table, reproduced")[1].split("##")[0]
    rows = [l for l in table.splitlines() if l.startswith("| model") and not l.startswith("| model |")]
    assert [r.split("|")[1].strip() for r in rows] == ["model1", "model2"]
    assert "no finished epoch" not in table
    assert "embedded default" in md and f"`python jobs/train_all.py --config {tmp_path}/smoke-test/sweep.yaml --name smoke-test-rerun`" in md
    assert "2 completed" in md and "1 epochs, batch 32 per replica" in md
    assert os.path.exists(tmp_path / "smoke-test" / "report.html")


def val_split(uri, manifest, opts):
    """The staged val images (÷255, as training feeds them) and labels, read straight from the store."""
    import numpy as np
    import pyarrow.parquet as pq

    from tinyray.data import storage
    from tinyray.data.pipeline import decode_jpegs

    fs, root = storage.filesystem(uri, opts)
    tables = [pq.read_table(f"{root}/{s['path']}", filesystem=fs) for s in manifest["val"]["shards"]]
    images = [img for t in tables for img in t.column("image").to_pylist()]
    labels = np.array([label for t in tables for label in t.column("label").to_pylist()])
    return decode_jpegs(images).astype("float32") / 255.0, labels


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_sweep_resumes_and_every_trial_leaves_a_model_that_scores_what_it_reports(
        head_cluster, staged, s3, sample_release, tmp_path):
    """The main job runs a grid over two non-model fields. Its driver SIGKILLed after its first
    trial and the job resubmitted with --resume, it finishes without rerunning that trial. Every trial is then a
    `tinyray train` run folder: its own config in result.json, and a model that plain tf_keras
    loads and that scores on the val images what result.json reports."""
    import numpy as np

    from tinyray.tfk import keras

    address, env, *_ = head_cluster
    uri, manifest = staged
    config = tmp_path / "axes.yaml"
    # one trial at a time, so that the second has not finished when the driver is killed
    config.write_text("name: axes\nmax_concurrent_trials: 1\n"
                      "train: {model: tinycnn, epochs: 3, lr: 3e-3, cpus_per_worker: 0.5}\n"
                      "grid: {optimizer: [adam, sgd], batch_size: [8]}\n")
    runtime_env = {"env_vars": s3.public_env}
    args = ("--config", str(config), "--data", uri, "--storage", str(tmp_path))
    out = submit(address, env, *args, wait=False, runtime_env=runtime_env)
    assert out.returncode == 0, out.stderr
    job_id = re.search(r"raysubmit_\w+", out.stdout + out.stderr).group(0)
    client = JobSubmissionClient(address)
    exp = tmp_path / "axes"

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
    # what the finished trial's run folder holds: a rerun that trains nothing must not rewrite it
    written = {f: open(f, "rb").read() for name in ("result.json", "eval.json", "model/model.keras")
               for f in glob.glob(str(exp / "train-runs" / "*" / name))}
    # SIGKILL the sweep's driver (the job's entrypoint process), as a crash or an OOM kill would
    import signal

    driver = client.get_job_info(job_id).driver_info
    assert driver and driver.pid, client.get_job_info(job_id)
    os.kill(int(driver.pid), signal.SIGKILL)
    deadline = time.time() + 120
    while not client.get_job_status(job_id).is_terminal():
        assert time.time() < deadline, "the killed driver's job did not end"
        time.sleep(1)
    assert client.get_job_status(job_id) == JobStatus.FAILED
    # the second cannot have finished: trials run one at a time and the driver was killed after the first
    # asked for two at a time on resume: Tune restores its searcher as it was, so it says it keeps one
    out = submit(address, env, *args, "--resume", "--max-concurrent-trials", "2", runtime_env=runtime_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resuming at 1 trials at a time, as the sweep started" in out.stdout, out.stdout[-3000:]
    assert "2 trials, 1 at a time" in out.stdout and json.load(open(exp / "sweep.json"))["cluster"][
        "max_concurrent_trials"] == 1
    after = finished_trials()
    assert len(after) == 2
    assert len(re.findall(r"^\d+\s+done\s+adam\s+8\s+3/3", out.stdout, re.M)) == 1, out.stdout[-3000:]  # the plan
    assert written and {f: open(f, "rb").read() for f in written} == written  # not one byte rewritten
    # a --resume of another sweep into this folder is one line naming the field, before anything runs
    from tinyray.main_job import resolve_sweep
    from tinyray.sweep import check_resume

    same, _ = resolve_sweep(str(config), {"data": uri, "storage": str(tmp_path), "max_concurrent_trials": 2})
    assert check_resume(same, uri, s3.options)["resumes"][-1]["changed"] == {"max_concurrent_trials": [1, 2]}
    other, _ = resolve_sweep(str(config), {"data": uri, "storage": str(tmp_path), "lr": 1e-3})
    with pytest.raises(TinyrayError, match=r"^--resume would change the sweep in .*axes \(train.lr: was 0.003, "
                                           r"now 0.001\): resume it as it was, or give the new sweep its own --name$"):
        check_resume(other, uri, s3.options)
    with pytest.raises(TinyrayError, match=r"\(data: was \"s3://tinyray/staged-sample\", now \"s3://tinyray/else\"\)"):
        check_resume(same, "s3://tinyray/else", s3.options)
    for f, content in before.items():
        # A finished trial is not trained again. If the job was stopped before Tune recorded its
        # end, Tune starts it once more: its run resumes from the checkpoint that holds every
        # epoch and only reports the last epoch again, from that checkpoint.
        assert after[f].startswith(content)
        again = [json.loads(line) for line in after[f][len(content):].splitlines()]
        assert all(a["epoch"] == 3 and a["resumed_from_epoch"] == 3 for a in again), again

    runs = sorted(glob.glob(str(exp / "train-runs" / "*" / "result.json")))
    assert len(runs) == 2
    x, y = val_split(uri, manifest, s3.options)
    seen = set()
    for path in runs:
        result = json.load(open(path))
        seen.add((result["config"]["optimizer"], result["config"]["batch_size"]))
        assert {k: result["config"][k] for k in ("model", "epochs", "lr")} == {"model": "tinycnn", "epochs": 3,
                                                                               "lr": 3e-3}
        model = keras.models.load_model(os.path.join(os.path.dirname(path), "model", "model.keras"))
        accuracy = float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))
        assert abs(accuracy - result["epochs"][-1]["val_accuracy"]) <= 0.02, (path, accuracy)
    assert seen == {("adam", 8), ("sgd", 8)}
    rows = list(__import__("csv").DictReader(open(exp / "results.csv")))
    assert sorted((r["optimizer"], r["batch_size"]) for r in rows) == sorted((o, str(b)) for o, b in seen)
    md = open(exp / "report.md").read()
    assert f"--config {exp}/sweep.yaml --data {uri} --name axes-rerun" in md
    effective = load_sweep(str(config), {"data": uri, "storage": str(tmp_path)})
    assert load_sweep(str(exp / "sweep.yaml")) == effective

    # the winner handed over: exported, then `tinyray predict --json` on the val images agrees
    # with its eval.json (within one image: the export's ÷255 is a multiply)
    export = tmp_path / "winner"
    done = subprocess.run(["tinyray", "export", str(exp), "--to", str(export)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    evaluation = json.load(open(export / "eval.json"))
    assert evaluation["top1"] == max(json.load(open(p))["epochs"][-1]["val_accuracy"] for p in runs)
    truth = dict(line.split("\t")[:2] for line in open(os.path.join(sample_release, "val", "val_annotations.txt")))
    images = sorted(glob.glob(os.path.join(sample_release, "val", "images", "*.JPEG")))
    out = subprocess.run(["tinyray", "predict", str(export), *images, "--json"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    right = sum(r["top"][0]["wnid"] == truth[os.path.basename(r["file"])] for r in json.loads(out.stdout))
    assert abs(right - round(evaluation["top1"] * evaluation["count"])) <= 1 and evaluation["count"] == len(images)


@pytest.mark.ray
@pytest.mark.slow
def test_no_credential_reaches_a_log_a_file_or_the_state_api(head_cluster, staged, s3, tmp_path):
    """A `tinyray train` run and a sweep, S3 data and S3 storage, on a cluster whose nodes hold
    credentials: the secret is in no console output, no object the runs wrote, no file of the
    Ray session and no answer of the state API."""
    from tinyray.data.storage import s3_client

    address, env, temp, _ = head_cluster
    uri, _ = staged
    runtime_env = {"env_vars": s3.public_env}
    assert SENTINEL not in json.dumps(runtime_env)
    config = tmp_path / "one.yaml"
    config.write_text("name: sentinel\ntrain: {model: tinycnn, epochs: 1, batch_size: 16, cpus_per_worker: 0.5}\n"
                      "grid: {lr: [3.0e-3]}\n")
    # both at once (each trial takes half a CPU of the head's two)
    submitted = [submit_job(address, env, ["tinyray", "train", "--model", "tinycnn", "--data", uri, "--epochs", "1",
                                           "--batch-size", "16", "--cpus-per-worker", "0.5", "--storage",
                                           "s3://tinyray/sentinel-runs"], runtime_env=runtime_env, wait=False),
                 submit(address, env, "--config", str(config), "--data", uri, "--storage",
                        "s3://tinyray/sentinel-exp", runtime_env=runtime_env, wait=False)]
    client = JobSubmissionClient(address)
    jobs = [re.search(r"raysubmit_\w+", out.stdout + out.stderr).group(0) for out in submitted]
    deadline = time.time() + 600
    while time.time() < deadline and not all(client.get_job_status(j).is_terminal() for j in jobs):
        time.sleep(2)
    consoles = []
    for job in jobs:
        console = client.get_job_logs(job)  # what `ray job submit` shows the person who submitted it
        assert client.get_job_status(job) == JobStatus.SUCCEEDED, console[-3000:]
        assert SENTINEL not in console
        # quiet: the run's own lines only, after the two of Ray's job manager; no raylet warning
        # about worker start-ups either (the head starts as cluster/aws-gpu.yaml's does)
        lines = [l for l in console.splitlines() if l.strip()]
        assert "Runtime env is setting up" in lines[0] and lines[1].startswith("Running entrypoint for job")
        consoles.append(lines[2:])
    train_lines, sweep_lines = consoles
    assert len(train_lines) == 3, train_lines
    assert train_lines[0].startswith("training tinycnn-") and train_lines[2].startswith("run folder: s3://")
    assert re.fullmatch(r"epoch 1/1  loss [\d.]+  acc [\d.]+  val top-1 [\d.]+  \d+ img/s", train_lines[1])
    assert sweep_lines[0] == "sweep sentinel: 1 trials, 1 at a time, scheduler fifo"
    assert sweep_lines[1].split() == ["trial", "status", "lr", "epochs", "val", "top-1"]
    assert re.fullmatch(r"lr=0.003  epoch 1/1  loss .* img/s", sweep_lines[4]), sweep_lines
    assert sweep_lines[5].split() == ["trial", "status", "lr", "epochs", "val", "top-1"]
    assert sweep_lines[7].split()[1:4] == ["done", "0.003", "1/1"] and sweep_lines[8].startswith("report: ")
    assert len(sweep_lines) == 10, sweep_lines
    client = s3_client(s3.options)
    keys = [o["Key"] for prefix in ("sentinel-runs/", "sentinel-exp/")
            for page in client.get_paginator("list_objects_v2").paginate(Bucket="tinyray", Prefix=prefix)
            for o in page.get("Contents", [])]
    assert any(k.endswith("/model/model.keras") for k in keys) and any(k.endswith("report.md") for k in keys)
    assert any(k.endswith("tuner.pkl") for k in keys)  # Tune pickles its storage filesystem here
    leaks = [k for k in keys if SENTINEL.encode() in client.get_object(Bucket="tinyray", Key=k)["Body"].read()]
    assert leaks == []
    files = [os.path.join(d, f) for d, _, fs in os.walk(temp) for f in fs]
    assert any("runtime_env" in f for f in files)  # the agent log that used to print every value
    leaks = []
    for path in files:
        try:
            with open(path, "rb") as f:
                leaks += [f"{path}: {line[:300]!r}" for line in f.read().splitlines() if SENTINEL.encode() in line]
        except OSError:  # sockets
            pass
    assert leaks == []
    # The state API as an admin reads it (`ray list`). Not ray.util.state in this process: given
    # another cluster's address, it repoints this process's own Ray connection (the session
    # cluster's driver then died when this head was stopped).
    for kind in ("jobs", "actors"):
        rows = subprocess.run(["ray", "list", kind, "--detail", "--format", "json", "--limit", "10000",
                               "--address", address], env=env, capture_output=True, text=True, timeout=120)
        assert rows.returncode == 0 and json.loads(rows.stdout), rows.stderr[-2000:]
        assert SENTINEL not in rows.stdout


@pytest.mark.ray
@pytest.mark.slow
def test_a_trial_that_cannot_get_its_data_fails_in_one_line_and_the_sweep_goes_on(ray_cluster, staged, s3, tmp_path,
                                                                                   capfd):
    """Another job holds the CPUs Ray Data's file listing needs: the first trial stops at its
    --data-timeout with the line that says so; once the other job ends, the second trains."""
    import ray

    from tinyray.sweep import run_sweep

    from ray.util.state import list_actors

    # the session cluster's own address: without one, the state API finds "the" cluster from Ray's
    # current-cluster pointer, which names the `ray start` head an earlier test of this module started
    gcs = ray.get_runtime_context().gcs_address

    def ended_trainings():  # Train controllers that have ended, on the whole session cluster
        return len(list_actors(address=gcs, filters=[("class_name", "=", "TrainController"), ("state", "=", "DEAD")],
                               limit=10_000, raise_on_missing_output=False))

    exp = tmp_path / "exp" / "starved"
    before = ended_trainings()
    other = hold_cpus(2.75)

    def end_the_other_job_once_a_trial_failed():
        # The first trial's end is its Train controller's end: Tune writes the trial's error.txt
        # in a driver-side staging folder and copies it to the experiment only later, by which
        # time the second trial may have waited out its own --data-timeout.
        deadline = time.time() + 300
        try:
            while time.time() < deadline and ended_trainings() == before:
                time.sleep(0.5)
        finally:
            ray.kill(other)

    cfg = SweepConfig(name="starved", storage=str(tmp_path / "exp"), max_concurrent_trials=1,
                      train={"model": "tinycnn", "epochs": 1, "batch_size": 16, "cpus_per_worker": 0.5,
                             "data_timeout": 20, "max_failures": 0},
                      grid={"lr": [3e-3, 1e-3]})
    watcher = threading.Thread(target=end_the_other_job_once_a_trial_failed)
    try:
        watcher.start()
        run_sweep(cfg, staged[0], s3.options)
    finally:
        watcher.join()
        ray.kill(other)  # whatever happened: the other job never outlives this test
    trials = sorted(results(str(exp)), key=lambda t: t.status)
    assert [t.status for t in trials] == ["completed", "failed"], [(t.status, t.error) for t in trials]
    # the console said so as it happened, in the same one line
    printed = capfd.readouterr()
    assert f"{trials[1].variant}  failed: {trials[1].error}" in printed.err.splitlines(), printed.err[-2000:]
    assert re.search(r"^lr=[\d.]+  epoch 1/1  loss ", printed.out, re.M), printed.out[-2000:]
    assert trials[1].error.endswith("stopped: no val data arrived within 20 s (--data-timeout): Ray Data's file "
                                    "listing needs 1 free CPU beside this run's 1 × 0.5 CPU workers, and 0.75 of "
                                    "the cluster's 4 CPU are free (other runs hold the rest): --cpus-per-worker "
                                    "0.25 would fit now"), trials[1].error


@pytest.mark.ray
@pytest.mark.slow  # 20 s of Ray; the fast lane keeps test_resources.py's check_fits tables
def test_a_trial_that_can_never_be_placed_ends_the_sweep_in_one_line(ray_cluster, staged, s3, monkeypatch):
    """A config that promises GPU nodes on a cluster that will never have one (no autoscaler):
    Train would retry its worker group for ever; the sweep ends within its bound, in one line,
    at the preflight, before Tune starts (the watch inside Tune is tested in test_cluster)."""
    import time

    from tinyray.sweep import run_sweep

    monkeypatch.setenv("TINYRAY_RESOURCE_TIMEOUT", "20")
    uri, _ = staged
    promised = {"head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 2}, "max_workers": 0},
        "gpu": {"resources": {"CPU": 4, "GPU": 1}, "max_workers": 2}}}
    cfg = SweepConfig(name="never-placed", storage="s3://tinyray/never-placed",
                      train={"model": "tinycnn", "epochs": 1, "batch_size": 16, "gpus_per_worker": 1},
                      grid={"lr": [1e-3]})
    start = time.monotonic()
    with pytest.raises(TinyrayError, match=r"^preflight: the probe waited 20 s for 1 CPU \+ 1 GPU and the cluster "
                                           r"never provided them: the autoscaler added no node that fits") as e:
        run_sweep(cfg, uri, s3.options, cluster_config=promised)
    assert "\n" not in str(e.value)
    assert time.monotonic() - start < 150
