"""`alfamix-jax select`: one ALFA-Mix selection from arrays a model (any framework) produced."""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings

import numpy as np

from alfamix_jax import files
from alfamix_jax.cli.common import enable_compile_cache, positive_int
from alfamix_jax.io import FLOAT32_MAX, read_pool
from alfamix_jax.selection.settings import (
    MAX_CAPS,
    SelectorSettings,
    SettingError,
    check_seed,
    flat_fields,
    parse_value,
    settings_from_flat,
)


def add_parser(sub) -> None:
    sel = sub.add_parser("select", help="select the next batch to label from an .npz pool")
    sel.add_argument("--input", required=True, help="POOL.npz: embeddings [N,D], labels [N] (-1 = unlabelled), "
                     "head_weight [C,D], head_bias [C] (logits = z @ W.T + b)")
    sel.add_argument("--budget", required=True, type=positive_int("--budget"), help="rows to select")
    sel.add_argument("--output", required=True, help="OUT.npz (written atomically; checked before any work: not an "
                     "input, a directory, a link or a special file, in a writable directory)")
    sel.add_argument("--seed", type=int, default=0, help="PRNG seed in [0, 2**32 - 1] (same seed, same selection)")
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
    step = given.get("alpha_cap_step")
    if isinstance(step, float) and step > 0 and math.isinf(1.0 / step):  # the settings' cap count would overflow
        raise ValueError(f"--alpha-cap-step: got {step!r}, which tries more than {MAX_CAPS} caps; expected a step "
                         f">= {1.0 / MAX_CAPS} (at most {MAX_CAPS} caps)")
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


def check_arguments(args) -> tuple[SelectorSettings, int, str]:
    """Everything checkable without reading an input: the settings, --seed and --output (a bad
    one fails at once, before the pool is read or anything computed). -> (settings, seed, output path)."""
    settings = settings_from_args(args)
    seed = check_seed("--seed", args.seed)
    output = files.check_output_path("--output", args.output,
                                     inputs={"--input": args.input, "--embeddings": args.embeddings})
    return settings, seed, output


def _streamed_error(error: ValueError, args, pool) -> ValueError:
    """The selector's report of a non-finite streamed row, naming --embeddings (a float64 value
    beyond float32's range becomes inf in the blockwise cast, and is found there)."""
    message = str(error)
    if args.embeddings is None or not message.startswith("embeddings: row"):
        return error
    note = ""
    if np.finfo(pool["embeddings"].dtype).max > FLOAT32_MAX:
        note = (f"; a {pool['embeddings'].dtype} value beyond float32's range (+-{FLOAT32_MAX:.4g}) becomes inf "
                "when the streamed rows are cast to float32")
    return ValueError(f"--embeddings {args.embeddings!r}: {message}{note}")


def _write(output: str, option_value: str, out: dict[str, np.ndarray]) -> None:
    """Write the result .npz atomically; an OSError (full disk, read-only folder) is a ValueError
    naming --output and the cause (write_atomic has removed its temporary file)."""
    try:
        files.write_atomic(output, lambda f: np.savez(f, **out))
    except OSError as e:
        cause = e.strerror or (os.strerror(e.errno) if e.errno else str(e))
        raise ValueError(f"--output {option_value!r}: could not write it ({cause}); nothing was written: free space "
                         "or choose another --output") from None


def run_select(args) -> dict:
    """Check the options and --output, read and check the pool, select, write --output atomically.
    Every refusal is a ValueError naming the option or key (exit 2). -> the arrays written."""
    if os.getcwd() not in sys.path:  # a part given as "module:function" may live in the current folder
        sys.path.insert(0, os.getcwd())
    settings, seed, output = check_arguments(args)
    pool = read_pool(args.input, args.embeddings)  # every header checked before any array is read
    if not args.no_compile_cache:
        enable_compile_cache()
    import jax

    from alfamix_jax.selection.heads import LinearHead
    from alfamix_jax.selection.selector import make_alfamix_selector

    weight = pool["head_weight"]
    select = make_alfamix_selector(budget=args.budget, num_classes=max(2, weight.shape[0]), settings=settings,
                                   mesh=_pool_mesh(args))
    if args.embeddings is not None and not select.streams:
        raise ValueError("--embeddings: the pool is streamed, which needs the closed-form alpha with the linear "
                         "shortcut, compat default and built-in anchors and diversity; pass the embeddings inside "
                         "--input for these settings")
    head = LinearHead(weight, pool["head_bias"])  # the selector checks every array, naming it, before compiling
    key = jax.random.key(seed)

    def timed():
        start = time.perf_counter()
        result = jax.block_until_ready(select(key, pool["embeddings"], pool["labels"], head))
        return result, time.perf_counter() - start

    try:
        with warnings.catch_warnings():  # a streamed float64 row cast to inf is reported as an error below
            warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
            result, first = timed()
            steady = [timed()[1] for _ in range(args.repeat)]
    except ValueError as e:
        raise _streamed_error(e, args, pool) from None
    out = dict(
        selected=np.asarray(result.selected).astype(np.int64),
        candidates=np.asarray(result.candidates)[: pool["labels"].shape[0]],  # the mesh pads rows past N
        **{name: np.asarray(value) for name, value in result.diagnostics._asdict().items()},
    )
    if args.repeat:
        out["timing_first_s"] = np.float64(first)
        out["timing_steady_s"] = np.float64(statistics.median(steady))
    _write(output, args.output, out)
    return out


def command(args) -> int:
    out = run_select(args)
    print(
        f"selected {out['selected'].size} rows: {int(out['num_from_candidates'])} from "
        f"{int(out['num_candidates'])} candidates after {int(out['caps_tried'])} cap(s), "
        f"{int(out['num_filled'])} filled -> {args.output}"
    )
    return 0
