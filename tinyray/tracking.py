"""MLflow tracking, from the driver only: each trial one MLflow run (params, a metric history
per epoch, tags), the sweep one parent run holding the report, and an exported winner a
registered model version.

A credential never travels: everything here runs in the driver (a Tune callback, the main job,
``tinyray train``'s driver, ``tinyray export``), so MLFLOW_TRACKING_TOKEN / _USERNAME /
_PASSWORD are read where the driver runs and never enter a runtime env or a worker. The Tune
callback holds only the tracking URI and names, and builds its client on first use (it is
pickled into the experiment's state for --resume).

MLflow is an optional extra (``pip install -e ".[mlflow]"``); nothing imports it unless
--mlflow is given.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from tinyray.errors import TinyrayError

EXTRA = 'pip install -e ".[mlflow]"'
HEALTH_TIMEOUT = 10  # seconds for the one check before anything starts
TAG = "tinyray."  # tinyray's tags: tinyray.status, tinyray.model, tinyray.run_folder, ...


def check_tracking(uri: str) -> None:
    """Before Tune or Train starts: MLflow is installed, and an http(s) tracking server answers
    its health check, or one line that says which is missing."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise TinyrayError(f"--mlflow {uri}: MLflow is not installed here: {EXTRA}") from None
    if not uri.startswith(("http://", "https://")):
        return  # a file store or a database URI: MLflow's client opens it itself
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT) as answer:
            answer.read(64)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise TinyrayError(f"the MLflow tracking server at {uri} is not reachable ({reason}): start it, or "
                           f"drop --mlflow") from None


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    # MLflow writes two lines to stdout whenever a run ends ("View run … / View experiment …"): a
    # 72-trial sweep would print 146 of them between its epoch lines. tinyray prints the
    # experiment's page once instead (ui_url); a user's own setting wins.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ui_url(uri: str, experiment: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment id (or of one of its runs) on an http(s) tracking
    server; any other URI (a file store, a database) as it is, as it has no UI of its own."""
    if not uri.startswith(("http://", "https://")):
        return uri
    page = f"{uri.rstrip('/')}/#/experiments/{experiment}"
    # MLflow 3's UI (3.17 here) opens an experiment on its GenAI overview of traces, empty for
    # tinyray's, and a run among "Evaluations", unless the link asks for its model-training view
    # (the runs table). Seen in a browser; a UI that knows no such parameter ignores it
    page = f"{page}/runs/{run_id}" if run_id else page
    return f"{page}?workflowType=machine_learning"


def experiment_id(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def config_params(config: dict) -> dict[str, str]:
    """A trial's params: every TrainConfig field (MLflow keeps params as strings; None as ""),
    the sweep's axes among them, so the UI's columns compare trials on any field."""
    return {k: "" if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else str(v))
            for k, v in sorted(config.items())}


def log_params(client, run_id: str, params: dict[str, str]) -> None:
    """All of a run's params in one request (one per field would be ~35 round trips a trial)."""
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])


def log_epoch(client, run_id: str, result: dict) -> None:
    """One epoch's figures at step = epoch, in one request."""
    import time

    from mlflow.entities import Metric

    now, step = int(time.time() * 1000), int(result["epoch"])
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in epoch_metrics(result).items()])


def epoch_metrics(result: dict) -> dict[str, float]:
    """The figures of one epoch's report that MLflow charts: numbers only, booleans excluded."""
    skip = {"epoch", "training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "pid",
            "time_since_restore", "iterations_since_restore", "done"}
    return {k: float(v) for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip}


def provenance_tags(provenance: dict | None) -> dict[str, str]:
    provenance = provenance or {}
    tags = {f"{TAG}git_commit": str(provenance.get("git_commit", "")),
            f"{TAG}manifest_sha256": str(provenance.get("manifest_sha256", ""))}
    tags.update({f"{TAG}version.{k}": str(v) for k, v in (provenance.get("versions") or {}).items()})
    return tags


def log_train_run(uri: str, experiment: str, result: dict, run_folder: str, status: str, error: str = "",
                  artifacts: dict[str, bytes] | None = None) -> str:
    """One finished (or failed) ``tinyray train`` run as one MLflow run; returns its page (ui_url)."""
    client = _client(uri)
    config = result.get("config", {})
    run = client.create_run(experiment_id(client, experiment), run_name=os.path.basename(run_folder.rstrip("/")),
                            tags={f"{TAG}model": str(config.get("model", "")), f"{TAG}run_folder": run_folder,
                                  f"{TAG}status": status, **({f"{TAG}error": error[:5000]} if error else {}),
                                  **provenance_tags(result.get("provenance"))})
    rid = run.info.run_id
    log_params(client, rid, config_params(config))
    for e in result.get("epochs", []):
        log_epoch(client, rid, e)
    _log_blobs(client, rid, artifacts or {})
    client.set_terminated(rid, "FINISHED" if status == "completed" else "FAILED")
    return ui_url(uri, run.info.experiment_id, rid)


def _log_blobs(client, run_id: str, blobs: dict[str, bytes], artifact_path: str | None = None) -> None:
    """Files (relative name -> bytes) as one run's artifacts."""
    import tempfile

    if not blobs:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in blobs.items():
            path = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        client.log_artifacts(run_id, tmp, artifact_path=artifact_path)


