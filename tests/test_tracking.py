"""MLflow tracking (tinyray.tracking) against a real MLflow tracking server that this module
starts on loopback (sqlite backend, a local artifact root) and stops by its pid. Everything is
checked through MLflow's own client, as a team's dashboard or script would read it."""
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import free_port, stop_process_tree


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--default-artifact-root", f"file://{root}/artifacts",
         "--workers", "1"],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5):
                break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(1)
    yield uri
    stop_process_tree(proc)


def client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_an_unreachable_tracking_server_is_one_line_before_anything_starts(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = subprocess.run(["tinyray", "sweep", "--mlflow", dead, "--storage", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stdout == "", out
    assert out.stderr.startswith(f"tinyray: error: the MLflow tracking server at {dead} is not reachable (")
    assert out.stderr.endswith("start it, or drop --mlflow\n") and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "smoke").exists()  # nothing staged, nothing run


@pytest.mark.slow  # the tracking server's start and two exports: ~35 s
def test_an_export_is_registered_as_a_new_version_each_time(tracking_server, tmp_path):
    from test_export import write_experiment

    exp = write_experiment(tmp_path)
    for n, dest in enumerate(("one", "two"), 1):
        out = subprocess.run(["tinyray", "export", str(exp), "--to", str(tmp_path / dest), "--register",
                              "tiny-winner", "--mlflow", tracking_server], capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[-1] == f"registered 'tiny-winner' version {n} at {tracking_server}"
        assert "View run" not in out.stdout  # MLflow's own lines as a run ends
    c = client(tracking_server)
    versions = sorted(c.search_model_versions("name='tiny-winner'"), key=lambda v: int(v.version))
    assert [int(v.version) for v in versions] == [1, 2]
    assert versions[0].source == f"runs:/{versions[0].run_id}/model" and versions[0].tags["model"] == "tinycnn"
    got = c.download_artifacts(versions[1].run_id, "model", str(tmp_path / "got"))
    assert sorted(os.listdir(got)) == sorted(os.listdir(tmp_path / "two"))
    # and what was registered is an export that predict's safe loader reads
    from tinyray.predict import Export, load_model

    registered, exported = Export(got), Export(str(tmp_path / "two"))
    assert registered.classes == exported.classes
    assert load_model(registered.model_bytes).count_params() == load_model(exported.model_bytes).count_params()


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_logs_each_trial_and_its_report_to_mlflow(ray_cluster, staged, s3, tracking_server, tmp_path,
                                                         monkeypatch, capfd):
    """Each trial one run (its config as params, every epoch's figures at step = epoch, its model,
    run folder, provenance and status as tags); the report, results.csv and each eval.json in
    the sweep's parent run. The tracking token stays in the driver: no runtime env holds it."""
    from ray.util.state import list_jobs

    from tinyray.main_job import track_sweep
    from tinyray.report import write_report
    from tinyray.sweep import run_sweep
    from tinyray.sweepfile import parse_sweep

    secret = "mlflow-token-" + os.urandom(6).hex()
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secret)  # a server without auth ignores it
    cfg = parse_sweep(f"name: tracked\nstorage: {tmp_path}\nmlflow: {tracking_server}\nmax_concurrent_trials: 1\n"
                      "train: {model: tinycnn, epochs: 2, batch_size: 16}\ngrid: {lr: [3.0e-3, 1.0e-3]}\n")
    exp = run_sweep(cfg, staged[0], s3.options)
    write_report(exp, s3.options)
    track_sweep(cfg, s3.options)

    c = client(tracking_server)
    experiment = c.get_experiment_by_name("tracked")
    # one line for the whole sweep, with the UI's page; none of MLflow's two per ended run
    printed = capfd.readouterr().out
    assert "View run" not in printed and "View experiment" not in printed, printed
    assert printed.splitlines()[-1] == (f"mlflow: experiment 'tracked' at {tracking_server}/#/experiments/"
                                        f"{experiment.experiment_id}?workflowType=machine_learning (one run per "
                                        "trial, the report in the sweep's run)")
    runs = c.search_runs([experiment.experiment_id])
    trials = [r for r in runs if "tinyray.trial" in r.data.tags]
    parents = [r for r in runs if r.data.tags.get("tinyray.kind") == "sweep"]
    assert len(trials) == 2 and len(parents) == 1, [r.data.tags for r in runs]
    results = {json.load(open(p))["config"]["lr"]: json.load(open(p))
               for p in (tmp_path / "tracked" / "train-runs").glob("*/result.json")}
    for run in trials:
        params, tags = run.data.params, run.data.tags
        lr = float(params["lr"])
        result = results[lr]
        assert params["model"] == "tinycnn" and params["epochs"] == "2" and params["batch_size"] == "16"
        assert tags["tinyray.status"] == "completed" and tags["tinyray.model"] == "tinycnn"
        assert tags["tinyray.run_folder"].endswith(f"/train-runs/{result['run']}")
        assert tags["tinyray.git_commit"] == result["provenance"]["git_commit"]
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        history = c.get_metric_history(run.info.run_id, "val_accuracy")
        assert [(m.step, m.value) for m in history] == [(e["epoch"], e["val_accuracy"]) for e in result["epochs"]]
        assert run.info.status == "FINISHED"
    names = {a.path for a in c.list_artifacts(parents[0].info.run_id)}
    assert {"report.md", "report.html", "results.csv", "results.json", "eval"} <= names
    parent = parents[0].info  # it spans its trials, from the first one's start
    assert parent.start_time == min(r.info.start_time for r in trials)
    assert parent.end_time >= max(r.info.end_time for r in trials)
    evals = {a.path for a in c.list_artifacts(parents[0].info.run_id, "eval")}
    assert evals == {f"eval/{r['run']}.json" for r in results.values()}
    import ray

    jobs = list_jobs(address=ray.get_runtime_context().gcs_address, detail=True)
    assert jobs and all(secret not in json.dumps(j.runtime_env or {}) for j in jobs)


@pytest.mark.ray
@pytest.mark.slow
def test_a_train_run_is_one_mlflow_run_with_its_files(ray_cluster, staged, s3, tracking_server, tmp_path, capfd):
    from tinyray.config import TrainConfig
    from tinyray.train import train_command

    cfg = TrainConfig(model="tinycnn", data=staged[0], epochs=2, batch_size=16, storage=str(tmp_path), name="solo")
    out = train_command(cfg, s3.options, mlflow=tracking_server)
    c = client(tracking_server)
    (run,) = c.search_runs([c.get_experiment_by_name("solo").experiment_id])
    printed = capfd.readouterr().out
    assert "View run" not in printed and printed.splitlines()[-1] == (
        f"mlflow: the run at {tracking_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        "?workflowType=machine_learning")
    assert run.data.tags["tinyray.status"] == "completed" and run.data.params["name"] == "solo"
    steps = [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "train_loss")]
    assert steps == [(e["epoch"], e["train_loss"]) for e in out.result["epochs"]]
    assert {a.path for a in c.list_artifacts(run.info.run_id)} == {"result.json", "eval.json"}


def test_the_ui_page_of_an_experiment_or_a_run_is_only_for_a_tracking_server():
    from tinyray.tracking import ui_url

    assert ui_url("http://mlflow:5000/", "7") == "http://mlflow:5000/#/experiments/7?workflowType=machine_learning"
    assert ui_url("https://m.example", "7", "ab12") == ("https://m.example/#/experiments/7/runs/ab12"
                                                        "?workflowType=machine_learning")
    assert ui_url("sqlite:///mlflow.db", "7", "ab12") == "sqlite:///mlflow.db"  # no UI to point at
