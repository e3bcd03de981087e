"""k-means: today's code (git HEAD's alfamix_jax/selection/kmeans.py, exact greedy k-means++
seeding over the whole buffer) against the working tree's (greedy k-means++ over a uniform
random sample of the buffer), side by side in one process, calls alternating.

    python experiments/benchmark_kmeans.py [--cases 20k-pool,1M-buffer,blobs] [--repeats 3]
        [--seeds 2] [--revision HEAD] [--out experiments/results/kmeans/benchmark.md]

Cases (the k-means buffer as the selection builds it: L2-normalised rows, first n_valid real):
- 20k-pool: the 20k x 512 benchmark pool with budget 500: 653 candidates in a 20,000-row buffer.
- 1M-buffer: a 1M x 128 pool whose candidates fill the 65,536-row buffer, k = 1000.
- blobs: 20,000 x 64 rows in 200 well separated clusters, k = 200 (where seeding matters most).

Seeding and whole k-means times are medians over --repeats calls (keys 1..repeats), old and new
alternating; inertia is the mean over those keys, scikit-learn's the mean over --seeds fits of
KMeans(init="k-means++", n_init=1). Cold compile: in a fresh process per implementation, with
the persistent compilation cache off, the first call's time minus the median of two more.
Prints a markdown table; --out also writes it there.
"""
import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CASES = {
    "20k-pool": dict(m=20000, n_valid=653, dim=512, k=500, data="pool"),
    "1M-buffer": dict(m=65536, n_valid=65536, dim=128, k=1000, data="pool"),
    "blobs": dict(m=20000, n_valid=20000, dim=64, k=200, data="blobs"),
}


def make_buffer(case):
    """[m, dim] float32, L2-normalised, rows past n_valid zero. Pool rows are drawn as the
    benchmark pool generator draws them (class means * 0.25 + unit noise, 10 classes)."""
    rng = np.random.RandomState(5)
    m, n, dim = case["m"], case["n_valid"], case["dim"]
    if case["data"] == "pool":
        mu = (rng.randn(10, dim) * 0.25).astype(np.float32)
        x = mu[rng.randint(0, 10, n)] + rng.randn(n, dim).astype(np.float32)
    else:
        centres = rng.uniform(-10, 10, (case["k"], dim)).astype(np.float32)
        x = centres[rng.randint(0, case["k"], n)] + 0.5 * rng.randn(n, dim).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    out = np.zeros((m, dim), np.float32)
    out[:n] = x
    return out


def load_modules(revision):
    """(old, new): the k-means module at `revision` (from git) and the working tree's."""
    src = subprocess.check_output(["git", "show", f"{revision}:alfamix_jax/selection/kmeans.py"], cwd=REPO, text=True)
    path = Path(tempfile.gettempdir()) / f"kmeans_{os.getpid()}_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("kmeans_old", path)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    from alfamix_jax.selection import kmeans as new

    return old, new


def functions(jax, old, new, k):
    """{impl: (seeding, kmeans)} jitted, k bound."""
    return {
        "old": (jax.jit(functools.partial(old.kmeans_plus_plus, k=k)), jax.jit(functools.partial(old.kmeans, k=k))),
        "new": (jax.jit(functools.partial(new.sampled_kmeans_plus_plus, k=k)),
                jax.jit(functools.partial(new.kmeans, k=k))),
    }


def timed(jax, fn, *args):
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t


