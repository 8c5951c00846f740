"""The ``tinyray`` command. Each subcommand parses its flags and calls one tinyray function.

A user's mistake (TinyrayError) is printed as one line, ``tinyray: error: ...``, exit code 1;
argparse's own usage errors exit 2. Heavy imports (TensorFlow, Ray) happen inside the handlers
so ``tinyray --help`` and ``tinyray models --json`` stay fast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from tinyray.errors import TinyrayError


def _cmd_models(args) -> int:
    from tinyray.models import describe_models

    rows = describe_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(format_table(
        ["name", "parameters", "seed's parameters", "what it is"],
        [[r["name"], f"{r['params']:,}", f"{r['seed_params']:,}" if r["seed_params"] else "-",
          r["description"]] for r in rows],
    ))
    return 0


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain fixed-width text table (first column left-aligned, numbers right-aligned)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells):
        out = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            c = str(c)
            numeric = c.replace(",", "").replace(".", "").replace("%", "").isdigit()
            out.append(c.rjust(w) if numeric and i else c.ljust(w))
        return "  ".join(out).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyray",
        description="Train and compare image classifiers on Tiny ImageNet on a Ray cluster.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("models", help="list the model registry with exact parameter counts")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=_cmd_models)

    for register in _REGISTRARS:
        register(sub)
    return parser


def _cmd_data_sample(args) -> int:
    from tinyray.data.sample import SampleSpec, write_sample

    spec = SampleSpec(classes=args.classes, train_per_class=args.train_per_class,
                      val_per_class=args.val_per_class, seed=args.seed)
    top = write_sample(args.dir, spec)
    print(f"wrote a sample release ({spec.classes} classes, {spec.classes * spec.train_per_class} train, "
          f"{spec.classes * spec.val_per_class} val images) to {top}")
    return 0


def _cmd_data_stage(args) -> int:
    from tinyray.data.stage import StageConfig, stage_dataset
    from tinyray.data.storage import StorageOptions

    cfg = StageConfig(args.src, args.dest, rows_per_shard=args.rows_per_shard,
                      skip_bad_labels=args.skip_bad_labels, progress=not args.quiet)
    manifest = stage_dataset(cfg, StorageOptions.from_env(args.endpoint_url))
    for item in manifest["skipped"]:
        print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)
    return 0


def _cmd_storage_serve(args) -> int:
    import signal
    import threading

    from tinyray.data.storage import EmbeddedS3

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedS3(port=args.port, bucket=args.bucket) as s3:
        print(f"S3-compatible endpoint: {s3.endpoint_url} (bucket {args.bucket!r}); export:")
        for k, v in s3.env.items():
            print(f"export {k}={v}")
        print("Ctrl-C to stop.", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


def _register_data(sub) -> None:
    data = sub.add_parser("data", help="make, stage and inspect datasets").add_subparsers(
        dest="data_command", metavar="DATA_COMMAND", required=True)

    p = data.add_parser("stage", help="pack a Tiny ImageNet release into Parquet shards in object storage")
    p.add_argument("src", metavar="SRC", help="release folder, tiny-imagenet-200.zip, or an http(s) URL of the zip")
    p.add_argument("dest", metavar="DEST", help="s3://bucket/prefix or a local folder")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--rows-per-shard", type=int, default=2500, help="images per Parquet shard (default 2500)")
    p.add_argument("--skip-bad-labels", action="store_true",
                   help="skip (and list) val annotations naming a wnid not in wnids.txt instead of failing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_data_stage)

    p = data.add_parser("sample", help="write a small learnable dataset in the release layout")
    p.add_argument("dir", metavar="DIR", help="writes DIR/tiny-imagenet-200/")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--val-per-class", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_data_sample)

    storage = sub.add_parser("storage", help="the embedded S3-compatible endpoint").add_subparsers(
        dest="storage_command", metavar="STORAGE_COMMAND", required=True)
    p = storage.add_parser("serve", help="serve a local S3-compatible endpoint on 127.0.0.1 until Ctrl-C")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--bucket", default="tinyray", help="bucket to create (default tinyray)")
    p.set_defaults(func=_cmd_storage_serve)


def _cmd_train(args) -> int:
    from tinyray.config import TrainConfig
    from tinyray.data.storage import StorageOptions
    from tinyray.train import print_epoch_table, run_training

    cfg = TrainConfig(
        model=args.model, data=args.data, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker, epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, precision=args.precision, xla=args.xla, seed=args.seed,
        weights=args.weights, freeze_base=args.freeze_base, cache=args.cache, storage=args.storage,
        name=args.name, max_failures=args.max_failures, endpoint_url=args.endpoint_url,
    )
    out = run_training(cfg, StorageOptions.from_env(args.endpoint_url), address=args.address)
    print_epoch_table(out.result)
    return 0


def _register_train(sub) -> None:
    from tinyray.config import OPTIMIZERS, PRECISIONS, TrainConfig

    d = TrainConfig.__dataclass_fields__
    p = sub.add_parser("train", help="train one model across Ray workers (MultiWorkerMirroredStrategy)")
    p.add_argument("--model", required=True, help="a registry name (tinyray models)")
    p.add_argument("--data", required=True, help="a staged dataset: s3://bucket/prefix or a folder")
    p.add_argument("--workers", type=int, default=d["workers"].default)
    p.add_argument("--cpus-per-worker", type=float, default=d["cpus_per_worker"].default)
    p.add_argument("--gpus-per-worker", type=float, default=d["gpus_per_worker"].default)
    p.add_argument("--epochs", type=int, default=d["epochs"].default)
    p.add_argument("--batch-size", type=int, default=d["batch_size"].default,
                   help="PER-WORKER batch; the global batch is this × --workers (default %(default)s)")
    p.add_argument("--optimizer", default=d["optimizer"].default, help=f"one of {', '.join(OPTIMIZERS)}")
    p.add_argument("--lr", type=float, default=d["lr"].default, help="learning rate (default %(default)s, the seed's)")
    p.add_argument("--precision", default=d["precision"].default, help=f"one of {', '.join(PRECISIONS)}")
    p.add_argument("--xla", action="store_true", help="jit-compile the train step (XLA)")
    p.add_argument("--seed", type=int, default=d["seed"].default)
    p.add_argument("--weights", default=d["weights"].default,
                   help="model5/model6 base weights: none, imagenet, a path or s3:// URI")
    p.add_argument("--freeze-base", action="store_true", help="model5/model6: train the head only")
    p.add_argument("--cache", default=d["cache"].default, choices=("memory", "stream"),
                   help="decode once and keep in worker memory, or stream through Ray Data every epoch")
    p.add_argument("--storage", default=d["storage"].default, help="run folders: a local folder or s3://…")
    p.add_argument("--name", help="run folder name (default: derived from the config; same name → resume)")
    p.add_argument("--max-failures", type=int, default=d["max_failures"].default)
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.set_defaults(func=_cmd_train)


def _cmd_sweep(args) -> int:
    from tinyray.sweep import train_all

    overrides = {"name": args.name, "storage": args.storage, "scheduler": args.scheduler, "epochs": args.epochs,
                 "models": args.models.split(",") if args.models else None,
                 "max_concurrent_trials": args.max_concurrent_trials}
    default_config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sweeps", "smoke.yaml")
    config = args.config or (default_config if args.data is None and os.path.exists(default_config) else None)
    train_all(config, overrides, data=args.data, resume=args.resume, address=args.address,
              endpoint_url=args.endpoint_url, cluster_config_path=args.cluster_config)
    return 0


def _concurrency(value: str):
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be 'auto' or an integer") from None


def _cmd_report(args) -> int:
    from tinyray.data.storage import StorageOptions
    from tinyray.report import write_report

    print(f"report: {write_report(args.experiment, StorageOptions.from_env(args.endpoint_url))}")
    return 0


def _register_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a sweep config with Ray Tune and write the comparison report "
                                     "(what jobs/train_all.py runs)")
    p.add_argument("--config", help="sweep YAML (default: sweeps/smoke.yaml when --data is not given)")
    p.add_argument("--data", help="staged dataset URI; without it: the embedded store + sample dataset")
    p.add_argument("--storage", help="where experiment folders live: a folder or s3://… (overrides the config)")
    p.add_argument("--name", help="experiment folder name (overrides the config)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials are kept")
    p.add_argument("--scheduler", choices=("fifo", "asha"), help="overrides the config")
    p.add_argument("--epochs", type=int, help="overrides the config")
    p.add_argument("--models", help="comma-separated model names (overrides the config)")
    p.add_argument("--max-concurrent-trials", type=_concurrency, help="'auto' or a number (overrides the config)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--cluster-config", help="the cluster launcher YAML (cluster/aws-gpu.yaml): 'auto' concurrency "
                                            "then counts the nodes its autoscaler can still add")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="(re)build the comparison report of a finished or interrupted experiment")
    p.add_argument("experiment", metavar="EXPERIMENT", help="the experiment folder: a path or s3://…")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.set_defaults(func=_cmd_report)


# Each stage adds its subcommands through a function taking the subparsers object.
_REGISTRARS: list = [_register_data, _register_train, _register_sweep]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except TinyrayError as e:
        print(f"tinyray: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tinyray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
