"""The package is a one-way stack of modules: import-linter's layers contract in pyproject.toml
holds, it names every module, it breaks when a module imports from above, and an AST walk of
every import (function-level ones included) finds no cycle."""
import ast
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "tinyray")


def lint_imports(cwd):
    exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    assert exe, "import-linter is not installed (pip install -e '.[test]')"
    env = {**os.environ, "PYTHONPATH": cwd}
    return subprocess.run([exe, "--config", os.path.join(cwd, "pyproject.toml")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def modules(root=PACKAGE) -> dict[str, str]:
    """{dotted name: path} of every module in the package."""
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), os.path.dirname(root))[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = os.path.join(folder, f)
    return out


def imports_of(path, names) -> set[str]:
    """The package's modules that the file at ``path`` imports anywhere (in functions too)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found & names


def test_the_layers_contract_is_kept():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


def test_every_module_has_a_layer():
    contract = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["tool"]["importlinter"]["contracts"][0]
    layered = {f"tinyray.{m.strip()}" for layer in contract["layers"] for m in layer.split("|")}
    unplaced = set(modules()) - layered - {"tinyray", "tinyray.data"}
    assert not unplaced, f"give these modules a layer in pyproject.toml: {sorted(unplaced)}"
    assert not layered - set(modules()), "the contract names modules that do not exist"


def test_a_module_that_imports_from_above_breaks_the_contract(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "tinyray")
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path)
    with open(tmp_path / "tinyray" / "errors.py", "a") as f:
        f.write("\n\ndef late():\n    from tinyray.report import build_report  # a function-level import upwards\n"
                "    return build_report\n")
    out = lint_imports(str(tmp_path))
    assert out.returncode != 0 and "1 broken" in out.stdout, out.stdout[-2000:]
    assert "tinyray.errors -> tinyray.report" in out.stdout


def test_no_import_cycle_even_through_function_level_imports():
    mods = modules()
    graph = {m: imports_of(p, set(mods)) - {m, "tinyray", "tinyray.data"} for m, p in mods.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert graph["tinyray.cli"], "the walk found no imports at all"
