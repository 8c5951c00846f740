"""The tinyray command as a user runs it (the installed console script)."""
import json
import os
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