def cold(impl, case_name, revision):
    """In a fresh process: first call of the whole k-means minus the steady time."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    case = CASES[case_name]
    x = jax.device_put(make_buffer(case))
    jax.block_until_ready(jax.jit(lambda a: a + 1)(x))  # the backend's own start, not k-means'
    old, new = load_modules(revision)
    _, fn = functions(jax, old, new, case["k"])[impl]
    _, first = timed(jax, fn, jax.random.key(0), x, case["n_valid"])
    steady = statistics.median(timed(jax, fn, jax.random.key(i), x, case["n_valid"])[1] for i in (1, 2))
    return dict(first=first, steady=steady, compile=first - steady)


def run_cold(impl, case_name, revision):
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS")}
    out = subprocess.run([sys.executable, __file__, "--cold", impl, case_name, "--revision", revision],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(case_name, args):
    import jax
    from sklearn.cluster import KMeans

    case = CASES[case_name]
    k, n = case["k"], case["n_valid"]
    host = make_buffer(case)
    x = jax.device_put(host)
    old, new = load_modules(args.revision)
    fns = functions(jax, old, new, k)
    for impl in fns:  # compile both first
        for fn in fns[impl]:
            jax.block_until_ready(fn(jax.random.key(0), x, n))
    seed_s = {impl: [] for impl in fns}
    total_s = {impl: [] for impl in fns}
    inertia = {impl: [] for impl in fns}
    iters = {impl: [] for impl in fns}
    for r in range(1, args.repeats + 1):
        for impl, (seeding, _) in fns.items():
            seed_s[impl].append(timed(jax, seeding, jax.random.key(r), x, n)[1])
        for impl, (_, whole) in fns.items():
            result, s = timed(jax, whole, jax.random.key(r), x, n)
            total_s[impl].append(s)
            inertia[impl].append(float(result.inertia))
            iters[impl].append(int(result.iterations))
    sk = [KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=s).fit(host[:n]).inertia_
          for s in range(args.seeds)]
    med = {impl: (statistics.median(seed_s[impl]), statistics.median(total_s[impl])) for impl in fns}
    row = dict(case=case_name, **case, seed_old=med["old"][0], seed_new=med["new"][0], total_old=med["old"][1],
               total_new=med["new"][1], inertia_old=float(np.mean(inertia["old"])),
               inertia_new=float(np.mean(inertia["new"])), inertia_sklearn=float(np.mean(sk)),
               iters_old=float(np.mean(iters["old"])), iters_new=float(np.mean(iters["new"])))
    if not args.skip_cold:
        row.update(cold_old=run_cold("old", case_name, args.revision)["compile"],
                   cold_new=run_cold("new", case_name, args.revision)["compile"])
    return row


def machine():
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import jax

    return (f"{model}, {os.cpu_count()} CPUs visible, JAX {jax.__version__} on {jax.default_backend()}, "
            f"load average {os.getloadavg()[0]:.1f} at the end (a shared machine)")


def table(rows, args):
    lines = [
        "| case | M (valid) x D | k | seeding old s | seeding new s | ratio | k-means old s | k-means new s | "
        "ratio | Lloyd iters old / new | inertia old | inertia new | inertia sklearn | new / sklearn | "
        "cold compile old s | cold compile new s |",
        "|" + "---|" * 16,
    ]
    for r in rows:
        cold_old = f"{r['cold_old']:.2f}" if "cold_old" in r else "-"
        cold_new = f"{r['cold_new']:.2f}" if "cold_new" in r else "-"
        lines.append(
            f"| {r['case']} | {r['m']:,} ({r['n_valid']:,}) x {r['dim']} | {r['k']} | {r['seed_old']:.3f} | "
            f"{r['seed_new']:.3f} | {r['seed_old'] / r['seed_new']:.1f}x | {r['total_old']:.3f} | "
            f"{r['total_new']:.3f} | {r['total_old'] / r['total_new']:.1f}x | {r['iters_old']:.1f} / "
            f"{r['iters_new']:.1f} | {r['inertia_old']:.2f} | {r['inertia_new']:.2f} | {r['inertia_sklearn']:.2f} | "
            f"{r['inertia_new'] / r['inertia_sklearn']:.4f} | {cold_old} | {cold_new} |")
    return "\n".join([
        f"# k-means: {args.revision} vs the working tree",
        "",
        f"Machine: {machine()}.",
        f"Times: median of {args.repeats} calls per implementation, calls alternating; inertia: mean over "
        f"the same keys; scikit-learn: mean of {args.seeds} fits. Cold compile: fresh process, persistent "
        "cache off, first call minus steady.",
        "",
        *lines,
        "",
    ])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--revision", default="HEAD")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--cold", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cold:
        print(json.dumps(cold(args.cold[0], args.cold[1], args.revision)))
        return
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    rows = []
    for name in args.cases.split(","):
        rows.append(measure(name, args))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    text = table(rows, args)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