def log_sweep_parent(uri: str, experiment: str, sweep: dict, artifacts: dict[str, bytes]) -> str:
    """The sweep's parent run (one per experiment: a resumed sweep's report replaces the first's):
    the report's files as artifacts, and every trial's run its child. Returns the experiment's
    page (ui_url)."""
    client = _client(uri)
    exp = experiment_id(client, experiment)
    runs = client.search_runs([exp], max_results=10_000)
    parents = [r for r in runs if r.data.tags.get(f"{TAG}kind") == "sweep"]
    trials = [r for r in runs if f"{TAG}trial" in r.data.tags]
    if parents:
        rid = parents[0].info.run_id
    else:
        # it spans its trials (made at the sweep's end, it showed a duration of 53 ms)
        start = min((r.info.start_time for r in trials if r.info.start_time), default=None)
        rid = client.create_run(exp, run_name=f"sweep {experiment}", tags={f"{TAG}kind": "sweep"},
                                start_time=start).info.run_id
        client.log_param(rid, "sweep", json.dumps(sweep, sort_keys=True)[:6000])
    for r in trials:
        client.set_tag(r.info.run_id, "mlflow.parentRunId", rid)
    _log_blobs(client, rid, artifacts)
    client.set_terminated(rid, "FINISHED")
    return ui_url(uri, exp)


def register_export(uri: str, name: str, export_folder_files: dict[str, bytes], card: dict) -> int:
    """``tinyray export --register NAME``: the export's files as one run's artifacts, then a new
    version of registered model NAME pointing at them. Returns the version number."""
    client = _client(uri)
    run = client.create_run(experiment_id(client, f"{name}-exports"), run_name=f"export {name}",
                            tags={f"{TAG}kind": "export", f"{TAG}source": str(card.get("experiment", "")),
                                  f"{TAG}trial": str(card.get("trial", ""))})
    rid = run.info.run_id
    _log_blobs(client, rid, export_folder_files, artifact_path="model")
    client.set_terminated(rid, "FINISHED")
    try:
        client.create_registered_model(name)
    except Exception as e:  # noqa: BLE001 - MLflow's "already exists" is a RestException or MlflowException
        if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
            raise TinyrayError(f"--register {name}: the registry refused the name: {str(e).splitlines()[0]}") from None
    version = client.create_model_version(name, source=f"runs:/{rid}/model", run_id=rid,
                                          tags={k: str(v) for k, v in card.items() if k in ("val_top1", "model")})
    return int(version.version)


def _tracking_callback_class():
    from ray.tune import Callback

    class TrackingCallback(Callback):
        """One MLflow run per trial, from Tune's driver: created when the trial starts, a metric
        per epoch at step = epoch, tagged with its status when it ends. Pickled with the
        experiment (run ids included), so a resumed sweep goes on logging into the same runs."""

        def __init__(self, uri: str, experiment: str, base: dict, provenance: dict | None = None):
            self.uri, self.experiment, self.base = uri, experiment, base
            self.provenance = provenance or {}
            self.runs: dict[str, str] = {}  # Tune trial id -> MLflow run id
            self.planned: dict[str, int] = {}
            self._mlflow = None

        def __getstate__(self):
            return {k: v for k, v in self.__dict__.items() if k != "_mlflow"}

        def __setstate__(self, state):
            self.__dict__.update(state, _mlflow=None)

        @property
        def client(self):
            if self._mlflow is None:
                self._mlflow = _client(self.uri)
            return self._mlflow

        def _run(self, trial) -> str:
            if trial.trial_id not in self.runs:
                from tinyray.config import TrainConfig
                from tinyray.console import trial_label
                from tinyray.data import storage

                config = TrainConfig.from_dict({**self.base, **trial.config})
                folder = storage.join(config.storage, config.run_name)  # a trial's storage is <exp>/train-runs
                run = self.client.create_run(
                    experiment_id(self.client, self.experiment), run_name=trial_label(trial.config) or trial.trial_id,
                    tags={f"{TAG}model": config.model, f"{TAG}run_folder": folder, f"{TAG}status": "running",
                          f"{TAG}trial": trial.trial_id, **provenance_tags(self.provenance)})
                self.runs[trial.trial_id], self.planned[trial.trial_id] = run.info.run_id, config.epochs
                log_params(self.client, run.info.run_id, config_params(config.to_dict()))
            return self.runs[trial.trial_id]

        def on_trial_start(self, iteration, trials, trial, **info):
            self._run(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "epoch" in result:
                log_epoch(self.client, self._run(trial), result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            rid = self._run(trial)
            done = int((trial.last_result or {}).get("epoch", 0))
            status = "completed" if done >= self.planned.get(trial.trial_id, done) else "stopped early"
            self.client.set_tag(rid, f"{TAG}status", status)
            self.client.set_terminated(rid, "FINISHED")

        def on_trial_error(self, iteration, trials, trial, **info):
            from tinyray.errors import failure_line

            rid = self._run(trial)
            error = trial.get_error()
            self.client.set_tag(rid, f"{TAG}status", "failed")
            self.client.set_tag(rid, f"{TAG}error", (failure_line(str(error)) if error else "see its error.txt")[:5000])
            self.client.set_terminated(rid, "FAILED")

    TrackingCallback.__module__, TrackingCallback.__qualname__ = __name__, "TrackingCallback"
    return TrackingCallback


def __getattr__(name: str):
    """``TrackingCallback`` is built on first use, so that importing this module imports neither
    Ray Tune nor MLflow; as a module attribute it pickles with the experiment."""
    if name == "TrackingCallback":
        globals()[name] = _tracking_callback_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
