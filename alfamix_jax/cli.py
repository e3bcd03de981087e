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
import math
import os
import statistics
import sys
import time

import numpy as np

from alfamix_jax.io import load_pool, open_embeddings, save_npz_atomic
from alfamix_jax.selection.validation import validate_pool

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


def _cap_step(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--alpha-cap-step must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"--alpha-cap-step must be a finite number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="ALFA-Mix active-learning selection in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    sel = sub.add_parser("select", help="select the next batch to label from an .npz pool")
    sel.add_argument("--input", required=True, help="POOL.npz: embeddings [N,D], labels [N] (-1 = unlabelled), "
                     "head_weight [C,D], head_bias [C] (logits = z @ W.T + b)")
    sel.add_argument("--budget", required=True, type=_positive_int("--budget"), help="rows to select")
    sel.add_argument("--output", required=True, help="OUT.npz (written atomically)")
    sel.add_argument("--alpha-cap-step", type=_cap_step, default=0.2, help="cap increment (default 0.2)")
    sel.add_argument("--alpha", choices=("closed-form", "learned", "random"), default="closed-form")
    sel.add_argument("--compat", choices=("default", "reference"), default="default",
                     help="default fixes the original's defects; reference reproduces its semantics")
    sel.add_argument("--seed", type=int, default=0, help="PRNG seed (same seed, same selection)")
    sel.add_argument("--repeat", type=_positive_int("--repeat", 0), default=0,
                     help="run R more times and store timing_first_s / timing_steady_s")
    sel.add_argument("--block-size", type=_positive_int("--block-size"), default=4096, help="rows per block")
    sel.add_argument("--max-candidates", type=_positive_int("--max-candidates"), default=65536,
                     help="most candidates k-means clusters (a random subset beyond; diagnostics say so)")
    sel.add_argument("--no-compile-cache", action="store_true",
                     help="do not use the persistent XLA compilation cache")
    sel.add_argument("--embeddings", default=None, metavar="POOL.npy",
                     help="embeddings [N,D] as a .npy, memory-mapped and streamed through the devices in blocks "
                     "(pools larger than memory); --input then needs only labels, head_weight, head_bias. "
                     "Closed-form alpha, default compat")
    sel.add_argument("--devices", type=_positive_int("--devices"), default=None,
                     help="with --embeddings: how many of this host's devices the mesh spans (default: all)")
    sel.add_argument("--stream-block-size", type=_positive_int("--stream-block-size"), default=65536,
                     help="with --embeddings: rows per device per streamed block (default 65536)")

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


def _streamed_selector(args, num_classes):
    """The sharded selector over this host's devices, for --embeddings."""
    if args.alpha != "closed-form" or args.compat != "default":
        raise ValueError("--embeddings streams the pool with the closed-form alpha and default compat; "
                         "drop --alpha/--compat, or pass the embeddings inside --input")
    import jax

    from alfamix_jax.selection.mesh import pool_mesh
    from alfamix_jax.selection.sharded import make_sharded_selector

    local = jax.local_devices()
    if args.devices is not None and args.devices > len(local):
        raise ValueError(f"--devices {args.devices}: this host has {len(local)} device(s)")
    mesh = pool_mesh(local[: args.devices or len(local)])
    return make_sharded_selector(
        mesh=mesh, budget=args.budget, num_classes=num_classes, alpha_cap_step=args.alpha_cap_step,
        block_size=args.block_size, stream_block_size=args.stream_block_size,
        max_candidates=max(args.max_candidates, args.budget),
    )


def run_select(args) -> dict:
    if args.embeddings is None:
        pool = load_pool(args.input)
    else:
        pool = load_pool(args.input, keys=("labels", "head_weight", "head_bias"))
        pool["embeddings"] = open_embeddings(args.embeddings)
    validate_pool(pool["embeddings"], pool["labels"], pool["head_weight"], pool["head_bias"], budget=args.budget,
                  scan_embeddings=args.embeddings is None)
    if not args.no_compile_cache:
        _enable_compile_cache()
    import jax
    import jax.numpy as jnp

    from alfamix_jax import LinearHead, make_alfamix_selector

    num_classes = pool["head_weight"].shape[0]
    key = jax.random.key(args.seed)
    if args.embeddings is None:
        select = make_alfamix_selector(
            budget=args.budget, num_classes=num_classes, alpha=args.alpha, compat=args.compat,
            alpha_cap_step=args.alpha_cap_step, block_size=args.block_size,
            max_candidates=max(args.max_candidates, args.budget),
        )
        embeddings = jnp.asarray(pool["embeddings"], jnp.float32)
        labels = jnp.asarray(pool["labels"], jnp.int32)
    else:
        select = _streamed_selector(args, num_classes)
        embeddings = pool["embeddings"]  # memory-mapped: read block by block
        labels = np.asarray(pool["labels"], np.int32)
    head = LinearHead(jnp.asarray(pool["head_weight"], jnp.float32), jnp.asarray(pool["head_bias"], jnp.float32))

    def timed():
        start = time.perf_counter()
        result = jax.block_until_ready(select(key, embeddings, labels, head))
        return result, time.perf_counter() - start

    result, first = timed()
    steady = [timed()[1] for _ in range(args.repeat)]
    out = dict(
        selected=np.asarray(result.selected).astype(np.int64),
        candidates=np.asarray(result.candidates)[: pool["labels"].shape[0]],  # the mesh pads rows past N
        **{name: np.asarray(value) for name, value in result.diagnostics.items()},
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
