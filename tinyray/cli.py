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
    from tinyray.console import format_table
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyray",
        description="Train and compare image classifiers on Tiny ImageNet on a Ray cluster.",
    )
    from tinyray import __version__

    parser.add_argument("--version", action="version", version=f"tinyray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("models", help="list the model registry with exact parameter counts")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("reference", help="print the reference (docs/reference.md): every TrainConfig field and "
                                         "every command with its flags, as markdown, from the code")
    p.set_defaults(func=lambda args: print(reference_markdown(), end="") or 0)

    for register in _REGISTRARS:
        register(sub)
    p = sub.add_parser("completion", help="print a shell completion script: eval \"$(tinyray completion bash)\"",
                       description="Subcommands, flags, choices (models, schedulers...) and paths complete from the "
                                   "parser itself. bash: add `eval \"$(tinyray completion bash)\"` to ~/.bashrc; zsh: "
                                   "`tinyray completion zsh > ~/.zfunc/_tinyray` with ~/.zfunc on $fpath.")
    p.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    p.set_defaults(func=_cmd_completion)
    _complete_paths(parser)
    return parser


# Arguments that name a file, a folder or a prefix: the shell completes local paths there.
_PATH_POSITIONALS = {"experiment", "export", "model", "inputs", "src", "dest", "data", "dir"}
_PATH_OPTIONS = {"--config", "--cluster-config", "--to", "--out", "--data", "--storage"}
_SHELL_FILES = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}  # shtab's own names (shtab.FILE)


def _complete_paths(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _complete_paths(child)
        elif (not action.option_strings and action.dest in _PATH_POSITIONALS) or (
                set(action.option_strings) & _PATH_OPTIONS):
            action.complete = _SHELL_FILES


def _cmd_completion(args) -> int:
    import shtab

    print(shtab.complete(build_parser(), args.shell), end="")
    return 0


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
                      skip_bad_labels=args.skip_bad_labels, progress=not args.quiet,
                      keep_previous=args.keep_previous, max_bytes=args.max_bytes, allow_http=args.allow_http,
                      sha256=args.sha256)
    manifest = stage_dataset(cfg, StorageOptions.from_env(args.endpoint_url))
    for item in manifest["skipped"]:
        print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)
    return 0


def _cmd_data_inspect(args) -> int:
    from tinyray.data.stage import dataset_lines, describe_dataset, load_manifest
    from tinyray.data.storage import StorageOptions

    opts = StorageOptions.from_env(args.endpoint_url).for_bucket(args.data)
    manifest = load_manifest(args.data, opts)
    described = describe_dataset(args.data, manifest)
    if args.json:
        print(json.dumps({**described, "skipped_files": manifest.get("skipped", []),
                          "converted_files": manifest.get("converted", [])}, indent=1))
    else:
        print("\n".join(dataset_lines(described)))
    return 0


def _cmd_storage_serve(args) -> int:
    import signal
    import time

    from tinyray.data.storage import EmbeddedS3

    stop: list[int] = []  # a flag: a handler setting a threading.Event can deadlock on the Event's lock
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
    with EmbeddedS3(port=args.port, bucket=args.bucket) as s3:
        print(f"S3-compatible endpoint: {s3.endpoint_url} (bucket {args.bucket!r}); export:")
        for k, v in s3.env.items():
            print(f"export {k}={v}")
        print("Ctrl-C to stop.", flush=True)
        try:
            while not stop:
                time.sleep(0.5)
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
    p.add_argument("--keep-previous", action="store_true",
                   help="keep the shards of the dataset this replaces (runs still reading it go on)")
    p.add_argument("--max-bytes", type=int, metavar="N",
                   help="the largest file to read: one release file (default 64 MiB) and a download (default 1 GiB)")
    p.add_argument("--sha256", metavar="HEX", help="the download's expected SHA-256; anything else is refused")
    p.add_argument("--allow-http", action="store_true", help="allow a plain-http SRC (https is the default rule)")
    p.set_defaults(func=_cmd_data_stage)

    p = data.add_parser("inspect", help="what a staged dataset holds: classes, counts, shards, size, skipped and "
                                        "converted files, format version")
    p.add_argument("data", metavar="DATA", help="a staged dataset: s3://bucket/prefix or a local folder")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON, every skipped and converted file listed")
    p.set_defaults(func=_cmd_data_inspect)

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
    from tinyray.config import train_config_from_args
    from tinyray.train import train_command

    train_command(train_config_from_args(args), address=args.address, verbose=args.verbose, mlflow=args.mlflow)
    return 0


