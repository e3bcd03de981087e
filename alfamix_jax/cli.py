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
import os
import statistics
import sys
import time

import numpy as np

from alfamix_jax.io import load_pool, open_embeddings, save_npz_atomic
from alfamix_jax.selection.settings import SelectorSettings, SettingError, flat_fields, parse_value, settings_from_flat

PROG = "alfamix-jax"


class UsageError(ValueError):
    pass


def _positive_int(name, minimum=1):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {value}")
        return value

    return parse


def _option(setting: str) -> str:
    """The CLI option of a selector setting: learned.iters -> --learned-iters."""
    return "--" + setting.replace(".", "-").replace("_", "-")


def add_setting_options(parser: argparse.ArgumentParser) -> None:
    """One option per selector setting (SelectorSettings is the one list); parsed by its type,
    checked by SelectorSettings itself."""
    group = parser.add_argument_group("selector settings (SelectorSettings)")
    for name, annotation, field in flat_fields():
        def parse(text, annotation=annotation, name=name):
            try:
                return parse_value(text, annotation, _option(name))
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None

        group.add_argument(_option(name), dest=f"setting:{name}", type=parse, default=None,
                           metavar=name.rpartition(".")[2].upper(),
                           help=f"{field.metadata.get('help', '')} (default {field.default})")


