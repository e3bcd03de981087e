#!/usr/bin/env python3
"""The Fashion-MNIST protocol's ALFA-Mix query per round, this tree side by side with an
earlier revision: the real run (`alfamix-jax run --config fashion_mnist_mlp`, the original's
MLP, budget 100), one strategy and seed for a few rounds, each code in its own process,
the two codes alternating. The older code is `git archive REV` unpacked in a temporary
directory (the working tree's git state is not touched) and put first on PYTHONPATH.

    .venv/bin/python experiments/benchmark_fmnist_query.py [--old-rev fe0d931] [--alpha learned]
        [--rounds 3] [--repeats 2] [--out experiments/results/fmnist_query/benchmark.md]

Prints a markdown table: per round, the query's steady seconds (`query_seconds` in
results.csv: the embedding pass and the selection, compile excluded), its candidates and
test accuracy; a run whose candidates or accuracies differ between the codes is flagged,
since the comparison then times different work. Needs the Fashion-MNIST IDX files
(Debian's dataset-fashion-mnist); the issue-12 target for the learned query is 1.5 s per round.
"""
import argparse
import csv
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from machine import describe

REPO = Path(__file__).resolve().parents[1]


def unpack(revision: str, into: Path) -> Path:
    """The repository at `revision`, unpacked under `into`. -> its root."""
    archive = subprocess.run(["git", "archive", revision], cwd=REPO, capture_output=True, check=True).stdout
    root = into / revision
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    return root


def run_once(tree: Path, workdir: Path, args: argparse.Namespace) -> list[dict]:
    """One run of the protocol with the code in `tree`. -> results.csv's rows past round 0."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    command = [sys.executable, "-m", "alfamix_jax.cli", "run", "--config", "fashion_mnist_mlp", "--workdir",
               str(workdir), "--strategy", "alfamix", "--seed", "1", "--set", f"alfamix.alpha={args.alpha}",
               "--set", f"loop.rounds={args.rounds}", "--no-report", "--no-progress", "--no-compile-cache"]
    subprocess.run(command, env=env, cwd=tree, check=True, capture_output=True)
    with open(workdir / "results.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row["round"] != "0"]


def table(runs: dict[str, list[list[dict]]], args: argparse.Namespace) -> str:
    lines = [f"`experiments/benchmark_fmnist_query.py --old-rev {args.old_rev} --alpha {args.alpha} "
             f"--rounds {args.rounds} --repeats {args.repeats}`", "",
             "| round | candidates | test accuracy | this tree: query s (each run) | "
             f"{args.old_rev}: query s (each run) | ratio of medians |", "|---|---|---|---|---|---|"]
    for i, row in enumerate(runs["new"][0]):
        new = [float(run[i]["query_seconds"]) for run in runs["new"]]
        old = [float(run[i]["query_seconds"]) for run in runs["old"]]
        same = all(run[i]["candidates"] == row["candidates"] and run[i]["test_accuracy"] == row["test_accuracy"]
                   for code in runs.values() for run in code)
        lines.append(f"| {row['round']} | {row['candidates']}{'' if same else ' (differ!)'} | {row['test_accuracy']} | "
                     f"{statistics.median(new):.2f} ({', '.join(f'{t:.2f}' for t in new)}) | "
                     f"{statistics.median(old):.2f} ({', '.join(f'{t:.2f}' for t in old)}) | "
                     f"{statistics.median(old) / statistics.median(new):.2f}x |")
    lines += ["", f"Machine: {describe()} after the runs."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-rev", default="fe0d931")
    parser.add_argument("--alpha", default="learned", choices=["closed-form", "learned", "random"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"old": unpack(args.old_rev, Path(tmp)), "new": REPO}
        runs: dict[str, list[list[dict]]] = {"old": [], "new": []}
        for r in range(args.repeats):
            for code in ("old", "new") if r % 2 == 0 else ("new", "old"):
                runs[code].append(run_once(trees[code], Path(tmp) / f"work_{code}_{r}", args))
                print(f"{code} run {r}: " + ", ".join(row["query_seconds"][:5] for row in runs[code][-1]), flush=True)
    text = table(runs, args)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
