"""k-means: an older revision's alfamix_jax/selection/kmeans.py (default 62329fb, exact greedy
k-means++ seeding over the whole buffer) against the working tree's (greedy k-means++ over a
uniform random sample of the buffer, distances from its Gram matrix), side by side in one
process, calls alternating; then the whole selection on the 20k benchmark pool with B = 500.

    python experiments/benchmark_kmeans.py [--cases 20k-pool,1M-buffer,blobs] [--repeats 3]
        [--seeds 6] [--revision 62329fb] [--skip-cold] [--skip-selection]
        [--out experiments/results/kmeans/benchmark.md]
    python experiments/benchmark_kmeans.py --seeding-sizes [--repeats 3] [--out ...]
    python experiments/benchmark_kmeans.py --bounds [--cases ...] [--repeats 3] [--out ...]

Cases (the k-means buffer as the selection builds it: L2-normalised rows, first n_valid real):
- 20k-pool: the 20k x 512 benchmark pool with budget 500: 653 candidates in a 20,000-row buffer.
- 1M-buffer: a 1M x 128 pool whose candidates fill the 65,536-row buffer, k = 1000.
- blobs: 20,000 x 64 rows in 200 well separated clusters, k = 200 (where seeding matters most).

Seeding and whole k-means times are medians over --repeats calls (keys 1..repeats), old and new
alternating, wall and CPU seconds; inertia is the mean over keys 0..seeds-1, scikit-learn's the
mean over as many fits of KMeans(init="k-means++", n_init=1). Cold compile: in a fresh process
per implementation, with the persistent compilation cache off, the first call's time minus the
median of two more. The selection (working tree only; closed-form alpha, alpha_cap_step 0.2):
first call and steady state in a fresh process, cache off; and the whole `alfamix-jax select`
process with the cache off, cold (an empty cache directory) and warm (the same directory again).
--seeding-sizes instead times the default seeding (k = 500, the 20k pool's buffer) for candidate
counts from 1,000 to 8,000, sized as the selection sizes it against the program's own choice;
--bounds times this tree's Lloyd passes with distance bounds against full ones on each case.
Prints markdown tables; --out also writes them there.
"""
import argparse
import functools
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "experiments"))
from machine import describe  # noqa: E402

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


def functions(jax, old, new, case):
    """{impl: (seeding, kmeans)} jitted, the case's k bound. Code that takes its sizes
    (`sizing`: the seeding's rows, Lloyd's distance bounds or not) is told them, as the
    selection tells it from the candidate count it reads on the host; older code (62329fb)
    seeds over the whole buffer (`kmeans_plus_plus`) and needs none."""
    k = case["k"]

    def pair(module):
        if not hasattr(module, "sizing"):
            return (jax.jit(functools.partial(module.kmeans_plus_plus, k=k)),
                    jax.jit(functools.partial(module.kmeans, k=k)))
        sizing = module.sizing(case["n_valid"], k, case["m"])
        return (jax.jit(functools.partial(module.sampled_kmeans_plus_plus, k=k, rows=sizing.seed_rows)),
                jax.jit(functools.partial(module.kmeans, k=k, **sizing._asdict())))

    return {"old": pair(old), "new": pair(new)}


def timed(jax, fn, *args):
    """(output, wall s, CPU s of this process)."""
    t, c = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t, time.process_time() - c