def _register_train(sub) -> None:
    from tinyray.config import add_train_flags

    p = sub.add_parser("train", help="train one model across Ray workers (MultiWorkerMirroredStrategy)",
                       description="Every flag below is a TrainConfig field, so each is also a sweep axis.")
    add_train_flags(p)
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--verbose", action="store_true", help="show Ray's and TensorFlow's own logs and the workers' output")
    p.add_argument("--mlflow", metavar="URI", help="log the run to this MLflow tracking URI, from the driver (needs "
                                                   "the mlflow extra)")
    p.set_defaults(func=_cmd_train)


# Flags of the sweep that are not TrainConfig fields (those are generated, as for train).
_SWEEP_FLAGS = ("name", "storage", "scheduler", "models", "max_concurrent_trials", "mlflow")


def _cmd_sweep(args) -> int:
    from tinyray.config import FIELDS
    from tinyray.main_job import run_main_job

    overrides = {k: getattr(args, k) for k in (*FIELDS, *_SWEEP_FLAGS) if hasattr(args, k)}
    if overrides.get("models"):
        overrides["models"] = overrides["models"].split(",")
    if args.plan:
        from tinyray.main_job import plan_main_job

        return plan_main_job(args.config, overrides, resume=args.resume, address=args.address,
                             cluster_config_path=args.cluster_config)
    run_main_job(args.config, overrides, resume=args.resume, address=args.address,
              cluster_config_path=args.cluster_config, verbose=args.verbose)
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
    from tinyray.config import add_train_flags

    p = sub.add_parser("sweep", help="run a sweep with Ray Tune and write the comparison report "
                                     "(what jobs/train_all.py runs)",
                       description="Without --config and --data: the embedded default (the shipped smoke sweep on "
                                   "a generated sample dataset in an embedded object store). Any TrainConfig flag "
                                   "overrides that field for every trial.")
    p.add_argument("--config", help="sweep file: a path, an s3:// URI or a shipped name (grid, seed, smoke)")
    p.add_argument("--storage", help="where experiment folders live: a folder or s3://… (overrides the file)")
    p.add_argument("--name", help="experiment folder name (overrides the file)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials are kept")
    p.add_argument("--plan", action="store_true",
                   help="print the trials, their run names, the concurrency, each trial's fit (against "
                        "--cluster-config, or the running cluster --address names) and the total trial-epochs; "
                        "start nothing, train nothing; exit 1 on any problem")
    p.add_argument("--scheduler", choices=("fifo", "asha"), help="the scheduler's type (overrides the file)")
    p.add_argument("--models", help="comma-separated model names: the model axis (overrides the file)")
    p.add_argument("--max-concurrent-trials", type=_concurrency, help="'auto' or a number (overrides the file)")
    p.add_argument("--mlflow", metavar="URI", help="an MLflow tracking URI: each trial one run, the report in the "
                                                   "sweep's run (overrides the file's mlflow:; needs the mlflow extra)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--cluster-config", help="the cluster launcher YAML (cluster/aws-gpu.yaml): 'auto' concurrency "
                                            "then counts the nodes its autoscaler can still add")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's and TensorFlow's own logs, Tune's per-trial detail and the workers' output")
    add_train_flags(p.add_argument_group("TrainConfig fields (each sets that field for every trial)"),
                    overrides=True, skip=("storage", "name"))
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="(re)build the comparison report of a finished or interrupted experiment")
    p.add_argument("experiment", metavar="EXPERIMENT", help="the experiment folder: a path or s3://…")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.set_defaults(func=_cmd_report)


def _cmd_export(args) -> int:
    from tinyray.export import export_model

    from tinyray.data.storage import StorageOptions

    opts = StorageOptions.from_env(args.endpoint_url)
    uri = args.mlflow or os.environ.get("MLFLOW_TRACKING_URI")
    if args.register and not uri:
        raise TinyrayError("--register needs a tracking server: --mlflow URI (or $MLFLOW_TRACKING_URI)")
    if args.register:
        from tinyray.tracking import check_tracking

        check_tracking(uri)  # before anything is written
    dest = export_model(args.experiment, args.to, args.trial, opts, force=args.force)
    print(f"exported to {dest}")
    if args.register:
        from tinyray.export import register_export

        version = register_export(dest, args.register, uri, opts)
        print(f"registered {args.register!r} version {version} at {uri}")
    return 0


