#!/usr/bin/env python3
"""Steady-state selection time of this tree against an earlier git revision, side by side
in one run, so that a speed claim is a ratio measured under the same load.

    .venv/bin/python experiments/compare_revisions.py --baseline REV [--sizes 20000] [--dim 512]
        [--budget 1000] [--rounds 5] [--repeats 15] [--alpha closed-form]

The baseline's package is exported with `git archive` into a temporary folder and renamed
`alfamix_baseline` (its imports rewritten), so one process imports both. Each round is a
fresh process: it builds the benchmark pool (the generator the original was timed on, as
in benchmark_selection.py), builds `make_alfamix_selector(budget=, num_classes=)` from
each package, compiles both, then alternates calls between them `repeats` times, so the
machine's load falls on both alike. The table gives, per N, the median over rounds of
each process's median, their ratio (baseline / this tree: above 1 means this tree is
faster) and whether both selected the same batch. Both trees must accept `select(key,
embeddings, labels, LinearHead(W, b))`, which every revision since the first does.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    """One process: both packages side by side; print one JSON line."""
    import importlib
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, str(REPO / "experiments"))
    sys.path.insert(0, args.baseline_dir)
    from benchmark_selection import POOL_LABELLED, POOL_SEED, POOL_SEP, make_pool

    pool = make_pool(POOL_SEED, args.n, POOL_LABELLED, args.dim, 10, POOL_SEP)
    x, labels = jnp.asarray(pool["embeddings"]), jnp.asarray(pool["labels"], jnp.int32)
    key = jax.random.key(0)
    selectors, heads, batches = {}, {}, {}
    for name in ("alfamix_baseline", "alfamix_jax"):
        package = importlib.import_module(name)
        heads[name] = package.LinearHead(jnp.asarray(pool["head_weight"]), jnp.asarray(pool["head_bias"]))
        selectors[name] = package.make_alfamix_selector(budget=args.budget, num_classes=10, alpha=args.alpha)
        batches[name] = np.asarray(jax.block_until_ready(selectors[name](key, x, labels, heads[name])).selected)
    times: dict[str, list[float]] = {name: [] for name in selectors}
    for _ in range(args.repeats):
        for name, select in selectors.items():
            start = time.perf_counter()
            jax.block_until_ready(select(key, x, labels, heads[name]))
            times[name].append(time.perf_counter() - start)
    same = bool(np.array_equal(batches["alfamix_baseline"], batches["alfamix_jax"]))
    print("RESULT " + json.dumps(dict(baseline_s=statistics.median(times["alfamix_baseline"]),
                                      this_s=statistics.median(times["alfamix_jax"]), same=same)), flush=True)


def export_baseline(rev: str, folder: Path) -> None:
    """The package at `rev`, as `folder/alfamix_baseline` with its imports renamed."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "alfamix_jax"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    (folder / "alfamix_jax").rename(folder / "alfamix_baseline")
    for path in (folder / "alfamix_baseline").rglob("*.py"):
        path.write_text(path.read_text().replace("alfamix_jax", "alfamix_baseline"))


def run_process(n: int, args, baseline_dir: Path) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, __file__, "--worker", "--n", str(n), "--dim", str(args.dim), "--budget", str(args.budget),
           "--repeats", str(args.repeats), "--alpha", args.alpha, "--baseline-dir", str(baseline_dir)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", help="git revision to compare against")
    ap.add_argument("--sizes", default="20000", help="unlabelled pool sizes, comma-separated")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--alpha", default="closed-form")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--baseline-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.baseline:
        ap.error("--baseline REV is required")
    with tempfile.TemporaryDirectory() as tmp:
        export_baseline(args.baseline, Path(tmp))
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.baseline], capture_output=True,
                             text=True, check=True).stdout.strip()
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        rows = []
        for n in (int(s) for s in args.sizes.split(",")):
            results = [run_process(n, args, Path(tmp)) for _ in range(args.rounds)]
            for r, result in enumerate(results):
                print(f"N={n:,} process {r + 1}: baseline {result['baseline_s'] * 1e3:.1f} ms, this tree "
                      f"{result['this_s'] * 1e3:.1f} ms", file=sys.stderr)
            old = statistics.median(r["baseline_s"] for r in results)
            new = statistics.median(r["this_s"] for r in results)
            ratios = [r["baseline_s"] / r["this_s"] for r in results]
            rows.append((n, old, new, statistics.median(ratios), min(ratios), max(ratios),
                         all(r["same"] for r in results)))
    print(f"\nSteady state, baseline {rev} against this tree (HEAD {head} + changes), one process per round "
          f"({args.rounds}), {args.repeats} alternating calls each; D={args.dim}, B={args.budget}, alpha "
          f"{args.alpha}, load average {os.getloadavg()[0]:.2f}\n")
    print("| N | baseline | this tree | ratio (median over processes) | ratio range | same batch |")
    print("|---:|---:|---:|---:|---|---|")
    for n, old, new, ratio, low, high, same in rows:
        print(f"| {n:,} | {old * 1e3:.1f} ms | {new * 1e3:.1f} ms | {ratio:.3f} | {low:.3f} to {high:.3f} | "
              f"{'yes' if same else 'NO'} |")

if __name__ == "__main__":
    main()
