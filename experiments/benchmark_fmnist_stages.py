#!/usr/bin/env python3
"""Where the Fashion-MNIST protocol's ALFA-Mix query goes, stage by stage, on the protocol's own
inputs: one run of `alfamix-jax run --config fashion_mnist_mlp` (one strategy and seed, a few
rounds) saves each query's embeddings, labels, head and key; then, in this process, each
round's search and finish programs are timed apart (steady, after a first call), the finish
both with Lloyd's distance bounds and without them (`kmeans.Sizing.bounded`), alternating,
and each finish program's compile (`lower(...).compile()`, no persistent cache).

    .venv/bin/python experiments/benchmark_fmnist_stages.py [--alpha learned] [--rounds 3]
        [--repeats 5] [--out experiments/results/fmnist_query/stages.md]

Prints a markdown table: per round, the candidates, the search's and the finish's median
seconds (minimum in brackets), the bounded finish's Lloyd passes, and whether both finishes
picked the same rows (they must: bounds skip only rows whose cluster cannot change). The
embedding pass, the rest of a round's query, is in `benchmark_fmnist_query.py`'s figures.
Needs the Fashion-MNIST IDX files (Debian's dataset-fashion-mnist).
"""
import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from machine import describe

from alfamix_jax.cli import main as cli_main
from alfamix_jax.experiment import runner
from alfamix_jax.experiment.config import load_config
from alfamix_jax.selection import stages
from alfamix_jax.selection.selector import make_alfamix_selector


def capture_queries(workdir: Path, args: argparse.Namespace) -> list[dict]:
    """Run the protocol, keeping each query's inputs (host arrays) as the runner hands them over."""
    queries: list[dict] = []
    query = runner._query

    def keep(trainer, strategy, state, bench, labelled, key):
        embeddings, _ = trainer.embed_and_logits(state, bench.x_train)  # again in the query: outside its timing
        queries.append(dict(embeddings=np.asarray(embeddings), head=jax.device_get(trainer.head_params(state)),
                            labels=np.asarray(jax.numpy.where(labelled, bench.y_train_device, -1)), key=key))
        return query(trainer, strategy, state, bench, labelled, key)

    runner._query = keep
    try:
        cli_main(["run", "--config", "fashion_mnist_mlp", "--workdir", str(workdir), "--strategy", "alfamix",
                  "--seed", "1", "--set", f"alfamix.alpha={args.alpha}", "--set", f"loop.rounds={args.rounds}",
                  "--no-report", "--no-progress", "--no-compile-cache"])
    finally:
        runner._query = query
    return queries


def seconds(fn, repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of fn, blocking on each result."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - start)
    return out


def time_round(select, inputs: dict, repeats: int) -> dict:
    """One round's search and finish programs (`select.stages`; bounded and full finish
    alternating)."""
    key, head = inputs["key"], inputs["head"]
    x, labels = jax.device_put(inputs["embeddings"]), jax.device_put(inputs["labels"].astype(np.int32))
    search = select.stages["search"]
    found, summary = jax.block_until_ready(search(key, x, labels, head, x, labels))
    count = int(summary[0])  # the candidate count, as the selector reads it between its stages
    search_s = seconds(lambda: search(key, x, labels, head, x, labels), repeats)
    finish = select.stages["finish_all" if count <= select.plan.budget else "finish_diversify"]
    sizing = stages.kmeans_sizing(select.plan, count, pool_size=x.shape[0])

    def run_finish(bounded: bool):
        return finish(key, x, labels, found, pool_size=x.shape[0], buffer=None,
                      kmeans_sizing=sizing._replace(bounded=bounded))

    compile_s = {}
    for bounded in (True, False):
        lowered = finish.lower(key, x, labels, found, pool_size=x.shape[0], buffer=None,
                               kmeans_sizing=sizing._replace(bounded=bounded))
        start = time.perf_counter()
        lowered.compile()
        compile_s[bounded] = time.perf_counter() - start
    picks = {bounded: jax.block_until_ready(run_finish(bounded)) for bounded in (True, False)}
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for bounded in (True, False):
            times[bounded] += seconds(lambda b=bounded: run_finish(b), 1)
    return dict(candidates=count, search=search_s, bounded=times[True], full=times[False], compile=compile_s,
                passes=int(picks[True].diagnostics.kmeans_iterations),
                same=bool(np.array_equal(picks[True].selected, picks[False].selected)))


def compiled(seconds_by_bounded: dict[bool, float]) -> str:
    """The compile column: an earlier round's programs, of the same shapes, are reused."""
    if max(seconds_by_bounded.values()) < 0.01:
        return "compiled before"
    return f"{seconds_by_bounded[True]:.2f} / {seconds_by_bounded[False]:.2f}"


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", default="learned", choices=["closed-form", "learned", "random"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        queries = capture_queries(Path(tmp) / "work", args)
    config = load_config("fashion_mnist_mlp")  # the protocol's budget and selector settings, as the run used them
    select = make_alfamix_selector(budget=config.loop.budget_at(1), num_classes=10,
                                   settings=dataclasses.replace(config.alfamix, alpha=args.alpha))
    lines = [f"`experiments/benchmark_fmnist_stages.py --alpha {args.alpha} --rounds {args.rounds} "
             f"--repeats {args.repeats}`: seconds, median (minimum)", "",
             "| round | candidates | search | finish, bounded | finish, full | Lloyd passes | same picks | "
             "finish compile s, bounded / full |", "|---|---|---|---|---|---|---|---|"]
    for r, inputs in enumerate(queries, start=1):
        row = time_round(select, inputs, args.repeats)
        lines.append(f"| {r} | {row['candidates']} | {cell(row['search'])} | {cell(row['bounded'])} | "
                     f"{cell(row['full'])} | {row['passes']} | {'yes' if row['same'] else 'NO'} | "
                     f"{compiled(row['compile'])} |")
        print(lines[-1], flush=True)
    lines += ["", f"Machine: {describe()} after the runs."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
