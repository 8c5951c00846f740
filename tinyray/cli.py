"""The ``tinyray`` command. Each subcommand parses its flags and calls one tinyray function.

A user's mistake (TinyrayError) is printed as one line, ``tinyray: error: ...``, exit code 1;
argparse's own usage errors exit 2. Heavy imports (TensorFlow, Ray) happen inside the handlers
so ``tinyray --help`` and ``tinyray models --json`` stay fast.
"""
from __future__ import annotations

import argparse
import json
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


# Later stages add their subcommands here (data, storage, train, sweep, report); each is a
# function taking the subparsers object.
_REGISTRARS: list = []


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
