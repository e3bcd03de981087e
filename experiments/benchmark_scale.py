#!/usr/bin/env python3
"""Scale-out benchmark of the sharded selector (alfamix_jax.selection.sharded).

    .venv/bin/python experiments/benchmark_scale.py \
        [--sizes 20000,100000,1000000,10000000] [--dim 512] [--budget 1000] \
        [--block-size 65536] [--repeats 3] [--devices 1,2,4,8] [--scaling-size 1000000] \
        [--stream-sizes 1000000] [--stream-from memmap|host] [--out results.json]

Prints Markdown tables:
  (a) time vs pool size N, pool on the devices: first call (trace + compile +
      run), steady state (median of --repeats), the candidate search alone
      and its read bandwidth (N x D x 4 bytes / time), the rerun check
      (selection bit-identical), peak device memory (GPU: the allocator's
      peak; CPU: none) and peak host RSS; time per million rows shows whether
      growth is linear.
  (b) time vs N with the pool streamed from a memory-mapped .npy (or host
      memory) through the devices in blocks.
  (c) time vs number of devices at --scaling-size (CPU: fake devices from
      --xla_force_host_platform_device_count, which share the real cores,
      so this shows the sharding overhead, not a speed-up), with a check
      that every device count selected the same batch.
and, where the device is a GPU, a copy-bandwidth reference (x + 1 over the
largest pool: bytes read + written / time) against which the search's
bandwidth is stated. Each measurement runs in its own subprocess (this script
with --worker), so peaks and first calls are per measurement.

The pool is built like the original's timing pool (class means 0.25 * N(0,1),
points = mean + N(0,1), head W = means + 0.1 N(0,1)), generated on the
devices block by block so that generating it costs no more than holding it.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES, LABELLED, SEP = 10, 200, 0.25


def parse_ints(text):
    return [int(float(t)) for t in text.split(",") if t]


# ---------------------------------------------------------------------------- worker side
def make_problem(jax, np, mesh, n, dim, seed=5):
    """The pool on the mesh (rows padded to the mesh size), host labels, head."""
    import jax.numpy as jnp

    from alfamix_jax import LinearHead
    from alfamix_jax.selection.mesh import mesh_size, padded_rows, row_sharding

    rows = padded_rows(n, mesh_size(mesh))
    block = min(rows, 1 << 16)
    while rows % block:
        block //= 2
    key = jax.random.key(seed)
    k_means, k_y, k_x, k_w, k_b = jax.random.split(key, 5)
    means = SEP * jax.random.normal(k_means, (CLASSES, dim))
    y = jax.random.randint(k_y, (rows,), 0, CLASSES)

    @jax.jit
    def generate(y):
        def one(i):
            yi = jax.lax.dynamic_slice_in_dim(y, i * block, block)
            return means[yi] + jax.random.normal(jax.random.fold_in(k_x, i), (block, dim))
        x = jax.lax.map(one, jnp.arange(rows // block)).reshape(rows, dim)
        return jax.lax.with_sharding_constraint(x, row_sharding(mesh, 2))

    x = jax.block_until_ready(generate(y))
    rng = np.random.default_rng(seed)
    labels = np.full(n, -1, np.int32)
    chosen = rng.choice(n, LABELLED, replace=False)
    labels[chosen] = np.asarray(y[:n])[chosen]
    head = LinearHead(means + 0.1 * jax.random.normal(k_w, means.shape),
                      -0.5 * jnp.sum(means**2, axis=1) + 0.1 * jax.random.normal(k_b, (CLASSES,)))
    return x, labels, head


def device_peak(jax):
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def median_time(jax, fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def stage_times(jax, np, select, mesh, key, pool, labels, head, args):
    """Median time of each jitted stage, called as `select` calls them (the labelled rows'
    gather, the search with its anchors, the rest: k-means, fill, diagnostics), XLA's
    scratch memory of each, and the search's read bandwidth (N x D x 4 bytes / its time)."""
    from alfamix_jax.selection.layout import PAD_LABEL
    from alfamix_jax.selection.mesh import put_rows

    n, x = labels.shape[0], pool.rows
    dim = x.shape[1]
    st = select.stages
    padded = np.full(x.shape[0], PAD_LABEL, np.int32)
    padded[:n] = labels
    labels_on_mesh = put_rows(mesh, padded)
    repeats = max(5, args.repeats)
    placed = select._place(pool, labels, head)
    anchor_x, anchor_y = select._labelled_rows(placed)
    found, _ = st["search"](key, x, labels_on_mesh, head, anchor_x, anchor_y)
    finish = st["finish_diversify"]
    calls = dict(
        labelled_rows=lambda: select._labelled_rows(placed),
        search=lambda: st["search"](key, x, labels_on_mesh, head, anchor_x, anchor_y),
        finish=lambda: finish(key, x, labels_on_mesh, found, pool_size=n),
    )
    out = {}
    for name, call in calls.items():
        jax.block_until_ready(call())
        out[f"stage_{name}_s"] = median_time(jax, call, repeats)[0]
    # XLA's own account of each jitted stage's scratch memory (beyond its inputs and outputs).
    lowered = dict(search=(st["search"], (key, x, labels_on_mesh, head, anchor_x, anchor_y), {}),
                   finish=(finish, (key, x, labels_on_mesh, found), dict(pool_size=n)))
    for name, (fn, fn_args, kwargs) in lowered.items():
        analysis = fn.lower(*fn_args, **kwargs).compile().memory_analysis()
        out[f"stage_{name}_temp_bytes"] = getattr(analysis, "temp_size_in_bytes", None)
    out["search_s"] = out["stage_search_s"]
    out["search_read_gbs"] = n * dim * 4 / out["search_s"] / 1e9
    if args.copy_reference:
        add = jax.jit(lambda a: a + 1.0)
        jax.block_until_ready(add(x))
        tc, _ = median_time(jax, lambda: add(x), 3)
        out["copy_gbs"] = 2 * x.size * 4 / tc / 1e9
    return out