def cold(impl, case_name, revision):
    """In a fresh process: first call of the whole k-means minus the steady time."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    case = CASES[case_name]
    x = jax.device_put(make_buffer(case))
    jax.block_until_ready(jax.jit(lambda a: a + 1)(x))  # the backend's own start, not k-means'
    old, new = load_modules(revision)
    _, fn = functions(jax, old, new, case)[impl]
    _, first, first_cpu = timed(jax, fn, jax.random.key(0), x, case["n_valid"])
    steady = [timed(jax, fn, jax.random.key(i), x, case["n_valid"])[1:] for i in (1, 2)]
    wall, cpu = (statistics.median(t[i] for t in steady) for i in (0, 1))
    return dict(first=first, steady=wall, compile=first - wall, compile_cpu=first_cpu - cpu)


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
    fns = functions(jax, old, new, case)
    for impl in fns:  # compile both first
        for fn in fns[impl]:
            jax.block_until_ready(fn(jax.random.key(0), x, n))
    times = {(impl, part): [] for impl in fns for part in ("seed", "total")}
    for r in range(1, args.repeats + 1):
        for part, index in (("seed", 0), ("total", 1)):
            for impl in fns:
                times[impl, part].append(timed(jax, fns[impl][index], jax.random.key(r), x, n)[1:])
    inertia = {impl: [] for impl in fns}
    iters = {impl: [] for impl in fns}
    for s in range(args.seeds):
        for impl in fns:
            result = fns[impl][1](jax.random.key(s), x, n)
            inertia[impl].append(float(result.inertia))
            iters[impl].append(int(result.iterations))
    sk = [KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=s).fit(host[:n]).inertia_
          for s in range(args.seeds)]
    row = dict(case=case_name, **case, inertia_sklearn=float(np.mean(sk)), inertia_sklearn_all=sk)
    for (impl, part), runs in times.items():
        row[f"{part}_{impl}"] = statistics.median(t[0] for t in runs)
        row[f"{part}_{impl}_cpu"] = statistics.median(t[1] for t in runs)
    for impl in fns:
        row.update({f"inertia_{impl}": float(np.mean(inertia[impl])), f"inertia_{impl}_all": inertia[impl],
                    f"iters_{impl}": float(np.mean(iters[impl]))})
    row["load"] = os.getloadavg()[0]
    if not args.skip_cold:
        for impl in fns:
            cold_run = run_cold(impl, case_name, args.revision)
            row[f"cold_{impl}"], row[f"cold_{impl}_cpu"] = cold_run["compile"], cold_run["compile_cpu"]
    return row


def selection_worker():
    """In this fresh process (cache off): the 20k pool, B = 500, first call and steady state."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    from benchmark_selection import POOL_LABELLED, POOL_SEED, POOL_SEP, make_pool, pool_on_device

    from alfamix_jax import make_alfamix_selector

    emb, labels, head = pool_on_device(make_pool(POOL_SEED, 20000, POOL_LABELLED, 512, 10, POOL_SEP))
    select = make_alfamix_selector(budget=500, num_classes=10, alpha_cap_step=0.2)
    result, first, first_cpu = timed(jax, select, jax.random.key(0), emb, labels, head)
    steady = [timed(jax, select, jax.random.key(i), emb, labels, head)[1:] for i in range(1, 8)]
    return dict(first=first, first_cpu=first_cpu, steady=statistics.median(t[0] for t in steady),
                steady_cpu=statistics.median(t[1] for t in steady),
                candidates=int(result.diagnostics.num_candidates), load=os.getloadavg()[0])


