"""tinyray doctor as a user runs it: its table, and a line per failure (exit 1)."""
import os
import subprocess

import pytest


def doctor(*args, env=None):
    full = {**os.environ, "RAY_ADDRESS": "", **(env or {})}
    return subprocess.run(["tinyray", "doctor", *args], capture_output=True, text=True, timeout=600, env=full)


@pytest.mark.ray
def test_doctor_reads_the_manifest_with_each_nodes_identity_and_names_its_region(staged, s3):
    uri, _ = staged
    out = doctor("--data", uri, env=s3.public_env)  # the node's own keys: the embedded store's marker
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    header = lines[0].split()
    for col in ("shape", "node", "ray", "tensorflow", "tf-keras", "tinyray", "gpus", "data", "region",
                "disk_free_gb", "mem_free_gb"):
        assert col in header, col
    rows = [l.split() for l in lines[2:4]]
    assert [r[0] for r in rows] == ["driver", "1"]  # the driver's node, and one probe of "1 CPU"
    assert "readable" in lines[2] and "us-east-1" in lines[2] and "readable" in lines[3]
    assert lines[-1] == "all checks passed"


@pytest.mark.ray
def test_doctor_says_what_is_missing_in_a_line_each_and_exits_1(s3):
    out = doctor("--data", "s3://tinyray/not-staged", "--gpus", "1",
                 env={**s3.public_env, "TINYRAY_RESOURCE_TIMEOUT": "5"})
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stdout + out.stderr
    fails = [l for l in out.stdout.splitlines() if l.startswith("FAIL ")]
    assert any("s3://tinyray/not-staged has no manifest.json" in l for l in fails), fails
    # no node has a GPU and nothing can add one: the wait is bounded and says what it waited for
    assert any("the probe waited 5 s for 1 CPU + 1 GPU and the cluster never provided them: the cluster has no "
               "autoscaler and no free node that fits" in l for l in fails), fails
    assert out.stdout.splitlines()[-1] == f"{len(fails)} check(s) failed"


def test_the_table_marks_what_was_not_asked_and_gpus_that_are_not_there():
    from tinyray.doctor import table

    text = table([{"shape": "driver", "node": "10.0.0.1", "gpus_asked": 0, "ray": "2.60.0"},
                  {"shape": "4 CPU + 1 GPU", "node": "10.0.0.7", "gpus_asked": 1, "gpus": 0, "ray": "2.60.0",
                   "built_cuda": "12.5.1"}])
    rows = text.splitlines()
    assert "not asked" in rows[2] and "no GPU visible" in rows[3] and "12.5.1" in rows[3]
    assert rows[2].split()[0] == "driver" and len({len(rows[0]), len(rows[1])}) == 1
