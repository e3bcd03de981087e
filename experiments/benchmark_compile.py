#!/usr/bin/env python3
"""Compile-bound times of this tree against an earlier git revision, side by side in one run:
each figure from fresh processes, the two trees alternating, so the machine's load falls on
both alike.

    .venv/bin/python experiments/benchmark_compile.py --baseline REV [--rounds 3] [--out FILE]

Per process (one tree, nothing compiled before, no persistent compilation cache):
- `init resnet18` / `init cnn`: `make_model(..., input_shape=(32, 32, 3))` until its weights
  are ready (an eager init compiles the draws it makes);
- `20k first call`: the 20k benchmark pool (benchmark_selection.py's generator, B=500, the
  closed form, k-means), the selector's first call, compiles included;
- `20k search / finish compile`: the two programs of that call compiled again from their
  lowered form (`jax.clear_caches()` first; best of 3), and the finish program's fusions;
- `learned / random search compile`: the search program of learned and random alpha on a
  2,500 x 16 pool (tests/support.py's generator, 5 classes), best of 3.
The table gives each figure's median over rounds per tree and their ratio (baseline / this
tree: above 1 means this tree is faster), and whether both trees selected the same batch.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES = ["init resnet18", "init cnn", "20k first call", "20k search compile", "20k finish compile",
           "20k finish fusions", "learned search compile", "random search compile"]


def _best_compile(fn, *args, **kwargs) -> float:
    import jax

    times = []
    for _ in range(3):
        jax.clear_caches()
        lowered = fn.lower(*args, **kwargs)
        start = time.perf_counter()
        lowered.compile()
        times.append(time.perf_counter() - start)
    return min(times)


def _init_seconds(name: str) -> float:
    import jax
    from flax import nnx

    from alfamix_jax.experiment.models import make_model

    start = time.perf_counter()
    model = make_model(name, input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(0))
    jax.block_until_ready(nnx.state(model))
    return time.perf_counter() - start


def _selection_figures() -> dict:
    import hashlib

    import jax
    import jax.numpy as jnp
    import numpy as np
    from benchmark_selection import POOL_LABELLED, POOL_SEED, POOL_SEP, make_pool, pool_on_device

    from alfamix_jax import make_alfamix_selector
    from alfamix_jax.selection import stages

    x, labels, head = pool_on_device(make_pool(POOL_SEED, 20000, POOL_LABELLED, 512, 10, POOL_SEP))
    key, select = jax.random.key(0), make_alfamix_selector(budget=500, num_classes=10, alpha_cap_step=0.2)
    start = time.perf_counter()
    batch = np.asarray(jax.block_until_ready(select(key, x, labels, head)).selected)
    out = {"20k first call": time.perf_counter() - start, "batch": hashlib.md5(batch.tobytes()).hexdigest()[:10]}
    out["20k search compile"] = _best_compile(select.stages["search"], key, x, labels, head, x, labels)
    found, summary = select.stages["search"](key, x, labels, head, x, labels)
    sizing = stages.kmeans_sizing(select.plan, int(jax.device_get(summary)[0]), pool_size=x.shape[0])
    finish = select.stages["finish_diversify"]
    out["20k finish compile"] = _best_compile(finish, key, x, labels, found, pool_size=x.shape[0], buffer=None,
                                              kmeans_sizing=sizing)
    text = finish.lower(key, x, labels, found, pool_size=x.shape[0], buffer=None, kmeans_sizing=sizing).compile()
    out["20k finish fusions"] = text.as_text().count("calls=%fused")
    sys.path.insert(0, str(REPO / "tests"))
    from support import make_pool as small_pool

    sx, slabels, _, shead = small_pool(1, n=2500, dim=16, num_classes=5, sep=1.0)
    sx, slabels = jnp.asarray(sx), jnp.asarray(slabels)
    for alpha in ("learned", "random"):
        small = make_alfamix_selector(budget=50, num_classes=5, alpha=alpha, alpha_cap_step=0.1)
        out[f"{alpha} search compile"] = _best_compile(small.stages["search"], key, sx, slabels, shead, sx, slabels)
    return out


def worker(args) -> None:
    """One process, one tree, one group of figures: print one JSON line."""
    import alfamix_jax

    assert Path(alfamix_jax.__file__).resolve().is_relative_to(Path(args.tree).resolve()), alfamix_jax.__file__
    out = {f"init {args.group}": _init_seconds(args.group)} if args.group != "selection" else _selection_figures()
    print("RESULT " + json.dumps(out), flush=True)


def run_worker(tree: str, group: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["PYTHONPATH"] = tree
    proc = subprocess.run([sys.executable, __file__, "--worker", "--tree", tree, "--group", group], cwd=tree,
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the {group} worker on {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", help="git revision to compare with (required)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--group", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.baseline:
        ap.error("--baseline: give the git revision to compare with, e.g. --baseline HEAD~3")
    results: dict[str, list[dict]] = {"baseline": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="alfamix-compile-") as tmp:
        archive = subprocess.run(["git", "archive", args.baseline], cwd=REPO, capture_output=True)
        if archive.returncode:
            ap.error(f"--baseline: no revision {args.baseline!r} here ({archive.stderr.decode().strip()}); "
                     "give a commit of this repository, e.g. HEAD~3")
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        trees = {"baseline": tmp, "this": str(REPO)}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                merged: dict = {}
                for group in ("resnet18", "cnn", "selection"):
                    merged |= run_worker(tree, group)
                results[name].append(merged)
    lines = [f"Compile-bound figures, {args.baseline} against this tree ({args.rounds} rounds, fresh processes, "
             f"alternating; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); seconds unless a count.", "",
             f"| figure | {args.baseline}: median (range) | this tree: median (range) | ratio of medians |",
             "|---|---:|---:|---:|"]
    for figure in FIGURES:
        cells, medians = [], []
        for name in ("baseline", "this"):
            values = [r[figure] for r in results[name]]
            medians.append(statistics.median(values))
            cells.append(f"{medians[-1]:.3g} ({min(values):.3g}-{max(values):.3g})")
        lines.append(f"| {figure} | {cells[0]} | {cells[1]} | {medians[0] / medians[1]:.2f}x |")
    same = {r["batch"] for r in results["baseline"] + results["this"]}
    verdict = "the same in every process" if len(same) == 1 else f"DIFFERS: {sorted(same)}"
    lines += ["", f"The 20k pool's batch: {verdict}."]
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
