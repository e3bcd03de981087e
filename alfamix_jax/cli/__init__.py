"""`alfamix-jax`: the command line.

    alfamix-jax select --input POOL.npz --budget B --output OUT.npz
    alfamix-jax select --input HEAD.npz --embeddings POOL.npy --budget B --output OUT.npz
    alfamix-jax run --config CONFIG --workdir DIR [--set key.path=value ...]
    alfamix-jax report DIR [DIR ...]

`select` is framework-agnostic: it takes embeddings and a linear head that a
PyTorch (or any) model already produced. Bad input exits with code 2 and one
line naming the key or option, and writes no output file.
"""
import argparse
import sys

from alfamix_jax.cli import report, run, select
from alfamix_jax.cli.common import PROG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="ALFA-Mix active-learning selection in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    select.add_parser(sub)
    run.add_parser(sub)
    report.add_parser(sub)
    return parser


COMMANDS = {"select": select.command, "run": run.command, "report": report.command}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits with code 2 and a usage line on bad options
    try:
        return COMMANDS[args.command](args)
    except ValueError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