def _cmd_predict(args) -> int:
    from tinyray.data import storage
    from tinyray.predict import Export, predict_batch, predict_files, print_predictions

    if args.top < 1:
        raise TinyrayError(f"--top must be at least 1, got {args.top}")
    from tinyray.console import quiet_driver
    from tinyray.data.storage import StorageOptions

    quiet_driver(args.verbose)  # before TensorFlow loads

    opts = StorageOptions.from_env(args.endpoint_url)
    export = Export(args.model, opts)
    batch = [s for s in args.inputs if storage.is_s3(s) or os.path.isdir(s)]
    if not batch:
        missing = [f for f in args.inputs if not os.path.exists(f)]
        if missing:
            raise TinyrayError(f"{missing[0]} does not exist" + (f" (and {len(missing) - 1} more)" if missing[1:] else ""))
        done, skipped = predict_files(export, args.inputs, args.top)
        print_predictions(done, skipped, args.json)
        return 0
    from tinyray.cluster import ensure_ray

    ensure_ray(opts, args.address, verbose=args.verbose)
    out = predict_batch(export, args.inputs, args.out, args.top, opts, fmt=args.format, force=args.force)
    for s in out["skipped"]:
        print(f"skipped {s['file']}: {s['reason']}", file=sys.stderr)
    print(f"{out['images']} images: {out['predicted']} predicted, {len(out['skipped'])} skipped → {out['out']}")
    return 0


def _register_use(sub) -> None:
    p = sub.add_parser("export", help="write an experiment's winner (or --trial) as a self-contained model folder")
    p.add_argument("experiment", metavar="EXPERIMENT", help="the experiment folder: a path or s3://…")
    p.add_argument("--to", required=True, help="the folder to write: a path or s3://…")
    p.add_argument("--trial", help="a trial folder or run name from the report (default: the best val top-1)")
    p.add_argument("--force", action="store_true",
                   help="replace what --to holds, whole (without it, a folder that holds files is refused)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--register", metavar="NAME",
                   help="also register the export in MLflow's Model Registry as a new version of NAME")
    p.add_argument("--mlflow", metavar="URI", help="the tracking server for --register (default: $MLFLOW_TRACKING_URI)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("predict", help="top-k classes for images: files here, folders or s3:// prefixes as Ray "
                                       "Data batch inference")
    p.add_argument("model", metavar="MODEL", help="a folder (or s3:// prefix) written by tinyray export")
    p.add_argument("inputs", metavar="IMAGE_OR_PREFIX", nargs="+",
                   help="image files; or folders / s3:// prefixes for batch inference into --out")
    p.add_argument("--top", type=int, default=5, help="classes per image (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {file, top: [{wnid, name, prob}]}")
    p.add_argument("--out", default="predictions.parquet",
                   help="batch inference: a .parquet or .csv file, local or s3:// (written by this process a block at "
                        "a time), or a folder or s3:// prefix that Ray Data writes into from the cluster, --format "
                        "files (default %(default)s)")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet",
                   help="the files' format when --out is a folder or prefix (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace what an --out folder or prefix holds")
    p.add_argument("--address", help="Ray cluster address for batch inference (default: $RAY_ADDRESS, else local)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--verbose", action="store_true", help="show Ray's and TensorFlow's own logs")
    p.set_defaults(func=_cmd_predict)


def _cmd_serve(args) -> int:
    from tinyray.data.storage import StorageOptions

    try:
        from tinyray.serve import serve_command
    except ImportError as e:  # ray[serve]'s own packages (fastapi, uvicorn, grpc reflection)
        raise TinyrayError(f"tinyray serve needs the serve extra ({e.name or e} is missing): "
                           "pip install 'tinyray[serve]'") from None
    serve_command(args.export, StorageOptions.from_env(args.endpoint_url), host=args.host, port=args.port,
                  replicas=args.replicas, cpus=args.cpus_per_replica, gpus=args.gpus_per_replica, top=args.top,
                  max_bytes=args.max_bytes, address=args.address, verbose=args.verbose)
    return 0


