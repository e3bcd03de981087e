"""Acquisition time and peak memory of every registered strategy (a benchmark, not a test).

    .venv/bin/python experiments/benchmark_strategies.py [--sizes 20000,100000] [--dim 512]
        [--classes 10] [--budget 1000] [--repeats 3] [--only NAME,NAME] [--out FILE.json]

Each (strategy, N) runs in its own process, so its peak RSS is its own: the pool is built
(fixture-like synthetic embeddings, a linear head, labelled rows, 10 MC-dropout passes as
noisy logits for the strategies that need them), then the query runs once (compile + run:
"first") and `--repeats` more times (the median is "steady"). Memory: the process's peak
RSS minus its RSS just before the first query (the pool and JAX itself excluded), and,
for strategies whose query is one jitted function, XLA's compiled temp bytes. Prints a
Markdown table.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from machine import describe


def build_view(n, dim, classes, labelled, passes, seed=0):
    import jax.numpy as jnp
    import numpy as np

    from alfamix_jax.selection.heads import LinearHead
    from alfamix_jax.strategies import PoolView

    rng = np.random.default_rng(seed)
    means = 0.25 * rng.normal(size=(classes, dim))
    true = rng.integers(0, classes, n)
    z = (means[true] + rng.normal(size=(n, dim))).astype(np.float32)
    w = (means + 0.1 * rng.normal(size=means.shape)).astype(np.float32)
    b = (-0.5 * np.sum(means**2, axis=1) + 0.1 * rng.normal(size=classes)).astype(np.float32)
    logits = z @ w.T + b
    labels = np.full(n, -1, np.int32)
    chosen = rng.choice(n, labelled, replace=False)
    labels[chosen] = true[chosen]
    mc = (logits[None] + rng.normal(size=(passes, n, classes))).astype(np.float32) if passes else None
    head = LinearHead(jnp.asarray(w), jnp.asarray(b))
    return PoolView(jnp.asarray(z), jnp.asarray(logits), jnp.asarray(labels), head,
                    mc_logits=None if mc is None else jnp.asarray(mc))


def rss_bytes(field="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def worker(args):
    import jax

    from alfamix_jax.strategies import make_strategy

    strategy = make_strategy(args.strategy, budget=args.budget, num_classes=args.classes)
    passes = strategy.mc_passes if "mc_logits" in strategy.needs else 0
    view = build_view(args.n, args.dim, args.classes, args.labelled, passes)
    jax.block_until_ready(view)
    # Reset the peak so that building the pool does not count (Linux: write 5 to clear_refs).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base = rss_bytes()
    key = jax.random.key(0)
    start = time.perf_counter()
    result = jax.block_until_ready(strategy.query(key, view))
    first = time.perf_counter() - start
    steady = []
    for i in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(strategy.query(jax.random.key(i + 1), view))
        steady.append(time.perf_counter() - start)
    peak = rss_bytes("VmHWM")
    temp = None
    if hasattr(strategy.query, "lower"):
        try:
            temp = strategy.query.lower(key, view).compile().memory_analysis().temp_size_in_bytes
        except Exception:  # noqa: BLE001 - memory analysis is optional per backend
            temp = None
    selected = result.selected
    print(json.dumps(dict(
        strategy=args.strategy, n=args.n, first_s=first, steady_s=statistics.median(steady) if steady else None,
        extra_peak_rss=peak - base, xla_temp=temp, embedding_bytes=args.n * args.dim * 4,
        selected=int(selected.shape[0]), unique=int(len(set(map(int, selected)))),
    )))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--labelled", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=None, help="comma-separated strategy names")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from alfamix_jax.strategies import STRATEGIES

    names = args.only.split(",") if args.only else list(STRATEGIES)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        for name in names:
            cmd = [sys.executable, __file__, "--worker", "--strategy", name, "--n", str(n), "--dim", str(args.dim),
                   "--classes", str(args.classes), "--budget", str(args.budget), "--labelled", str(args.labelled),
                   "--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
            if proc.returncode != 0:
                rows.append(dict(strategy=name, n=n, error=proc.stderr.strip().splitlines()[-1][:120]))
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  {name} N={n}: {rows[-1].get('steady_s', rows[-1].get('error'))}", file=sys.stderr, flush=True)
    print(f"\nD={args.dim}, C={args.classes}, B={args.budget}, {args.labelled} labelled, {describe()}, "
          f"median of {args.repeats} steady calls\n")
    print("| strategy | N | first call (compile + run) | steady | extra peak RSS | / embedding bytes | XLA temp |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['strategy']} | {r['n']:,} | error: {r['error']} | | | | |")
            continue
        temp = "-" if r["xla_temp"] is None else f"{r['xla_temp'] / 2**20:.0f} MiB"
        extra = max(r["extra_peak_rss"], 0)  # below the pre-query RSS: freed memory was reused
        rss = f"{extra / 2**20:.0f} MiB" if extra >= 2**20 else "~0"
        print(f"| {r['strategy']} | {r['n']:,} | {r['first_s']:.2f} s | {r['steady_s']:.3f} s | "
              f"{rss} | {extra / r['embedding_bytes']:.2f}x | {temp} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