def worker(args):
    import jax
    import numpy as np

    from alfamix_jax import ShardedPool, make_alfamix_selector
    from alfamix_jax.selection.mesh import pool_mesh

    mesh = pool_mesh()
    n, dim = args.n, args.dim
    x, labels, head = make_problem(jax, np, mesh, n, dim)
    out = dict(n=n, dim=dim, devices=mesh.devices.size, platform=jax.devices()[0].platform,
               device_kind=jax.devices()[0].device_kind, jax_version=jax.__version__, mode=args.mode)
    select = make_alfamix_selector(mesh=mesh, budget=args.budget, num_classes=CLASSES, block_size=args.block_size,
                                   kmeans_block_size=args.kmeans_block_size,
                                   stream_block_size=args.stream_block_size or args.block_size)
    key = jax.random.key(0)
    source = x = ShardedPool(x, n)
    if args.mode == "stream":
        host = np.asarray(jax.device_get(x.rows))[:n]
        del x
        if args.stream_from == "memmap":
            path = os.path.join(args.tmp, f"pool-{n}x{dim}.npy")
            np.save(path, host)
            del host
            source = np.load(path, mmap_mode="r")
        else:
            source = host
        out["stream_from"] = args.stream_from

    start = time.perf_counter()
    first = select(key, source, labels, head)
    jax.block_until_ready(first.selected)
    out["first_s"] = time.perf_counter() - start
    steady, times = median_time(jax, lambda: select(key, source, labels, head).selected, args.repeats)
    out["steady_s"], out["steady_all_s"] = steady, times
    again = select(key, source, labels, head)
    out["rerun_identical"] = bool(np.array_equal(np.asarray(again.selected), np.asarray(first.selected)))
    d = first.diagnostics
    out.update(num_candidates=int(d.num_candidates), caps_tried=int(d.caps_tried),
               kmeans_iterations=int(d.kmeans_iterations), num_filled=int(d.num_filled),
               selected=np.asarray(first.selected).tolist())
    out["device_peak_bytes"] = device_peak(jax)
    if args.mode == "memory":
        out.update(stage_times(jax, np, select, mesh, key, x, labels, head, args))
    out["pool_bytes"] = n * dim * 4
    out["host_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------- driver side
def run_worker(args, n, mode, devices=None, copy_reference=False):
    env = dict(os.environ)
    if devices:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, __file__, "--worker", "--n", str(n), "--dim", str(args.dim), "--budget", str(args.budget),
           "--block-size", str(args.block_size), "--kmeans-block-size", str(args.kmeans_block_size),
           "--stream-block-size", str(args.stream_block_size or args.block_size),
           "--repeats", str(args.repeats), "--mode", mode, "--stream-from", args.stream_from, "--tmp", args.tmp]
    if copy_reference:
        cmd.append("--copy-reference")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker failed (n={n}, mode={mode}, devices={devices}):\n{proc.stdout[-3000:]}"
                       f"\n{proc.stderr[-3000:]}")


def save(args, results):
    """Write what is measured so far (a long run stopped halfway keeps its tables)."""
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def gib(b):
    return "-" if b is None else f"{b / 2**30:.2f}"


