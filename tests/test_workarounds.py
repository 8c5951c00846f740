"""docs/workarounds.md, the table of every upstream quirk tinyray works around: each row names
tinyray's code, the upstream code it relies on and its test, and each of them exists, so that an
upgrade of Ray or TensorFlow that moves what a workaround relies on fails here first."""
import ast
import importlib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["quirk", "what tinyray does", "tinyray", "upstream", "test"]


def rows():
    text = open(os.path.join(ROOT, "docs", "workarounds.md")).read()
    table = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == COLUMNS
    out = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table[2:]]
    assert all(len(r) == len(COLUMNS) for r in out)
    return out


def names(cell):
    return [] if cell == "—" else [n.strip() for n in cell.split(",")]


def resolve(dotted):
    """The object at a dotted name: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)  # an AttributeError names what is gone
        return obj
    raise ImportError(dotted)


def test_the_table_lists_the_workarounds_the_code_carries():
    table = rows()
    assert len(table) >= 17
    named = {n for r in table for n in names(r["tinyray"])}
    # what the code marks as a workaround is in the table (a spot check of each kind)
    for must in ("tinyray.cluster.keep_credentials_out_of_tune", "tinyray.tfk._quiet_import", "tinyray.sweep.run_sweep",
                 "tinyray.train.train_on_ray", "tinyray.train.MWMSConfig", "tinyray.cluster.pending_placements"):
        assert must in named, must


@pytest.mark.parametrize("row", rows(), ids=lambda r: r["quirk"][:40])
def test_every_named_symbol_and_test_exists(row):
    for dotted in names(row["tinyray"]) + names(row["upstream"]):
        assert resolve(dotted) is not None, dotted
    tests = names(row["test"])
    assert tests, "each workaround has a test"
    for ref in tests:
        file, _, test = ref.partition("::")
        path = os.path.join(ROOT, "tests", file)
        assert os.path.exists(path), ref
        defined = {n.name for n in ast.walk(ast.parse(open(path).read())) if isinstance(n, ast.FunctionDef)}
        assert test in defined, f"{ref}: no such test"


def test_a_name_that_is_gone_fails_the_check():
    with pytest.raises(AttributeError):
        resolve("ray.tune.execution.class_cache.NO_SUCH_NAME")
    with pytest.raises(ImportError):
        resolve("no_such_package.x")


def test_every_test_the_docs_name_exists():
    """docs/*.md and the README name the tests that show each claim (`file.py::test_name`, or a
    prefix of it ending in `…`): each must still exist, so a renamed or moved test fails here."""
    import glob
    import re

    pages = [os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "*.md"))]
    defined = {}
    for path in glob.glob(os.path.join(ROOT, "tests", "test_*.py")):
        defined[os.path.basename(path)] = {n.name for n in ast.walk(ast.parse(open(path).read()))
                                           if isinstance(n, ast.FunctionDef)}
    missing, seen = [], 0
    for page in pages:
        for file, name, prefix in re.findall(r"(test_\w+\.py)::(test_\w+)(…)?", open(page).read()):
            seen += 1
            tests = defined.get(file, set())
            if not (any(t.startswith(name) for t in tests) if prefix else name in tests):
                missing.append(f"{os.path.basename(page)}: {file}::{name}{prefix}")
    assert seen > 20 and not missing, missing