def _register_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve an export on Ray Serve: POST an image to /predict, get its top-k as JSON",
                       description="Deploys the export as a Ray Serve application and serves until Ctrl-C (or "
                                   "SIGTERM), then deletes it. POST /predict takes one image, as raw bytes or a "
                                   "multipart file, and answers what `tinyray predict --json` prints for it; an "
                                   "unreadable or oversized image is a 400 with one line. Needs the serve extra.")
    p.add_argument("export", metavar="EXPORT", help="a folder (or s3:// prefix) written by tinyray export")
    p.add_argument("--port", type=int, default=8000, help="the HTTP port (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (default %(default)s; 0.0.0.0 for every interface)")
    p.add_argument("--replicas", type=int, default=1, help="model replicas (default %(default)s)")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (default %(default)s)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs per replica (default %(default)s)")
    p.add_argument("--top", type=int, default=5, help="classes per answer, unless a request asks ?top=K "
                                                      "(default %(default)s)")
    p.add_argument("--max-bytes", type=int, default=8 << 20, metavar="N",
                   help="the largest request body (default 8 MiB)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--verbose", action="store_true", help="show Ray's and Serve's own logs")
    p.set_defaults(func=_cmd_serve)


def _register_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="check the cluster can run a trial: one probe per worker shape, one table",
                       description="Runs one small Ray task asking what a trial worker asks for (so an autoscaling "
                                   "cluster starts a node of that type) and prints, per node: versions, the GPUs "
                                   "TensorFlow sees and the CUDA/cuDNN/NCCL it was built with and loaded, whether "
                                   "--data is readable with that node's identity and its region, free disk and "
                                   "memory. Exit 1 with a line per failure.")
    p.add_argument("--data", help="a staged dataset (s3://… or a folder) whose manifest each node must read")
    p.add_argument("--gpus", type=float, default=0.0, help="GPUs per worker, as the trials ask (default 0)")
    p.add_argument("--cpus", type=float, default=1.0, help="CPUs per worker, as the trials ask (default 1)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    p.set_defaults(func=_cmd_doctor)


def _cmd_doctor(args) -> int:
    from tinyray import doctor
    from tinyray.cluster import ensure_ray, running_autoscaler_config
    from tinyray.data.storage import StorageOptions

    opts = StorageOptions.from_env(args.endpoint_url)
    if args.data:
        opts = opts.for_bucket(args.data)
    ensure_ray(opts, args.address, verbose=args.verbose)
    driver = doctor.probe(args.data, args.endpoint_url, 0)
    driver["shape"] = "driver"
    rows, failures = doctor.run_probes([(args.cpus, args.gpus)], args.data, args.endpoint_url,
                                       autoscaling=bool(running_autoscaler_config()))
    failures = [f"driver node {driver['node']}: {f}" for f in driver["failures"]] + failures
    print(doctor.table([driver, *rows]))
    for line in failures:
        print(f"FAIL {line}")
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


def reference_markdown() -> str:
    """docs/reference.md, generated from TrainConfig and from the parser itself, so it cannot
    drift from the code (tests/test_cli.py fails when the file is out of date)."""
    import dataclasses

    from tinyray.config import FIELDS, field_type, flag

    def cell(text) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    out = ["# Reference", "", "Generated by `tinyray reference > docs/reference.md`; a test fails when it is out of date.",
           "", "## TrainConfig fields", "",
           "Each field is a `tinyray train` flag, a sweep axis, a column of the report and a key of result.json.", "",
           "| field | flag | type | default | choices | what |", "|---|---|---|---|---|---|"]
    for name, f in FIELDS.items():
        kind, optional = field_type(name)
        default = "(required)" if f.default is dataclasses.MISSING else f"`{f.default!r}`"
        choices = ", ".join(f"`{c}`" for c in f.metadata["choices"] or ())
        out.append(f"| `{name}` | `{flag(name)}` | {kind.__name__}{' or None' if optional else ''} | {default} | "
                   f"{choices} | {cell(f.metadata['help'])} |")
    out += ["", "## Commands", ""]

    def walk(parser, path):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        helps = {c.dest: c.help for a in subs for c in a._choices_actions}
        args = [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if path and (args or not subs):
            out.extend([f"### `{' '.join(path)}`", "", cell(parser.description or helps_of.get(tuple(path), "")), ""])
            if args:
                out.extend(["| argument | what |", "|---|---|"])
                for a in args:
                    name = ", ".join(a.option_strings) or a.metavar or a.dest
                    text = (a.help or "") % {"default": a.default} if a.help and "%(" in a.help else (a.help or "")
                    out.append(f"| `{name}` | {cell(text)} |")
                out.append("")
        for a in subs:
            for name, child in a.choices.items():
                helps_of[(*path, name)] = helps.get(name, "")
                walk(child, [*path, name])

    helps_of: dict = {}
    walk(build_parser(), [])
    return "\n".join(out).rstrip() + "\n"


# Each stage adds its subcommands through a function taking the subparsers object.
_REGISTRARS: list = [_register_data, _register_train, _register_sweep, _register_use, _register_serve, _register_doctor]


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
