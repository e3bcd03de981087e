"""`alfamix-jax select`: one ALFA-Mix selection from arrays a model (any framework) produced."""
import argparse
import os
import statistics
import sys
import time

import numpy as np

from alfamix_jax.cli.common import enable_compile_cache, positive_int
from alfamix_jax.io import load_pool, open_embeddings, save_npz_atomic
from alfamix_jax.selection.settings import SelectorSettings, SettingError, flat_fields, parse_value, settings_from_flat


def add_parser(sub) -> None:
    sel = sub.add_parser("select", help="select the next batch to label from an .npz pool")
    sel.add_argument("--input", required=True, help="POOL.npz: embeddings [N,D], labels [N] (-1 = unlabelled), "
                     "head_weight [C,D], head_bias [C] (logits = z @ W.T + b)")
    sel.add_argument("--budget", required=True, type=positive_int("--budget"), help="rows to select")
    sel.add_argument("--output", required=True, help="OUT.npz (written atomically)")
    sel.add_argument("--seed", type=int, default=0, help="PRNG seed (same seed, same selection)")
    sel.add_argument("--repeat", type=positive_int("--repeat", 0), default=0,
                     help="run R more times and store timing_first_s / timing_steady_s")
    sel.add_argument("--no-compile-cache", action="store_true",
                     help="do not use the persistent XLA compilation cache")
    sel.add_argument("--embeddings", default=None, metavar="POOL.npy",
                     help="embeddings [N,D] as a .npy, memory-mapped and streamed through the devices in blocks "
                     "(pools larger than memory); --input then needs only labels, head_weight, head_bias. "
                     "Closed-form alpha, default compat")
    sel.add_argument("--devices", type=positive_int("--devices"), default=None,
                     help="with --embeddings: how many of this host's devices the mesh spans (default: all)")
    add_setting_options(sel)


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
        enable_compile_cache()
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


def command(args) -> int:
    out = run_select(args)
    print(
        f"selected {out['selected'].size} rows: {int(out['num_from_candidates'])} from "
        f"{int(out['num_candidates'])} candidates after {int(out['caps_tried'])} cap(s), "
        f"{int(out['num_filled'])} filled -> {args.output}"
    )
    return 0
