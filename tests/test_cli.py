"""The tinyray command as a user runs it (the installed console script)."""
import json
import subprocess

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