def settings_from_args(args) -> SelectorSettings:
    """The selector settings the options give; a bad one is a ValueError naming its option."""
    given = {key.partition(":")[2]: value for key, value in vars(args).items()
             if key.startswith("setting:") and value is not None}
    try:
        return settings_from_flat(given)
    except SettingError as e:
        raise ValueError(f"{_option(e.field)}: {str(e).partition(': ')[2]}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="ALFA-Mix active-learning selection in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    sel = sub.add_parser("select", help="select the next batch to label from an .npz pool")
    sel.add_argument("--input", required=True, help="POOL.npz: embeddings [N,D], labels [N] (-1 = unlabelled), "
                     "head_weight [C,D], head_bias [C] (logits = z @ W.T + b)")
    sel.add_argument("--budget", required=True, type=_positive_int("--budget"), help="rows to select")
    sel.add_argument("--output", required=True, help="OUT.npz (written atomically)")
    sel.add_argument("--seed", type=int, default=0, help="PRNG seed (same seed, same selection)")
    sel.add_argument("--repeat", type=_positive_int("--repeat", 0), default=0,
                     help="run R more times and store timing_first_s / timing_steady_s")
    sel.add_argument("--no-compile-cache", action="store_true",
                     help="do not use the persistent XLA compilation cache")
    sel.add_argument("--embeddings", default=None, metavar="POOL.npy",
                     help="embeddings [N,D] as a .npy, memory-mapped and streamed through the devices in blocks "
                     "(pools larger than memory); --input then needs only labels, head_weight, head_bias. "
                     "Closed-form alpha, default compat")
    sel.add_argument("--devices", type=_positive_int("--devices"), default=None,
                     help="with --embeddings: how many of this host's devices the mesh spans (default: all)")
    add_setting_options(sel)

    run = sub.add_parser("run", help="run (or resume) an active-learning experiment from a config")
    run.add_argument("--config", required=True,
                     help="a shipped config name (demo, compare_digits, fashion_mnist_mlp, mnist_mlp, "
                     "cifar10_resnet18) or a .py file defining get_config()")
    run.add_argument("--workdir", required=True, help="results.csv, checkpoints and plots go here; rerun to resume")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set train.learning_rate=0.01 --set seeds=1,2")
    run.add_argument("--strategy", dest="only_strategies", action="append", metavar="NAME",
                     help="run only this strategy of the config (repeatable)")
    run.add_argument("--seed", dest="only_seeds", action="append", type=int, metavar="SEED",
                     help="run only this seed of the config (repeatable)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-report", action="store_true", help="do not print the report at the end")
    run.add_argument("--no-compile-cache", action="store_true",
                     help="do not use the persistent XLA compilation cache")

    report = sub.add_parser("report", help="tables, the pairwise t-test matrix and plots from run directories")
    report.add_argument("dirs", nargs="+", metavar="DIR", help="workdirs holding results.csv")
    report.add_argument("--out", default=None, help="where the PNG plots and report.md go (default: FIRST_DIR/report)")
    report.add_argument("--ddof", type=int, choices=(0, 1), default=1,
                        help="std of the paired differences: 1 textbook (default), 0 the original's np.std")
    return parser


def _enable_compile_cache():
    """Reruns of a one-shot CLI call are dominated by compilation: keep
    compiled programs on disk (override with ALFAMIX_JAX_CACHE_DIR)."""
    import jax

    cache = os.environ.get("ALFAMIX_JAX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "alfamix-jax", "xla"
    )
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def _pool_mesh(args):
    """With --embeddings, a mesh of this host's devices (the pool is streamed through it)."""
    if args.embeddings is None:
        return None
    import jax

    from alfamix_jax.selection.mesh import pool_mesh

    local = jax.local_devices()
    if args.devices is not None and args.devices > len(local):
        raise ValueError(f"--devices {args.devices}: this host has {len(local)} device(s)")
    return pool_mesh(local[: args.devices or len(local)])


def run_select(args) -> dict:
    if os.getcwd() not in sys.path:  # a part given as "module:function" may live in the current folder
        sys.path.insert(0, os.getcwd())
    settings = settings_from_args(args)  # before anything is read: a bad option fails at once
    if args.embeddings is None:
        pool = load_pool(args.input)
    else:
        pool = load_pool(args.input, keys=("labels", "head_weight", "head_bias"))
        pool["embeddings"] = open_embeddings(args.embeddings)
    if not args.no_compile_cache:
        _enable_compile_cache()
    import jax

    from alfamix_jax.selection.heads import LinearHead
    from alfamix_jax.selection.selector import make_alfamix_selector

    weight = pool["head_weight"]
    num_classes = max(2, weight.shape[0]) if weight.ndim == 2 else 2  # a bad head is named by the selector's check
    select = make_alfamix_selector(budget=args.budget, num_classes=num_classes, settings=settings,
                                   mesh=_pool_mesh(args))
    if args.embeddings is not None and not select.streams:
        raise ValueError("--embeddings: the pool is streamed, which needs the closed-form alpha with the linear "
                         "shortcut, compat default and built-in anchors and diversity; pass the embeddings inside "
                         "--input for these settings")
    head = LinearHead(weight, pool["head_bias"])  # the selector checks every array, naming it, before compiling
    key = jax.random.key(args.seed)

    def timed():
        start = time.perf_counter()
        result = jax.block_until_ready(select(key, pool["embeddings"], pool["labels"], head))
        return result, time.perf_counter() - start

    result, first = timed()
    steady = [timed()[1] for _ in range(args.repeat)]
    out = dict(
        selected=np.asarray(result.selected).astype(np.int64),
        candidates=np.asarray(result.candidates)[: pool["labels"].shape[0]],  # the mesh pads rows past N
        **{name: np.asarray(value) for name, value in result.diagnostics._asdict().items()},
    )
    if args.repeat:
        out["timing_first_s"] = np.float64(first)
        out["timing_steady_s"] = np.float64(statistics.median(steady))
    save_npz_atomic(args.output, out)
    return out

def run_experiment_command(args) -> int:
    from alfamix_jax.experiment.config import apply_overrides, load_config
    from alfamix_jax.experiment.runner import check_config, run_experiment

    config = apply_overrides(load_config(args.config), args.overrides)
    check_config(config)  # before the compile cache and JAX start: bad configs fail in well under a second
    if not args.no_compile_cache:
        _enable_compile_cache()
    start = time.perf_counter()
    run_experiment(config, args.workdir, strategies=args.only_strategies, seeds=args.only_seeds,
                   progress=not args.no_progress)
    print(f"{config.name}: done in {time.perf_counter() - start:.1f} s; results in "
          f"{os.path.join(args.workdir, 'results.csv')}")
    if not args.no_report:
        from alfamix_jax.experiment.report import render_report

        print(render_report([args.workdir]))
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits with code 2 and a usage line on bad options
    try:
        if args.command == "select":
            out = run_select(args)
            print(
                f"selected {out['selected'].size} rows: {int(out['num_from_candidates'])} from "
                f"{int(out['num_candidates'])} candidates after {int(out['caps_tried'])} cap(s), "
                f"{int(out['num_filled'])} filled -> {args.output}"
            )
            return 0
        if args.command == "run":
            return run_experiment_command(args)
        from alfamix_jax.experiment.report import render_report

        print(render_report(args.dirs, out_dir=args.out, ddof=args.ddof))
        return 0
    except ValueError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