def table_sizes(rows, title):
    print(f"\n### {title}\n")
    print("| N | D | devices | first call s | steady s | s per 1M rows | search s | search read GB/s "
          "| candidates | caps | k-means iters | rerun identical | device peak GiB | pool GiB | host peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        search = f"{r['search_s']:.4f}" if "search_s" in r else "-"
        bw = f"{r['search_read_gbs']:.1f}" if "search_read_gbs" in r else "-"
        print(f"| {r['n']:,} | {r['dim']} | {r['devices']} | {r['first_s']:.2f} | {r['steady_s']:.4f} | "
              f"{r['steady_s'] / r['n'] * 1e6:.4f} | {search} | {bw} | {r['num_candidates']:,} | {r['caps_tried']} | "
              f"{r['kmeans_iterations']} | {r['rerun_identical']} | {gib(r['device_peak_bytes'])} | "
              f"{gib(r['pool_bytes'])} | {gib(r['host_peak_rss_bytes'])} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=parse_ints, default=parse_ints("20000,100000,1000000,10000000"))
    parser.add_argument("--stream-sizes", type=parse_ints, default=parse_ints("1000000"))
    parser.add_argument("--stream-from", choices=("memmap", "host"), default="memmap")
    parser.add_argument("--devices", type=parse_ints, default=parse_ints("1,2,4,8"),
                        help="CPU fake device counts for the scaling table (empty: skip)")
    parser.add_argument("--scaling-size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--block-size", type=int, default=65536)
    parser.add_argument("--kmeans-block-size", type=int, default=4096)
    parser.add_argument("--stream-block-size", type=int, default=None, help="rows per device per streamed block")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--tmp", default=None, help="where streamed pools are written (default: a temp dir)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="memory", help=argparse.SUPPRESS)
    parser.add_argument("--copy-reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    own_tmp = None
    if args.tmp is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="alfamix-scale-")
        args.tmp = own_tmp.name
    results = dict(settings={k: v for k, v in vars(args).items() if k not in ("worker", "n", "mode", "tmp")})
    memory = []
    for i, n in enumerate(args.sizes):
        memory.append(run_worker(args, n, "memory", copy_reference=i == len(args.sizes) - 1))
        print(f"done: N={n:,} in memory: {memory[-1]['steady_s']:.4f} s", file=sys.stderr, flush=True)
    results["memory"] = memory
    save(args, results)
    first = memory[0] if memory else {}
    print(f"\nplatform: {first.get('platform')} ({first.get('device_kind')}), jax {first.get('jax_version')}, "
          f"D={args.dim}, budget {args.budget}, {LABELLED} labelled, block {args.block_size} rows per device")
    table_sizes(memory, "(a) pool on the devices")
    if memory:
        print("\nStage times (median s) as `select` calls them:\n")
        names = ("labelled_rows", "search", "finish")
        print("| N | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for r in memory:
            print(f"| {r['n']:,} | " + " | ".join(f"{r[f'stage_{k}_s']:.4f}" for k in names) + " |")
        print("\nScratch memory of each stage (XLA memory analysis, GiB beyond inputs and outputs):\n")
        names = names[1:]
        print("| N | pool GiB | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for r in memory:
            print(f"| {r['n']:,} | {gib(r['pool_bytes'])} | "
                  + " | ".join(gib(r.get(f"stage_{k}_temp_bytes")) for k in names) + " |")
    if memory and "copy_gbs" in memory[-1]:
        r = memory[-1]
        print(f"\ncopy reference (x + 1 over the {r['n']:,}-row pool, read + write): {r['copy_gbs']:.0f} GB/s; "
              f"the search reads at {r['search_read_gbs']:.0f} GB/s = "
              f"{100 * r['search_read_gbs'] / r['copy_gbs']:.0f}% of it")
    streamed = [run_worker(args, n, "stream") for n in args.stream_sizes]
    results["stream"] = streamed
    save(args, results)
    if streamed:
        table_sizes(streamed, f"(b) pool streamed from {args.stream_from} through the devices")
    scaling = [run_worker(args, args.scaling_size, "memory", devices=k) for k in args.devices]
    results["scaling"] = scaling
    if scaling:
        print(f"\n### (c) time vs number of devices, N={args.scaling_size:,} (CPU devices)\n")
        print("| devices | first call s | steady s | search s | same batch as 1 device |")
        print("|---|---|---|---|---|")
        for r in scaling:
            same = r["selected"] == scaling[0]["selected"]
            print(f"| {r['devices']} | {r['first_s']:.2f} | {r['steady_s']:.4f} | {r.get('search_s', 0):.4f} "
                  f"| {same} |")
    save(args, results)
    if own_tmp:
        own_tmp.cleanup()


if __name__ == "__main__":
    main()
