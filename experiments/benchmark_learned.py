#!/usr/bin/env python3
"""Learned (and random) alpha on the linear head: the fast path (mixing.learned_linear_flips /
random_linear_flips) side by side with an older revision of it: a copy of this tree's
alfamix_jax in a temporary directory with the files of the learned / random path
(OLD_FILES) as `git show REV:path` gives them, put first on PYTHONPATH, so the two codes
differ only in those files; the working tree's git state is not touched.

    .venv/bin/python experiments/benchmark_learned.py [--old-rev 64ce9a6] [--repeats 2] [--skip-old]
        [--skip-cli] [--skip-fmnist] [--skip-random] [--out experiments/results/learned/benchmark.md]

Rows:
  - 20k x 512 pool of benchmark_selection.py (make_pool, POOL_SEED, 200 labelled), B=1000,
    C=10, --alpha-cap-step 0.03125: the call in a fresh process (trace + compile + run), the
    steady state (median of --repeats further calls), the process's peak RSS over its RSS
    once the pool is on the device, caps tried and candidates; learned and random alpha.
  - the whole `alfamix-jax select --alpha learned|random --alpha-cap-step 0.03125` process on
    that pool (empty compilation caches).
  - the Fashion-MNIST protocol size: 60k x 256, B=100, cap step 0.2 (the same generator).
Each measurement runs in its own subprocess. Timings depend on the machine's load: the load
average is printed with each one. Targets: steady <= 154.9 / 50 s, process <= 154.9 / 15 s
(the original's learned query on this pool took 154.9 s), 60k x 256 under 1.5 s per query.
"""
import argparse
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
sys.path.insert(0, str(REPO / "experiments"))
from benchmark_selection import POOL_LABELLED, POOL_SEED, POOL_SEP, make_pool, pool_on_device  # noqa: E402
from machine import describe  # noqa: E402

# The learned / random path's files; selector.py with them, as it passes stages.py its static arguments.
OLD_FILES = ("alfamix_jax/selection/mixing.py", "alfamix_jax/selection/stages.py", "alfamix_jax/selection/heads.py",
             "alfamix_jax/selection/selector.py", "alfamix_jax/selection/search.py")
ORIGINAL_LEARNED_S = 154.9  # the original's learned query on the 20k x 512 pool, cap step 0.03125
CASES = {  # name: (unlabelled rows, dim, budget, cap step)
    "20k": (20000, 512, 1000, 0.03125),
    "fmnist": (60000, 256, 100, 0.2),
}


def peak_reset():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def worker(case, alpha, repeats):
    """One selector in this process: first call, steady calls, peak RSS. -> dict."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    from alfamix_jax import make_alfamix_selector

    n, dim, budget, step = CASES[case]
    emb, labels, head = pool_on_device(make_pool(POOL_SEED, n, POOL_LABELLED, dim, 10, POOL_SEP))
    peak_reset()
    base = rss_bytes("VmRSS")
    select = make_alfamix_selector(budget=budget, num_classes=10, alpha=alpha, alpha_cap_step=step)
    times, cpu = [], []
    for seed in range(repeats + 1):
        t, c = time.perf_counter(), time.process_time()
        result = jax.block_until_ready(select(jax.random.key(seed), emb, labels, head))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    d = result.diagnostics
    return dict(first_s=times[0], steady_s=times[1:], steady_median_s=statistics.median(times[1:]),
                steady_cpu_s=statistics.median(cpu[1:]),
                extra_peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base,
                caps_tried=int(d.caps_tried), candidates=int(d.num_candidates),
                union_per_cap=np.asarray(d.union_per_cap)[: int(d.caps_tried)].tolist(),
                selected_sum=int(np.asarray(result.selected, np.int64).sum()), load=os.getloadavg()[0])


def env_for(code_root):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_root), str(REPO / "experiments")]))
    return env


def measure(code_root, case, alpha, repeats):
    cmd = [sys.executable, __file__, "--worker", case, alpha, str(repeats)]
    proc = subprocess.run(cmd, env=env_for(code_root), capture_output=True, text=True, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout + proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_cli(code_root, tmp, alpha="learned"):
    """Wall clock and CPU of whole `select` processes: the first with an empty compilation
    cache, then a second one with the persistent cache the first wrote (as a rerun finds it)."""
    n, dim, budget, step = CASES["20k"]
    pool_path = os.path.join(tmp, "pool20k.npz")
    if not os.path.exists(pool_path):
        np.savez(pool_path, **make_pool(POOL_SEED, n, POOL_LABELLED, dim, 10, POOL_SEP))
    cache = tempfile.mkdtemp(dir=tmp)
    env = env_for(code_root) | {"JAX_COMPILATION_CACHE_DIR": cache, "ALFAMIX_JAX_CACHE_DIR": cache}
    result = dict(load=os.getloadavg()[0])
    for run in ("process", "warm_process"):
        cmd = [sys.executable, "-c", "import sys; from alfamix_jax.cli import main; sys.exit(main())", "select",
               "--input", pool_path, "--budget", str(budget), "--output", os.path.join(cache, f"{run}.npz"),
               "--alpha", alpha, "--alpha-cap-step", str(step)]
        t, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
        elapsed, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(proc.stdout + proc.stderr)
        result[f"{run}_s"] = elapsed
        result[f"{run}_cpu_s"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return result


def old_snapshot(tmp, rev):
    """This tree's alfamix_jax in tmp/old with OLD_FILES as of `rev` (reads the repository, changes nothing)."""
    root = Path(tmp) / "old"
    shutil.copytree(REPO / "alfamix_jax", root / "alfamix_jax", ignore=shutil.ignore_patterns("__pycache__"))
    for path in OLD_FILES:
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], capture_output=True, check=True).stdout
        (root / path).write_bytes(text)
    return root


