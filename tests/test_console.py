"""What a person watching a run sees, as text (tinyray.console, pure): the exact lines, and
what quiet mode switches off."""


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


def test_quiet_mode_switches_off_tensorflows_and_ray_datas_own_output_and_verbose_keeps_it():
    from tinyray.console import quiet_env

    quiet = quiet_env(False)
    assert quiet["TF_CPP_MIN_LOG_LEVEL"] == "3" and quiet["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1"
    assert quiet_env(True) == {}
    quiet["TF_CPP_MIN_LOG_LEVEL"] = "0"  # a copy: a caller's change never reaches the next run
    assert quiet_env(False)["TF_CPP_MIN_LOG_LEVEL"] == "3"


def test_a_table_aligns_text_left_and_numbers_right():
    from tinyray.console import format_table

    assert format_table(["model", "val"], [["tinycnn", "0.5"], ["m2", "12.25"]]).splitlines() == [
        "model    val",  # no trailing blanks
        "-------  -----",
        "tinycnn    0.5",
        "m2       12.25",
    ]


def test_the_raylets_startup_concurrency_warning_stays_off_a_quiet_console_and_its_other_messages_do_not(capsys):
    import ray._private.worker as ray_worker

    from tinyray.console import drop_startup_warnings

    drop_startup_warnings()
    drop_startup_warnings()  # once only, however many drivers' set-ups call it
    warning = ("WARNING: 20 PYTHON worker processes have been started on node: 1f2e with address: 127.0.0.1, which is "
               "10x the maximum expected startup concurrency (2). This could be a result of using a large number of "
               "actors, tasks blocked in ray.get() calls, or tasks with fractional CPU requests")
    died = "A worker died or was killed while executing a task by an unexpected system error (console test)."
    ray_worker.print_to_stdstream({"lines": [warning], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    ray_worker.print_to_stdstream({"lines": [died], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    out = capsys.readouterr().out
    assert "maximum expected startup concurrency" not in out and died in out
