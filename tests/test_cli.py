"""The tinyray command as a user runs it (the installed console script)."""
import json
import os
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


def test_console_lines_are_exact():
    from tinyray.console import epoch_line, progress_bar, status_table, trial_label

    m = {"epoch": 2, "train_loss": 1.23456, "train_accuracy": 0.5, "val_accuracy": 0.25, "images_per_second": 512.4}
    assert epoch_line(m, 10) == "epoch 2/10  loss 1.2346  acc 0.500  val top-1 0.250  512 img/s"
    assert (epoch_line(m, 10, trial_label({"model": "model2", "lr": 0.001}))
            == "model=model2 lr=0.001  epoch 2/10  loss 1.2346  acc 0.500  val top-1 0.250  512 img/s")
    assert progress_bar(1, 10, 50, 200, 345.6, width=8) == "epoch 1/10 [==      ] 50/200 steps  346 img/s"
    assert progress_bar(1, 10, 250, 200, 1, width=4) == "epoch 1/10 [====] 250/200 steps  1 img/s"
    table = status_table(["model", "lr"], [("a_00000", "done", {"model": "tinycnn", "lr": 3e-3}, 2, 2, 0.4333),
                                           ("a_00001", "failed", {"model": "model2", "lr": 1e-4}, 0, 2, None)])
    assert table.splitlines() == [
        "trial    status  model    lr      epochs  val top-1",
        "-------  ------  -------  ------  ------  ---------",
        "a_00000  done    tinycnn   0.003     2/2      0.433",
        "a_00001  failed  model2   0.0001     0/2  -",
    ]


@pytest.mark.ray
@pytest.mark.slow
def test_the_driver_draws_rank_zeros_progress_and_prints_its_epoch_lines(ray_cluster):
    """What `tinyray train` shows on a terminal: the bar that rank 0's Keras callback posts,
    redrawn in place, and each epoch line on its own line once the bar is cleared."""
    import io
    import time

    from tinyray.progress import ProgressPrinter, progress_callback

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    def drawn(what, timeout=30):  # the watch redraws every 0.05 s: wait for it, bounded
        deadline = time.monotonic() + timeout
        while what not in out.getvalue():
            assert time.monotonic() < deadline, f"never drawn: {what!r}"
            time.sleep(0.05)

    out = Terminal()
    line = "epoch 1/3  loss 1.0000  acc 0.500  val top-1 0.250  100 img/s"
    with ProgressPrinter(out=out, every=0.05) as watch:
        progress = progress_callback(watch.handle, epochs=3, steps=40, global_batch=16, every=0)
        progress.on_epoch_begin(0)
        progress.on_train_batch_end(19)
        drawn("20/40 steps")
        watch.handle.post.remote(line)
        drawn(line)
    text = out.getvalue()
    assert "\repoch 1/3 [===============               ] 20/40 steps" in text
    lines = [l for l in text.replace("\x1b[K", "").split("\r") if l.strip()]
    assert "epoch 1/3  loss 1.0000  acc 0.500  val top-1 0.250  100 img/s\n" in lines
    assert text.endswith("\r\x1b[K")  # the bar is cleared at the end


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
