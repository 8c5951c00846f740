"""How the lines travel from where they happen to the driver (tinyray.progress): rank 0's
progress bar through a Ray actor, redrawn in place on a terminal."""
import pytest


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
