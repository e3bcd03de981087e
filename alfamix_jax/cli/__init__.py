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
import traceback

from alfamix_jax.cli import report, run, select, strategies
from alfamix_jax.cli.common import PROG

SUBCOMMANDS = {"select": select, "run": run, "report": report, "strategies": strategies}


def build_parser() -> argparse.ArgumentParser:
    from alfamix_jax import __version__

    parser = argparse.ArgumentParser(prog=PROG, description="ALFA-Mix active-learning selection in JAX.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS.values():
        module.add_parser(sub)
    for subparser in sub.choices.values():
        subparser.add_argument("--debug", action="store_true",
                               help="print the full traceback of an error (e.g. in your own config or strategy)")
    return parser


def main(argv=None) -> int:
    """Run a subcommand. Every failure is one line on stderr: a bad input or setting (ValueError)
    or a file the system refuses (OSError: read-only, full disk) exits 2, an error in code (a
    custom strategy or config, or a bug) exits 1 and --debug shows its traceback; Ctrl-C exits 130."""
    args = build_parser().parse_args(argv)  # argparse exits with code 2 and a usage line on bad options
    where = f"{PROG} {args.command}"
    try:
        return SUBCOMMANDS[args.command].command(args)
    except KeyboardInterrupt:
        print(f"{where}: interrupted; nothing finished was lost: rerun the same command to resume",
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns any failure into one line
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"{where}: error: {describe_error(e)}", file=sys.stderr)
        return 2 if isinstance(e, ValueError | OSError) else 1


def describe_error(error: Exception) -> str:
    """One line for an error: a ValueError's own message; an OSError with its path and cause."""
    if isinstance(error, ValueError):
        return str(error)
    if isinstance(error, OSError):
        path = f" {error.filename}" if error.filename else ""
        return f"cannot write or read{path}: {error.strerror or error}"
    return (f"{type(error).__name__}: {error} (in your own code, e.g. a custom strategy or config, or a bug in "
            f"{PROG}; rerun with --debug for the traceback)")
