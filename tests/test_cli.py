"""The tinyray command as a user runs it (the installed console script)."""
import json
import os
import re
import subprocess

import pytest

from tinyray.models import REGISTRY


def run(*args):
    return subprocess.run(["tinyray", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_subcommands():
    out = run("--help")
    assert out.returncode == 0
    assert "models" in out.stdout


def test_models_json_lists_every_registered_model_with_its_params():
    out = run("models", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {r["name"]: r["params"] for r in rows} == {n: s.params for n, s in REGISTRY.items()}


def test_models_table_shows_the_seed_counts():
    out = run("models")
    assert out.returncode == 0
    assert "31,696,968" in out.stdout and "resnet18" in out.stdout


# ------------------------------------------------------------------------- the console


def test_the_reference_page_is_what_the_code_generates():
    """docs/reference.md lists every TrainConfig field and every command's flags; it is made by
    `tinyray reference`, and this fails when a field, flag or help changed without it."""
    from tinyray.cli import reference_markdown
    from tinyray.config import FIELDS

    page = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "reference.md")).read()
    assert page == reference_markdown(), "docs/reference.md is out of date: run `tinyray reference > docs/reference.md`"
    for name in FIELDS:
        assert f"| `{name}` | `--{name.replace('_', '-')}` |" in page
    for command in ("data stage", "train", "sweep", "report", "export", "predict", "doctor"):
        assert f"### `{command}`" in page


def test_version_is_the_packages():
    from importlib.metadata import version

    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"tinyray {version('tinyray')}", out


def test_data_inspect_says_what_a_staged_dataset_holds(tmp_path):
    from tinyray.data.stage import load_manifest

    assert run("data", "sample", str(tmp_path / "rel"), "--classes", "3", "--train-per-class", "8",
               "--val-per-class", "2").returncode == 0
    release = tmp_path / "rel" / "tiny-imagenet-200"
    (release / "train" / os.listdir(release / "train")[0] / "images" / "cut.JPEG").write_bytes(b"\xff\xd8\xff")
    assert run("data", "stage", str(release), str(tmp_path / "data"), "--quiet").returncode == 0
    out = run("data", "inspect", str(tmp_path / "data"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    manifest = load_manifest(str(tmp_path / "data"))
    assert lines[0] == f"{tmp_path / 'data'}: tinyray.staged/v1, dataset version 1, images 64x64x3"
    assert lines[1].startswith("classes: 3 (") and manifest["classes"][0]["wnid"] in lines[1]
    assert lines[2].startswith("train: 24 images") and f"in {len(manifest['train']['shards'])} shard(s)" in lines[2]
    assert lines[3].startswith("val: 6 images")
    assert lines[4] == f"skipped: 1 (1 × {manifest['skipped'][0]['reason']})"
    assert lines[5].startswith("converted: ")
    as_json = json.loads(run("data", "inspect", str(tmp_path / "data"), "--json").stdout)
    assert as_json["train"]["images"] == 24 and [s["file"] for s in as_json["skipped_files"]] == [
        s["file"] for s in manifest["skipped"]]
    missing = run("data", "inspect", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "has no manifest.json" in missing.stderr


@pytest.mark.slow  # two subprocesses that load TensorFlow: ~10 s
def test_export_and_predict_take_the_endpoint_as_a_flag(tmp_path, s3, sample_release):
    """No AWS_ENDPOINT_URL in the environment: --endpoint-url alone finds the store."""
    from test_export import write_experiment

    env = {k: v for k, v in {**os.environ, **s3.env}.items() if k != "AWS_ENDPOINT_URL"}
    exp = write_experiment(tmp_path)
    dest = "s3://tinyray/cli-exports/by-flag"  # not under exports/, which test_export.py lists whole
    out = subprocess.run(["tinyray", "export", str(exp), "--to", dest, "--endpoint-url", s3.endpoint_url],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip() == f"exported to {dest}", out
    image = sorted(os.listdir(os.path.join(sample_release, "val", "images")))[0]
    out = subprocess.run(["tinyray", "predict", dest, os.path.join(sample_release, "val", "images", image), "--json",
                          "--top", "2", "--endpoint-url", s3.endpoint_url],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)[0]["top"]) == 2


def ray_sessions() -> set:
    import glob

    return set(glob.glob("/tmp/ray/session_*"))


def test_the_main_jobs_plan_lists_every_trial_and_starts_nothing(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    before = ray_sessions()
    out = subprocess.run(["python", os.path.join(root, "jobs", "train_all.py"), "--plan", "--storage", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"plan: sweep smoke → {tmp_path}/smoke"
    rows = [l.split() for l in lines if re.match(r"^\d+\s+\S+-s\d+\s", l)]  # the table's rows: number, run name
    assert [r[2] for r in rows] == [f"model{i}" for i in range(1, 7)] and all(r[-1] == "unchecked" for r in rows)
    assert rows[0][1] == "model1-adam-lr0.001-b16x1-e2-s0" and lines[-1] == "total: 12 trial-epochs"
    assert ray_sessions() == before and not (tmp_path / "smoke").exists()  # no Ray started, nothing written


def test_a_plan_checks_each_trial_against_the_cluster_config_and_fails_on_a_problem(tmp_path, sample_release):
    from tinyray.data.stage import StageConfig, stage_dataset
    from tinyray.data.storage import StorageOptions

    stage_dataset(StageConfig(sample_release, str(tmp_path / "data"), progress=False), StorageOptions())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = ["sweep", "--plan", "--config", "grid", "--data", str(tmp_path / "data"), "--storage", str(tmp_path),
            "--cluster-config", os.path.join(root, "cluster", "aws-gpu.yaml"), "--models", "tinycnn"]
    ok = run(*args)
    assert ok.returncode == 0, ok.stderr
    assert "12 trials, " in ok.stdout and "fit checked against" in ok.stdout and "aws-gpu.yaml" in ok.stdout
    assert ok.stdout.splitlines()[-1] == "total: 240 trial-epochs at most (ASHA may stop trials early)"
    bad = run(*args, "--gpus-per-worker", "16", "--batch-size", "512")
    assert bad.returncode == 1
    problems = [l for l in bad.stderr.splitlines() if l.startswith("problem: ")]
    assert len(problems) == 12 and "16 GPU, but the largest node has" in problems[0], bad.stderr
    assert bad.stderr.splitlines()[-1] == "12 problem(s): the sweep would not run as planned"


def test_bash_completes_subcommands_flags_registry_choices_and_paths_from_the_generated_script(tmp_path):
    from tinyray.models import REGISTRY

    script = subprocess.run(["tinyray", "completion", "bash"], capture_output=True, text=True, timeout=60, check=True)
    (tmp_path / "comp.bash").write_text(script.stdout)
    (tmp_path / "grid-lr.yaml").write_text("")
    probe = f"""source {tmp_path / 'comp.bash'}
t() {{ COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}
      COMPREPLY=(); _shtab_tinyray; echo "${{COMPREPLY[*]}}"; }}
t tinyray se
t tinyray predict --fo
t tinyray train --model ""
t tinyray sweep --config {tmp_path}/grid
t tinyray data ""
"""
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["serve", "--format --force", " ".join(REGISTRY), f"{tmp_path}/grid-lr.yaml",
                                       "stage inspect sample"]