def whole_process(args):
    """The selection in a fresh process, then `alfamix-jax select` processes (wall, CPU s)."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS")}
    out = subprocess.run([sys.executable, __file__, "--selection-worker"], env=env, capture_output=True,
                         text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    work = Path(tempfile.mkdtemp(prefix="kmeans_bench_"))
    try:
        from benchmark_selection import POOL_LABELLED, POOL_SEED, POOL_SEP, make_pool

        np.savez(work / "pool.npz", **make_pool(POOL_SEED, 20000, POOL_LABELLED, 512, 10, POOL_SEP))
        cli = Path(sys.executable).parent / "alfamix-jax"
        env["ALFAMIX_JAX_CACHE_DIR"] = str(work / "cache")
        for name, extra in (("no_cache", ["--no-compile-cache"]), ("cold_cache", []), ("warm_cache", [])):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run([str(cli), "select", "--input", str(work / "pool.npz"), "--budget", "500",
                            "--alpha-cap-step", "0.2", "--output", str(work / f"{name}.npz"), *extra],
                           env=env, check=True, capture_output=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            row[name] = time.perf_counter() - t
            row[f"{name}_cpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    row["load_end"] = os.getloadavg()[0]
    return row


def _pair(r, key):
    """'wall (CPU)' of a measurement, or '-'."""
    return f"{r[key]:.3f} ({r[key + '_cpu']:.3f})" if key in r else "-"


def table(rows, selection, args):
    lines = [
        "| case | M (valid) x D | k | seeding old s | seeding new s | ratio | k-means old s | k-means new s | "
        "ratio | Lloyd iters old / new | inertia old | inertia new | inertia sklearn | new / sklearn | "
        "cold compile old s | cold compile new s | load |",
        "|" + "---|" * 17,
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['m']:,} ({r['n_valid']:,}) x {r['dim']} | {r['k']} | {_pair(r, 'seed_old')} | "
            f"{_pair(r, 'seed_new')} | {r['seed_old'] / r['seed_new']:.1f}x | {_pair(r, 'total_old')} | "
            f"{_pair(r, 'total_new')} | {r['total_old'] / r['total_new']:.1f}x | {r['iters_old']:.1f} / "
            f"{r['iters_new']:.1f} | {r['inertia_old']:.2f} | {r['inertia_new']:.2f} | {r['inertia_sklearn']:.2f} | "
            f"{r['inertia_new'] / r['inertia_sklearn']:.4f} | {_pair(r, 'cold_old')} | {_pair(r, 'cold_new')} | "
            f"{r['load']:.1f} |")
    text = [
        f"# k-means: {args.revision} vs the working tree",
        "",
        f"Machine: {describe()}.",
        f"Times: wall seconds (CPU seconds of the process in brackets), median of {args.repeats} calls per "
        f"implementation, calls alternating; inertia: mean over keys 0..{args.seeds - 1}; scikit-learn: mean of "
        f"{args.seeds} fits (random_state 0..{args.seeds - 1}). Cold compile: fresh process, persistent cache "
        "off, first call minus steady. load: the 1-minute load average after the row.",
        "",
        *lines,
        "",
    ]
    if selection:
        s = selection
        text += [
            "Whole selection, the 20k x 512 benchmark pool, B = 500 (closed form, alpha_cap_step 0.2; "
            f"{s['candidates']} candidates), working tree; wall s (CPU s):",
            "",
            "| steady | first call (fresh process, cache off) | `alfamix-jax select` process: cache off | "
            "cold cache | warm cache | load |",
            "|---|---|---|---|---|---|",
            f"| {_pair(s, 'steady')} | {_pair(s, 'first')} | {_pair(s, 'no_cache')} | {_pair(s, 'cold_cache')} | "
            f"{_pair(s, 'warm_cache')} | {s['load']:.1f} / {s['load_end']:.1f} |",
            "",
        ]
    return "\n".join(text)


SIZE_COUNTS = (1000, 1100, 2000, 2100, 4000, 8000)  # candidates of the 20k x 512 pool, k = 500


def seeding_sizes(repeats):
    """The seeding with k = 500 on the 20k x 512 pool's buffer for several candidate counts:
    sized by the host (`rows=seeding_rows(...)`, what the selection runs) against the program's
    own choice (`rows=None`: the 2k-row prefix or the whole 8192-row sample, the code before
    the size was known), calls alternating. -> markdown table."""
    import jax

    from alfamix_jax.selection import kmeans as km

    case = dict(CASES["20k-pool"], n_valid=max(SIZE_COUNTS))
    x = jax.device_put(make_buffer(case))
    lines = ["| candidates | seeding rows | program's choice s | sized s | ratio | load |", "|---|---|---|---|---|---|"]
    for n in SIZE_COUNTS:
        rows = km.seeding_rows(n, 500, case["m"])
        fns = {size: jax.jit(functools.partial(km.sampled_kmeans_plus_plus, k=500, rows=size)) for size in (None, rows)}
        for fn in fns.values():
            jax.block_until_ready(fn(jax.random.key(0), x, n))
        runs = {size: [] for size in fns}
        for r in range(1, repeats + 1):
            for size, fn in fns.items():
                runs[size].append(timed(jax, fn, jax.random.key(r), x, n)[1:])
        t = {size: (statistics.median(a[0] for a in v), statistics.median(a[1] for a in v)) for size, v in runs.items()}
        chosen, sized = (f"{t[size][0]:.3f} ({t[size][1]:.3f})" for size in (None, rows))
        lines.append(f"| {n:,} | {rows:,} | {chosen} | {sized} | {t[None][0] / t[rows][0]:.1f}x | "
                     f"{os.getloadavg()[0]:.1f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join([
        "# k-means seeding sized by the host's candidate count", "",
        f"Machine: {describe()}. k = 500 on the 20k x 512 pool's buffer (L2-normalised rows); wall s (CPU s), "
        f"median of {repeats} calls, the two alternating.", "", *lines, ""])


def bounds(case_names, repeats):
    """This tree's k-means with Lloyd's distance bounds against full passes on each case, the
    seeding sized as the selection sizes it, calls alternating; the two must end with the same
    centres (bounds skip only rows whose cluster cannot change). -> markdown table."""
    import jax
    import jax.numpy as jnp

    from alfamix_jax.selection import kmeans as km

    lines = ["| case | rows per centre | Lloyd passes | bounded s | full s | full / bounded | same centres |",
             "|---|---|---|---|---|---|---|"]
    for name in case_names:
        case = CASES[name]
        x, n, k = jax.device_put(make_buffer(case)), case["n_valid"], case["k"]
        rows = km.seeding_rows(n, k, case["m"])
        fns = {b: jax.jit(functools.partial(km.kmeans, k=k, seed_rows=rows, bounded=b)) for b in (True, False)}
        results = {b: jax.block_until_ready(fn(jax.random.key(0), x, n)) for b, fn in fns.items()}
        runs = {b: [] for b in fns}
        for _ in range(repeats):
            for b, fn in fns.items():
                runs[b].append(timed(jax, fn, jax.random.key(0), x, n)[1:])
        t = {b: (statistics.median(a[0] for a in v), statistics.median(a[1] for a in v)) for b, v in runs.items()}
        same = bool(jnp.array_equal(results[True].centres, results[False].centres))
        lines.append(f"| {name} | {n // k} | {int(results[True].iterations)} | {t[True][0]:.3f} ({t[True][1]:.3f}) | "
                     f"{t[False][0]:.3f} ({t[False][1]:.3f}) | {t[False][0] / t[True][0]:.2f}x | "
                     f"{'yes' if same else 'NO'} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join([
        "# k-means: Lloyd's distance bounds against full passes", "",
        f"Machine: {describe()}. Wall s (CPU s), median of {repeats} calls, the two alternating; key 0.", "",
        *lines, ""])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--revision", default="62329fb")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--skip-selection", action="store_true")
    ap.add_argument("--seeding-sizes", action="store_true",
                    help="only the seeding sized by the candidate count against the program's own choice")
    ap.add_argument("--bounds", action="store_true",
                    help="only this tree's k-means with distance bounds against full passes, per case")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--cold", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    ap.add_argument("--selection-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cold:
        print(json.dumps(cold(args.cold[0], args.cold[1], args.revision)))
        return
    if args.selection_worker:
        print(json.dumps(selection_worker()))
        return
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    if args.seeding_sizes or args.bounds:
        text = seeding_sizes(args.repeats) if args.seeding_sizes else bounds(args.cases.split(","), args.repeats)
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        return
    rows = []
    for name in [c for c in args.cases.split(",") if c]:
        rows.append(measure(name, args))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    selection = None if args.skip_selection else whole_process(args)
    print(json.dumps(selection), file=sys.stderr, flush=True)
    text = table(rows, selection, args)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
