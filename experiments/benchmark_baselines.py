"""Query time of CoreSet, BADGE, CDAL, BALD (and GCNAL, shortened): this tree against
the committed (--rev) versions of the same modules, side by side on the same arrays (a
benchmark, not a test; issue 12, item 3).

    .venv/bin/python experiments/benchmark_baselines.py [--rev HEAD] [--repeats 3]
        [--skip-scaling] [--skip-gcnal] [--old-scaling-runs 1]
        [--out experiments/results/baselines/benchmark.md]

Pool: `benchmark_strategies.build_view` (synthetic class-clustered embeddings, a
linear head's logits, noisy MC-dropout logits). Main setting: 60k x 256, C = 10,
300 labelled, B = 100, 5 MC passes. Scaling: CoreSet and BADGE at 20k and 100k x
512, B = 1000. Each query is compiled ahead of time (`lower().compile()`), then
run once untimed (warm-up) and `--repeats` times, old and new alternating; the
median is reported, in wall seconds and in CPU seconds of this process (the machine is
shared: CPU seconds are what the query itself used, wall seconds include waiting for a
core). GCNAL runs with 20 GCN training steps instead of 200 (the old code trains over the
whole pool: 200 steps there take minutes), once per version. In the scaling check the
committed code takes minutes per call, so it runs `--old-scaling-runs` times without the
warm-up, and `--old-max-n` skips it above that N. The original repository's times are the
reference numbers of issue 12 (its query alone, model passes excluded).
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "experiments")]
from machine import describe  # noqa: E402

MODULES = {"coreset": ("coreset", "make_coreset"), "badge": ("badge", "make_badge"),
           "cdal": ("cdal", "make_cdal"), "bald": ("uncertainty", "make_bald"), "gcnal": ("gcnal", "make_gcnal")}
SETTINGS = {"gcnal": dict(train_steps=20)}  # extra factory settings per strategy
ORIGINAL_S = {"coreset": 5.2, "badge": 64.0, "cdal": 2.1, "bald": 0.13}  # issue 12's reference times
TARGET_S = {"coreset": 0.52, "badge": 6.4, "cdal": 0.21, "bald": 0.013}


def load_revision(rev: str, module: str) -> types.ModuleType:
    """alfamix_jax/strategies/baselines/<module>.py as committed at `rev`, imported
    under another name (its own imports resolve against this tree)."""
    src = subprocess.run(["git", "show", f"{rev}:alfamix_jax/strategies/baselines/{module}.py"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), f"old_{module}.py")
    with open(path, "w") as f:
        f.write(src)
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"old_{module}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compiled_query(factory, budget, view, key, settings):
    """The strategy's query compiled for `view`, and XLA's temp bytes for it."""
    import jax
    strategy = factory(budget=budget, num_classes=view.logits.shape[1], **settings)
    compiled = jax.jit(strategy.query).lower(key, view).compile()
    stats = compiled.memory_analysis()
    return compiled, (None if stats is None else stats.temp_size_in_bytes)


def run_timed(fn, *args):
    """(wall seconds, CPU seconds of this process, result) of one call, waited for."""
    import jax
    start, cpu = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, time.process_time() - cpu, out


def compare(name, view, budget, rev, repeats, old_runs=None):
    """Old and new query times (medians) on `view`, alternating, and whether the picks agree
    (old_runs = 0: the new code only)."""
    import jax
    import numpy as np
    module, factory = MODULES[name]
    import importlib
    new_mod = importlib.import_module(f"alfamix_jax.strategies.baselines.{module}")
    old_mod = load_revision(rev, module)
    key = jax.random.key(0)
    settings = SETTINGS.get(name, {})
    new_q, new_tmp = compiled_query(getattr(new_mod, factory), budget, view, key, settings)
    old_runs = repeats if old_runs is None else old_runs
    old_q, old_tmp = (compiled_query(getattr(old_mod, factory), budget, view, key, settings) if old_runs
                      else (None, None))
    _, _, new_out = run_timed(new_q, key, view)  # warm-up
    if old_runs == repeats:
        run_timed(old_q, key, view)  # warm-up (skipped when the old code is too slow to run twice)
    new_t, old_t, new_c, old_c = [], [], [], []
    for r in range(max(repeats, old_runs)):
        if r < old_runs:
            t, c, old_out = run_timed(old_q, key, view)
            old_t.append(t)
            old_c.append(c)
        if r < repeats:
            t, c, _ = run_timed(new_q, key, view)
            new_t.append(t)
            new_c.append(c)
    same = bool(np.array_equal(np.asarray(old_out.selected), np.asarray(new_out.selected))) if old_runs else None
    med = statistics.median
    return dict(name=name, old=med(old_t) if old_t else None, new=med(new_t), same=same, old_tmp=old_tmp,
                new_tmp=new_tmp, old_cpu=med(old_c) if old_c else None, new_cpu=med(new_c),
                load=os.getloadavg()[0])


def mib(n):
    return "-" if n is None else f"{n / 2**20:.0f}"


def main_table(rows) -> list:
    lines = ["| strategy | ours old (s) | ours new (s) | speed-up | CPU old / new (s) | target (s) | original (s) "
             "| new / original | picks identical | XLA temp old / new (MiB) | load |", "|---" * 11 + "|"]
    for r in rows:
        orig = ORIGINAL_S.get(r["name"])
        target = TARGET_S.get(r["name"], "-")
        ratio = "-" if orig is None else f"{r['new'] / orig:.3f}"
        lines.append(f"| {r['name']} | {r['old']:.3f} | {r['new']:.3f} | {r['old'] / r['new']:.1f}x | "
                     f"{r['old_cpu']:.3f} / {r['new_cpu']:.3f} | {target} | {orig or '-'} | {ratio} | "
                     f"{'yes' if r['same'] else 'no'} | {mib(r['old_tmp'])} / {mib(r['new_tmp'])} | {r['load']:.1f} |")
    return lines


def scaling_table(rows) -> list:
    lines = ["| strategy | N | ours old (s) | ours new (s) | speed-up | CPU old / new (s) | picks identical | load |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["old"] is None:
            lines.append(f"| {r['name']} | {r['n']} | not run | {r['new']:.3f} | - | - / {r['new_cpu']:.3f} | - | "
                         f"{r['load']:.1f} |")
            continue
        lines.append(f"| {r['name']} | {r['n']} | {r['old']:.2f} | {r['new']:.3f} | {r['old'] / r['new']:.1f}x | "
                     f"{r['old_cpu']:.2f} / {r['new_cpu']:.3f} | {'yes' if r['same'] else 'no'} | {r['load']:.1f} |")
    by = {(r["name"], r["n"]): r for r in rows}
    for name in ("coreset", "badge"):
        if (name, 20000) in by and (name, 100000) in by:
            for which in ("old", "new"):
                big, small = by[(name, 100000)], by[(name, 20000)]
                if big[which] is None:
                    continue
                lines.append(f"\n{name} {which}: t(100k) / t(20k) = {big[which] / small[which]:.1f} wall, "
                             f"{big[which + '_cpu'] / small[which + '_cpu']:.1f} CPU (linear would be 5, limit 6)")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--skip-gcnal", action="store_true")
    parser.add_argument("--old-scaling-runs", type=int, default=1)
    parser.add_argument("--old-max-n", type=int, default=None,
                        help="run the committed code in the scaling check only up to this N (it is slow)")
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments/results/baselines/benchmark.md"))
    args = parser.parse_args()
    from benchmark_strategies import build_view

    view = build_view(60000, 256, 10, 300, 5)
    rows = []
    load_start = os.getloadavg()
    for name in ("coreset", "badge", "cdal", "bald"):
        rows.append(compare(name, view, 100, args.rev, args.repeats))
        print(rows[-1], flush=True)
    gcn = [] if args.skip_gcnal else [compare("gcnal", view, 100, args.rev, 1, 1)]
    print(gcn, flush=True)
    scaling = []
    if not args.skip_scaling:
        for n in (20000, 100000):
            view = build_view(n, 512, 10, 300, 0)
            for name in ("coreset", "badge"):
                too_big = args.old_max_n is not None and n > args.old_max_n
                old_runs = 0 if too_big else args.old_scaling_runs
                scaling.append(dict(compare(name, view, 1000, args.rev, args.repeats, old_runs), n=n))
                print(scaling[-1], flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    out = [f"# Baseline query times: this tree vs `{args.rev}`", "",
           f"Machine: {describe()} at the end; at the start "
           f"{load_start[0]:.1f} / {load_start[1]:.1f} / {load_start[2]:.1f}; "
           "the last column of each table is the 1-minute load average after that row.",
           f"Peak RSS of the whole run: {peak:.0f} MiB "
           "(pools, both versions' compiled queries and JAX itself).", "",
           f"## 60k x 256, C = 10, 300 labelled, B = 100 (BALD: 5 MC passes); median of {args.repeats} "
           "after a warm-up, old and new alternating", "", *main_table(rows)]
    if gcn:
        out += ["", "## GCNAL (CoreGCN) at the same size, 20 GCN training steps instead of 200, one run each "
                "after a warm-up (the old code trains over every pool row, the new one over the subset of "
                "10000 and the labelled rows; the picks differ because the dropout masks are drawn per graph row)",
                "", *main_table(gcn)]
    if scaling:
        out += ["", f"## Scaling: D = 512, B = 1000, 300 labelled (new: median of {args.repeats} after a warm-up; "
                f"old: {args.old_scaling_runs} run(s), no warm-up, compiled ahead"
                + ("" if args.old_max_n is None else f", only up to N = {args.old_max_n}") + ")",
                "", *scaling_table(scaling)]
    text = "\n".join(out) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
