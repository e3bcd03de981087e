#!/usr/bin/env python3
"""Steady-state selection time of this tree against an earlier git revision, side by side
in one run, so that a speed claim is a ratio measured under the same load.

    .venv/bin/python experiments/compare_revisions.py --baseline REV [--sizes 20000] [--dim 512]
        [--budget 1000] [--rounds 5] [--repeats 15] [--alpha closed-form]

The baseline is exported with `git archive` into a temporary folder. Each round runs one
fresh process per tree, alternating which goes first; a process builds the benchmark pool
(the generator the original was timed on, as in benchmark_selection.py), calls
`make_alfamix_selector(budget=, num_classes=)` once to compile, then times `repeats`
calls and prints their median. The table gives, per N, the median over rounds for each
tree, their ratio (baseline / this tree: above 1 means this tree is faster) and whether
both selected the same batch. Both trees must accept `select(key, embeddings, labels,
LinearHead(W, b))`, which every revision since the first does.
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
    """Runs inside one tree (PYTHONPATH): time the selection, print one JSON line."""
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, str(REPO / "experiments"))
    from benchmark_selection import POOL_LABELLED, POOL_SEED, POOL_SEP, make_pool

    import alfamix_jax
    from alfamix_jax import LinearHead, make_alfamix_selector

    pool = make_pool(POOL_SEED, args.n, POOL_LABELLED, args.dim, 10, POOL_SEP)
    x, labels = jnp.asarray(pool["embeddings"]), jnp.asarray(pool["labels"], jnp.int32)
    head = LinearHead(jnp.asarray(pool["head_weight"]), jnp.asarray(pool["head_bias"]))
    select = make_alfamix_selector(budget=args.budget, num_classes=10, alpha=args.alpha)
    key = jax.random.key(0)
    first = jax.block_until_ready(select(key, x, labels, head))
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(select(key, x, labels, head))
        times.append(time.perf_counter() - start)
    print("RESULT " + json.dumps(dict(steady_s=statistics.median(times), tree=os.path.dirname(alfamix_jax.__file__),
                                      selected=np.asarray(first.selected).tolist())), flush=True)


def run_tree(tree: Path, n: int, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), JAX_PLATFORMS="cpu")
    cmd = [sys.executable, __file__, "--worker", "--n", str(n), "--dim", str(args.dim), "--budget", str(args.budget),
           "--repeats", str(args.repeats), "--alpha", args.alpha]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    assert Path(result["tree"]).resolve() == (tree / "alfamix_jax").resolve(), result["tree"]
    return result


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
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.baseline:
        ap.error("--baseline REV is required")
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive.stdout, check=True)
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.baseline], capture_output=True,
                             text=True, check=True).stdout.strip()
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        trees = {f"baseline {rev}": baseline, f"this tree (HEAD {head} + changes)": REPO}
        rows = []
        for n in (int(s) for s in args.sizes.split(",")):
            times: dict[str, list[float]] = {name: [] for name in trees}
            batches = {}
            for r in range(args.rounds):
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in order:
                    result = run_tree(trees[name], n, args)
                    times[name].append(result["steady_s"])
                    batches[name] = result["selected"]
                print(f"N={n:,} round {r + 1}: " + ", ".join(f"{k}: {v[-1] * 1e3:.1f} ms" for k, v in times.items()),
                      file=sys.stderr, flush=True)
            old, new = (statistics.median(times[name]) for name in trees)
            rows.append((n, old, new, old / new, len({json.dumps(b) for b in batches.values()}) == 1, times))
    names = list(trees)
    print(f"\nSteady state (median of {args.repeats} calls per process, median over {args.rounds} processes per "
          f"tree), D={args.dim}, B={args.budget}, alpha {args.alpha}, load average {os.getloadavg()[0]:.2f}\n")
    print(f"| N | {names[0]} | {names[1]} | ratio | same batch | every process (ms) |")
    print("|---:|---:|---:|---:|---|---|")
    for n, old, new, ratio, same, times in rows:
        spread = "; ".join(f"{' '.join(f'{t * 1e3:.1f}' for t in v)}" for v in times.values())
        same_batch = "yes" if same else "NO"
        print(f"| {n:,} | {old * 1e3:.1f} ms | {new * 1e3:.1f} ms | {ratio:.2f} | {same_batch} | {spread} |")


if __name__ == "__main__":
    main()