def gib(x):
    return f"{x / 2**30:.2f} GiB"


def table(rows, note):
    """rows: (case, alpha, code, result dict) -> markdown."""
    out = ["| pool | alpha | code | first call (s) | steady (s) | steady CPU (s) | whole `select` process (s) | "
           "process CPU (s) | process, warm cache (s / CPU s) | speed-up vs original (steady / process) | "
           "peak RSS over pool | caps tried | candidates | load |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, alpha, code, r in rows:
        n, dim, budget, step = CASES[case]
        steady, proc = r.get("steady_median_s"), r.get("process_s")
        speed = " / ".join(f"{ORIGINAL_LEARNED_S / v:.0f}x" if v and case == "20k" and alpha == "learned"
                           else "-" for v in (steady, proc))

        def fmt(v):
            return f"{v:.2f}" if v is not None else "-"

        out.append(f"| {n // 1000}k x {dim}, B={budget}, step {step} | {alpha} | {code} | {fmt(r.get('first_s'))} | "
                   f"{fmt(steady)} | {fmt(r.get('steady_cpu_s'))} | {fmt(proc)} | {fmt(r.get('process_cpu_s'))} | "
                   f"{fmt(r.get('warm_process_s'))} / {fmt(r.get('warm_process_cpu_s'))} | {speed} | "
                   f"{gib(r['extra_peak_rss']) if 'extra_peak_rss' in r else '-'} | {r.get('caps_tried', '-')} | "
                   f"{r.get('candidates', '-')} | {r['load']:.1f} |")
    return "\n".join(out + ["", note])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--old-rev", default="64ce9a6", help="revision of OLD_FILES to compare with")
    parser.add_argument("--skip-old", action="store_true", help="only the working tree's code")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-fmnist", action="store_true")
    parser.add_argument("--skip-random", action="store_true")
    parser.add_argument("--out", default=str(REPO / "experiments/results/learned/benchmark.md"))
    args = parser.parse_args()
    if args.worker:
        case, alpha, repeats = args.worker
        print(json.dumps(worker(case, alpha, int(repeats))))
        return
    rows = []

    def save():
        """The table so far (a long run on a loaded machine keeps what it measured)."""
        same = {}
        for case, alpha, _, r in rows:
            if "selected_sum" in r:
                same.setdefault((case, alpha), set()).add((r["caps_tried"], tuple(r["union_per_cap"])))
        agree = all(len(v) == 1 for v in same.values())
        note = (f"Machine: {describe()}; load average at the start of each measurement in the last column (the "
                f"machine is shared: a load above the core count slows every row). Steady: median of "
                f"{args.repeats} call(s) after the first. Whole process: a fresh `select` process with an empty "
                f"compilation cache; warm: a second one with the persistent cache the first wrote. CPU: seconds of "
                f"CPU (user + system, all threads) the call or process used; less sensitive to the load than wall "
                f"time. Peak RSS: the process's high-water RSS over its RSS once the pool is on the device. The "
                f"original's learned query on the 20k pool: {ORIGINAL_LEARNED_S} s; targets: steady <= "
                f"{ORIGINAL_LEARNED_S / 50:.1f} s, process <= {ORIGINAL_LEARNED_S / 15:.1f} s, 60k x 256 under "
                f"1.5 s. Caps tried and union per cap (same key) {'agree' if agree else 'DIFFER'} between the codes "
                f"on every pool measured.")
        text = table(rows, note)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"# Learned / random alpha on the linear head: this tree vs {args.old_rev}\n\n"
                                  f"`{' '.join(sys.argv)}`\n\n" + text + "\n")
        return text

    with tempfile.TemporaryDirectory(prefix="alfamix-bench-learned-") as tmp:
        codes = [("this tree", REPO)] + ([] if args.skip_old else [(args.old_rev, old_snapshot(tmp, args.old_rev))])
        alphas = ["learned"] + ([] if args.skip_random else ["random"])
        for alpha in alphas:
            for case in ["20k"] + ([] if args.skip_fmnist else ["fmnist"]):
                for code, root in codes:  # old and new one after the other: the same load
                    rows.append((case, alpha, code, measure(root, case, alpha, args.repeats)))
                    print(f"{case} {alpha} {code}: {rows[-1][3]}", flush=True)
                    save()
            for code, root in codes if not args.skip_cli else []:
                rows.append(("20k", alpha, code, measure_cli(root, tmp, alpha)))
                print(f"cli {alpha} {code}: {rows[-1][3]}", flush=True)
                save()
    print(save())


if __name__ == "__main__":
    main()
