"""Write constraints.txt from a pip resolution report (``pip install --dry-run --report``).

    pip install --dry-run --ignore-installed --quiet --report /tmp/r.json -e ".[test,gpu]"
    python cluster/pins.py /tmp/r.json > constraints.txt

Every package is pinned at the version pip resolved, except the NVIDIA wheels of TensorFlow's
``and-cuda`` extra: TF gives those only a floor (``>=12.5.82,<13``), and the floor is the CUDA /
cuDNN / NCCL that TF was built and tested with, so that is the pin. A newer 12.x runtime would
also need a newer driver than the AMI may carry.
"""
import json
import re
import sys

HEADER = """\
# The whole resolved tree of tinyray[test,gpu] on Linux x86_64, CPython 3.11. CI, the Dockerfile and
# the cluster's setup commands install with `-c constraints.txt`, so a node built next month runs
# what CI ran. The NVIDIA wheels sit at the CUDA/cuDNN/NCCL that TensorFlow was built with.
# Refresh after changing pyproject.toml (cluster/pins.py says how).
"""


def pins(report: dict) -> dict[str, str]:
    installs = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"] for i in report["install"]}
    out = {name: meta["version"] for name, meta in installs.items() if name != "tinyray"}
    for req in installs.get("tensorflow", {}).get("requires_dist", []):
        m = re.match(r"(nvidia-[a-z0-9-]+)[^;]*>=([0-9.]+)[^;]*;\s*extra == \"and-cuda\"", req)
        if m:
            out[m.group(1)] = m.group(2)
    return dict(sorted(out.items()))


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        resolved = pins(json.load(f))
    sys.stdout.write(HEADER + "".join(f"{n}=={v}\n" for n, v in resolved.items()))
