"""The experiment report: accuracy table, AUBC, the paper's pairwise comparison matrix, plots.

Reads the `results.csv` that the runner writes in each run directory (one row per strategy, seed
and round), its `config.json` (runs are merged only when their configs agree up to strategies and
seeds) and, where present, its `picks.csv` (the rows each round labelled), and renders what
`alfamix-jax report DIR [DIR...]` prints. The comparison matrix is the one ALFA-Mix (Parvaneh et
al., CVPR 2022) reuses from BADGE (Ash et al., ICLR 2020): a paired t-test over seeds for each
pair of strategies and each labelled-set size. Host-side NumPy and scipy only; no JAX. Plots use
`matplotlib.figure.Figure` directly, so no pyplot backend state is touched.

Accuracy std (table, AUBC, plot band) is the population std over seeds (ddof=0) unless asked
otherwise; the t-test std is ddof=1 by default (ddof=0 reproduces the original's code).

Every input problem (a garbled row, a binary or non-UTF-8 file, bad JSON, an unwritable output
folder) is a ValueError naming the file (and line); user text in the Markdown is escaped.
"""
import csv
import dataclasses
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import IO

import numpy as np
import scipy.stats

from alfamix_jax.files import write_atomic

RESULTS_FILE = "results.csv"
CONFIG_FILE = "config.json"
PICKS_FILE = "picks.csv"
# Columns the report reads; the runner also writes query_seconds, query_compile_seconds,
# train_seconds, train_epochs, candidates, filled (kept in each row dict as raw strings).
REQUIRED_COLUMNS = ("strategy", "seed", "round", "labelled", "test_accuracy")
INT_COLUMNS = ("seed", "round", "labelled")
SECONDS_COLUMNS = ("query_seconds", "query_compile_seconds")  # checked to be seconds, kept as strings
PICKS_COLUMNS = ("strategy", "seed", "round", "rank", "index")
# config.json sections that may differ between merged runs (the runner's RUN_SELECTION_FIELDS;
# not imported from there because the runner imports JAX).
RUN_SELECTION_FIELDS = ("strategies", "seeds")


# ---------------------------------------------------------------------------------------------
# Reading


def _as_dir_list(dirs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    if isinstance(dirs, str | os.PathLike):
        return [os.fspath(dirs)]
    out = [os.fspath(d) for d in dirs]
    if not out:
        raise ValueError("dirs: no run directory given; pass at least one DIR containing results.csv")
    return out


INT64_RANGE = range(-(2**63), 2**63)


def _parse_int(text: str) -> int:
    """An int64, also when written as an integral float ("3.0"); ValueError otherwise."""
    try:
        value = int(text)
    except ValueError:
        number = float(text)
        if not number.is_integer():
            raise
        value = int(number)
    if value not in INT64_RANGE:
        raise ValueError(text)
    return value


def _read_text(path: str, what: str) -> str:
    """The UTF-8 text of `path` (a BOM dropped); ValueError naming the file (and line) when it cannot
    be read, holds a NUL byte (a binary file) or is not UTF-8. `what` says what the file should be."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror or e})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ValueError(f"{path} line {line}: a NUL byte; this is a binary file, not {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path} line {line}: byte 0x{data[e.start]:02x} is not UTF-8 text; expected {what}") from None


def _csv_records(path: str, required: Sequence[str], what: str) -> list[tuple[int, dict]]:
    """Rows of a CSV file as (line number, {column: stripped text or None}); the header must name
    `required` and those columns must be non-empty in every row. Errors name the file and line."""
    reader = csv.DictReader(io.StringIO(_read_text(path, what), newline=""))
    try:
        header = reader.fieldnames
        if not header:
            raise ValueError(f"{path}: empty file (no header row); rerun the experiment or remove this DIR")
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)} (header has {', '.join(map(str, header))}); "
                f"expected at least {', '.join(required)}: was it written by the alfamix-jax runner?"
            )
        if len(set(header)) != len(header):
            raise ValueError(f"{path} line 1: a column is named twice in the header; fix the header")
        rows = []
        for raw in reader:
            line = reader.line_num
            if None in raw:
                raise ValueError(f"{path} line {line}: more fields than the header; fix or delete that line")
            row = {k: None if v is None or v.strip() == "" else v.strip() for k, v in raw.items()}
            for col in required:
                if row[col] is None:
                    raise ValueError(f"{path} line {line}: column {col!r} is empty; fix or delete that line")
            rows.append((line, row))
    except csv.Error as e:
        line = reader.reader.line_num  # DictReader's own line_num is not updated by a failed row
        raise ValueError(f"{path} line {line}: not readable as CSV ({e}); fix or delete that line") from None
    return rows


def _read_one(path: str) -> list[tuple[int, dict]]:
    """Rows of one results.csv as (line number, parsed row dict)."""
    rows = _csv_records(path, REQUIRED_COLUMNS, "a results.csv")
    for line, row in rows:
        for col in INT_COLUMNS:
            try:
                row[col] = _parse_int(row[col])
            except ValueError:
                raise ValueError(
                    f"{path} line {line}: column {col!r} = {row[col]!r} is not an integer (int64); "
                    "fix or delete that line"
                ) from None
        try:
            acc = float(row["test_accuracy"])
        except ValueError:
            acc = math.nan
        if not (0.0 <= acc <= 1.0):
            raise ValueError(
                f"{path} line {line}: test_accuracy = {row['test_accuracy']!r}, expected a number in [0, 1]; "
                "fix or delete that line"
            )
        row["test_accuracy"] = acc
        for col in SECONDS_COLUMNS:
            if row.get(col) is not None and not 0.0 <= _float_or_nan(row[col]) < math.inf:
                raise ValueError(f"{path} line {line}: {col} = {row[col]!r}, expected seconds (a number >= 0) or "
                                 "nothing; fix or delete that line")
    if not rows:
        raise ValueError(f"{path}: header but no rows (no round finished yet?); rerun the experiment or drop this DIR")
    return rows


def _float_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _results_paths(dirs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """DIR/results.csv of each DIR, checked to exist; a DIR given twice is an error."""
    paths = []
    seen_dirs: dict[str, str] = {}
    for d in _as_dir_list(dirs):
        real = os.path.realpath(d)
        if real in seen_dirs:
            raise ValueError(f"dirs: {d!r} is given twice (also as {seen_dirs[real]!r}); pass each run directory once")
        seen_dirs[real] = d
        path = os.path.join(d, RESULTS_FILE)
        if not os.path.isdir(d):
            raise ValueError(f"{d}: no such directory; pass a run directory (the --workdir of `alfamix-jax run`)")
        if not os.path.isfile(path):
            raise ValueError(f"{path}: not found; {d!r} is not a finished run directory (run the experiment first)")
        paths.append(path)
    return paths


def load_results(dirs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict]:
    """Read `DIR/results.csv` from each run directory and concatenate the rows.

    Each row is a dict: strategy (str), seed, round, labelled (int), test_accuracy (float in
    [0, 1]), and every other column as its raw string (None when empty). A (strategy, seed, round)
    seen twice, in one file or across DIRs, is an error rather than a silent merge: it means the
    same run was passed twice or two runs share a seed. Raises ValueError naming the file and fix.
    """
    results: list[dict] = []
    where: dict[tuple, str] = {}  # (strategy, seed, round) and (strategy, seed, "labelled", n) -> file line
    for path in _results_paths(dirs):
        for line, row in _read_one(path):
            key = (row["strategy"], row["seed"], row["round"])
            here = f"{path} line {line}"
            if key in where:
                raise ValueError(
                    f"strategy {key[0]!r}, seed {key[1]}, round {key[2]} appears twice: {where[key]} and {here}; "
                    "the same run was passed twice or two runs share a seed: pass each run once, or rerun one "
                    "with other seeds"
                )
            where[key] = here
            same_size = (row["strategy"], row["seed"], "labelled", row["labelled"])
            if same_size in where:
                raise ValueError(
                    f"strategy {key[0]!r}, seed {key[1]}: two rounds with labelled = {row['labelled']} "
                    f"({where[same_size]} and {here}); each round labels more examples than the last, so one "
                    "row is stale: delete it or rerun that seed"
                )
            where[same_size] = here
            results.append(row)
    return results


# ---------------------------------------------------------------------------------------------
# config.json: runs are merged only when their experiments agree


def load_config_json(workdir: str | os.PathLike) -> dict | None:
    """The parsed `DIR/config.json` (a JSON object), or None when the workdir has none.
    ValueError naming the file (and line) when it is not a JSON object."""
    path = os.path.join(os.fspath(workdir), CONFIG_FILE)
    if not os.path.lexists(path):
        return None
    text = _read_text(path, "the experiment's config.json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {e.lineno} column {e.colno}: not valid JSON ({e.msg}); the runner writes "
                         "it: restore it, or remove it (then merge with --allow-mixed)") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer over 4300 digits, or nesting too deep
        raise ValueError(f"{path}: not valid JSON ({str(e)[:120]}); restore it or remove it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (the experiment's config), got a {type(data).__name__}")
    return data


def _flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """Dotted field -> the value as canonical JSON (so nan == nan and 1 != true), dicts unfolded."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value, sort_keys=True)
    return out


def config_differences(configs: Sequence[tuple[str, dict]]) -> list[str]:
    """For (DIR, config) pairs: one line per dotted field, other than the strategies and seeds, on which
    the configs disagree, e.g. 'train.learning_rate: 0.001 in A, 0.01 in B'; fields some config lacks
    ('absent', e.g. one written by an older version) come last."""
    flat = [(d, _flatten({k: v for k, v in c.items() if k not in RUN_SELECTION_FIELDS})) for d, c in configs]
    fields = sorted({f for _, fc in flat for f in fc})
    lines = []
    for field in fields:
        by_value: dict[str, list[str]] = {}
        for d, fc in flat:
            value = fc.get(field, "absent")
            by_value.setdefault(value if len(value) <= 60 else value[:57] + "...", []).append(d)
        if len(by_value) > 1:
            line = f"{field}: " + ", ".join(f"{v} in {' and '.join(ds)}" for v, ds in by_value.items())
            lines.append(("absent" in by_value, line))
    return [line for _, line in sorted(lines, key=lambda item: item[0])]  # set in all first: the real differences


def check_configs(dirs: Sequence[str], *, allow_mixed: bool = False) -> list[str]:
    """Refuse to merge runs whose config.json differ other than in strategies and seeds, or that lack
    one (their experiments cannot be compared), unless allow_mixed; one DIR alone is always fine.
    Every config.json must parse. -> notes for the report (what differs, when allowed)."""
    configs = [(d, load_config_json(d)) for d in dirs]
    if len(configs) < 2:
        return []
    missing = [os.path.join(d, CONFIG_FILE) for d, c in configs if c is None]
    diffs = config_differences([(d, c) for d, c in configs if c is not None])
    if not allow_mixed:
        if missing:
            raise ValueError(f"{missing[0]}: not found, so this run's config cannot be checked against the other "
                             "runs'; pass --allow-mixed to merge them anyway")
        if diffs:
            shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
            raise ValueError(f"the runs' config.json differ in more than strategies and seeds: {shown}; report them "
                             "separately, or pass --allow-mixed to merge them anyway")
    notes = [f"{p}: not found (merged anyway, --allow-mixed)" for p in missing]
    return notes + [f"{line} (merged anyway, --allow-mixed)" for line in diffs]


# ---------------------------------------------------------------------------------------------
# picks.csv: the rows each round labelled


def _strict_int(text: str) -> int:
    """An int64 written as digits (no "3.0", "1e3" or "1_000": picks.csv holds plain integers)."""
    if not re.fullmatch(r"[+-]?[0-9]{1,19}", text) or int(text) not in INT64_RANGE:
        raise ValueError(text)
    return int(text)


def load_picks(workdir: str | os.PathLike) -> dict[tuple[str, int], dict[int, np.ndarray]]:
    """`DIR/picks.csv` as (strategy, seed) -> round -> the pool rows labelled that round, int64 [k]
    in rank order (round 0: the initial set), keys sorted; {} when the workdir has none. Checks integer columns,
    round, rank, index >= 0, no row picked twice in one (strategy, seed) run and ranks 0..k-1 in
    every round; ValueError naming the file and line."""
    path = os.path.join(os.fspath(workdir), PICKS_FILE)
    if not os.path.lexists(path):
        return {}
    ranks: dict[tuple[str, int, int], dict[int, tuple[int, int]]] = {}  # -> rank -> (index, line)
    seen: dict[tuple[str, int], dict[int, int]] = {}  # (strategy, seed) -> index -> line
    for line, row in _csv_records(path, PICKS_COLUMNS, "a picks.csv"):
        values = {}
        for col in PICKS_COLUMNS[1:]:
            try:
                values[col] = _strict_int(row[col])
            except ValueError:
                raise ValueError(f"{path} line {line}: column {col!r} = {row[col]!r} is not an integer (int64); "
                                 "fix or delete that line") from None
            if col != "seed" and values[col] < 0:
                raise ValueError(f"{path} line {line}: column {col!r} = {values[col]} is negative; fix or delete "
                                 "that line")
        run, index = (row["strategy"], values["seed"]), values["index"]
        if index in seen.setdefault(run, {}):
            raise ValueError(f"{path} line {line}: index {index} is picked twice by strategy {run[0]!r}, seed "
                             f"{run[1]} (also line {seen[run][index]}); a row is labelled once per run")
        seen[run][index] = line
        by_rank = ranks.setdefault((*run, values["round"]), {})
        if values["rank"] in by_rank:
            raise ValueError(f"{path} line {line}: rank {values['rank']} appears twice in strategy {run[0]!r}, seed "
                             f"{run[1]}, round {values['round']} (also line {by_rank[values['rank']][1]})")
        by_rank[values["rank"]] = (index, line)
    picks: dict[tuple[str, int], dict[int, np.ndarray]] = {}
    for (strategy, seed, rnd), by_rank in sorted(ranks.items()):
        if max(by_rank) != len(by_rank) - 1:
            gap = min(set(range(len(by_rank))) - set(by_rank))
            first = min(line for _, line in by_rank.values())
            raise ValueError(f"{path} line {first}: strategy {strategy!r}, seed {seed}, round {rnd} has ranks up to "
                             f"{max(by_rank)} but no rank {gap}; expected ranks 0..{len(by_rank) - 1}")
        order = [by_rank[r][0] for r in range(len(by_rank))]
        picks.setdefault((strategy, seed), {})[rnd] = np.asarray(order, np.int64)
    return picks


def _merge_picks(dirs: Sequence[str]) -> dict[tuple[str, int], dict[int, np.ndarray]]:
    """load_picks over all DIRs; one (strategy, seed) in two DIRs' picks.csv is an error."""
    merged: dict[tuple[str, int], dict[int, np.ndarray]] = {}
    source: dict[tuple[str, int], str] = {}
    for d in dirs:
        for run, rounds in load_picks(d).items():
            if run in merged:
                raise ValueError(f"strategy {run[0]!r}, seed {run[1]} has picks in both "
                                 f"{os.path.join(source[run], PICKS_FILE)} and {os.path.join(d, PICKS_FILE)}; "
                                 "pass each run once")
            merged[run], source[run] = rounds, d
    return merged


def pick_overlap(picks: dict[tuple[str, int], dict[int, np.ndarray]],
                 names: Sequence[str] | None = None) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """How alike two strategies query: per pair, the Jaccard overlap len(A & B) / len(A | B) of all rows
    queried in rounds >= 1 (the initial set, round 0, is shared), averaged over the seeds both ran.
    -> (names, overlap [S, S] with nan where no shared seed, seeds [S, S] int); names default to
    the order of first appearance in `picks`."""
    if names is None:
        names = tuple(dict.fromkeys(s for s, _ in picks))
    queried = {run: {int(i) for r, rows in rounds.items() if r >= 1 for i in rows} for run, rounds in picks.items()}
    s = len(names)
    overlap, counts = np.full((s, s), np.nan), np.zeros((s, s), np.int64)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            values = []
            for (strategy, seed), rows_a in queried.items():
                rows_b = queried.get((b, seed))
                if strategy == a and rows_b is not None and rows_a | rows_b:
                    values.append(len(rows_a & rows_b) / len(rows_a | rows_b))
            counts[i, j] = len(values)
            if values:
                overlap[i, j] = float(np.mean(values))
    return tuple(names), overlap, counts


# ---------------------------------------------------------------------------------------------
# Grouping


def strategy_names(results: Sequence[dict]) -> tuple[str, ...]:
    """Strategies in order of first appearance (the order of the DIRs, then of the runner's rows)."""
    return tuple(dict.fromkeys(r["strategy"] for r in results))


def _accuracy_grid(results: Sequence[dict]) -> dict[str, dict[int, dict[int, float]]]:
    """strategy -> labelled count -> seed -> test accuracy."""
    grid: dict[str, dict[int, dict[int, float]]] = {}
    for r in results:
        by_seed = grid.setdefault(r["strategy"], {}).setdefault(r["labelled"], {})
        if r["seed"] in by_seed:
            raise ValueError(
                f"results: strategy {r['strategy']!r}, seed {r['seed']} has two rounds with labelled = "
                f"{r['labelled']}; each round must label more examples than the last: check the run's results.csv"
            )
        by_seed[r["seed"]] = r["test_accuracy"]
    return grid


@dataclasses.dataclass(frozen=True)
class Cell:
    """Accuracy over the seeds that reached one labelled count."""

    mean: float
    std: float
    n: int


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    labelled: int
    rounds: tuple[int, ...]  # round indices seen at this labelled count (one, unless runs disagree)
    cells: dict[str, Cell]  # strategy -> accuracy; strategies without this labelled count are absent


def summary_table(results: Sequence[dict], *, ddof: int = 0) -> list[SummaryRow]:
    """Mean and std (over seeds, `ddof`, default 0 = population) of test accuracy per strategy and
    labelled-set size, one row per labelled count in increasing order."""
    grid = _accuracy_grid(results)
    rounds: dict[int, set[int]] = {}
    for r in results:
        rounds.setdefault(r["labelled"], set()).add(r["round"])
    rows = []
    for labelled in sorted(rounds):
        cells = {}
        for name in strategy_names(results):
            accs = list(grid[name].get(labelled, {}).values())
            if accs:
                a = np.asarray(accs, np.float64)
                std = float(a.std(ddof=ddof)) if a.size > ddof else math.nan
                cells[name] = Cell(float(a.mean()), std, a.size)
        rows.append(SummaryRow(labelled, tuple(sorted(rounds[labelled])), cells))
    return rows


# ---------------------------------------------------------------------------------------------
# Area under the budget curve


def area_under_budget_curve(labelled: Sequence[float], accuracy: Sequence[float]) -> float:
    """Trapezoid area under accuracy vs labelled count, divided by the labelled range: the mean
    accuracy over the budget, in [0, 1] for accuracies in [0, 1]. One point -> that accuracy.
    labelled: [R], accuracy: [R], any order (sorted here); labelled counts must be distinct."""
    x = np.asarray(labelled, np.float64)  # [R]
    y = np.asarray(accuracy, np.float64)  # [R]
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(
            f"labelled, accuracy: expected two non-empty 1-D sequences of one length, got shapes {x.shape}, {y.shape}"
        )
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if np.any(np.diff(x) == 0):
        raise ValueError(f"labelled: repeated labelled count(s) {sorted(set(x[1:][np.diff(x) == 0]))}; one per round")
    if x.size == 1:
        return float(y[0])
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


@dataclasses.dataclass(frozen=True)
class AUBC:
    mean: float
    std: float
    per_seed: dict[int, float]  # seed -> AUBC
    labelled_range: tuple[int, int]  # (min, max) labelled count over the strategy's seeds
    same_range: bool  # every seed's curve spans the same labelled counts (else not comparable)


def aubc_table(results: Sequence[dict], *, ddof: int = 0) -> dict[str, AUBC]:
    """AUBC per (strategy, seed), then mean and std (`ddof`, default 0) over seeds per strategy."""
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for r in results:
        curves.setdefault(r["strategy"], {}).setdefault(r["seed"], []).append((r["labelled"], r["test_accuracy"]))
    out = {}
    for name in strategy_names(results):
        per_seed, spans = {}, set()
        for seed in sorted(curves[name]):
            xs, ys = zip(*curves[name][seed], strict=True)
            per_seed[seed] = area_under_budget_curve(xs, ys)
            spans.add((min(xs), max(xs)))
        v = np.asarray(list(per_seed.values()), np.float64)
        std = float(v.std(ddof=ddof)) if v.size > ddof else math.nan
        lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
        out[name] = AUBC(float(v.mean()), std, per_seed, (lo, hi), len(spans) == 1)
    return out


# ---------------------------------------------------------------------------------------------
# Pairwise comparison matrix


def t_critical(n: int, alpha: float = 0.05) -> float:
    """Two-sided critical value of Student's t with n - 1 degrees of freedom (n = paired seeds).
    n = 5 gives 2.776, the original's hard-coded constant; n = 3 gives 4.303."""
    if not (isinstance(n, int | np.integer) and n >= 2):
        raise ValueError(f"n: need at least 2 paired seeds for a t-test, got {n!r}")
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha: expected a significance level in (0, 1), got {alpha!r}")
    return float(scipy.stats.t.ppf(1.0 - alpha / 2.0, n - 1))


def paired_t(d: Sequence[float], *, ddof: int = 1) -> float:
    """t = mean(d) / (std(d, ddof) / sqrt(n)) over paired differences d: [n], n >= 2.

    Zero spread: a constant nonzero d gives +-inf (every seed agrees, so a constant positive
    difference is a win); an all-zero d gives 0 (no win), not 0/0."""
    d = np.asarray(d, np.float64)  # [n]
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"d: expected a 1-D array of at least 2 paired differences, got shape {d.shape}")
    if ddof not in (0, 1):
        raise ValueError(f"ddof: expected 0 (population std, the original) or 1 (sample std), got {ddof!r}")
    if np.all(d == d[0]):  # decided on the values: a float mean of equal values can miss them by an ulp
        return math.copysign(math.inf, d[0]) if d[0] != 0.0 else 0.0
    return float(d.mean() / (d.std(ddof=ddof) / math.sqrt(d.size)))


@dataclasses.dataclass(frozen=True)
class PairwiseComparison:
    """Counts behind the comparison matrix, for ordered pairs (row i, column j)."""

    names: tuple[str, ...]
    wins: np.ndarray  # [S, S] int: rounds where i beats j (t > t_crit)
    compared: np.ndarray  # [S, S] int: rounds both ran with >= 2 shared seeds
    skipped: np.ndarray  # [S, S] int: rounds both ran but with < 2 shared seeds (not tested)
    sample_sizes: tuple[int, ...]  # the distinct numbers of paired seeds n that were tested

    @property
    def matrix(self) -> np.ndarray:
        """[S, S] wins / compared; nan where a pair shares no testable round."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.compared > 0, self.wins / np.maximum(self.compared, 1), np.nan)


def compare_pairs(results: Sequence[dict], *, alpha: float = 0.05, ddof: int = 1) -> PairwiseComparison:
    """Paired t-tests of every ordered pair of strategies at every shared labelled count.

    For strategies i, j and a labelled count both reached, d = acc_i - acc_j over the seeds both
    ran; i beats j there when paired_t(d, ddof) > t_critical(len(d), alpha). Rounds where the
    two share fewer than 2 seeds cannot be tested and are counted in `skipped`, not `compared`."""
    grid = _accuracy_grid(results)
    names = strategy_names(results)
    s = len(names)
    wins = np.zeros((s, s), np.int64)
    compared = np.zeros((s, s), np.int64)
    skipped = np.zeros((s, s), np.int64)
    sizes = set()
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i == j:
                continue
            for labelled in sorted(set(grid[a]) & set(grid[b])):
                seeds = sorted(set(grid[a][labelled]) & set(grid[b][labelled]))
                if len(seeds) < 2:
                    skipped[i, j] += 1
                    continue
                d = [grid[a][labelled][k] - grid[b][labelled][k] for k in seeds]
                compared[i, j] += 1
                sizes.add(len(seeds))
                wins[i, j] += paired_t(d, ddof=ddof) > t_critical(len(seeds), alpha)
    return PairwiseComparison(names, wins, compared, skipped, tuple(sorted(sizes)))


def pairwise_matrix(
    results: Sequence[dict], *, alpha: float = 0.05, ddof: int = 1
) -> tuple[tuple[str, ...], np.ndarray]:
    """The paper's comparison matrix: entry (i, j) = fraction of the compared rounds in which
    strategy i beats strategy j (see compare_pairs). -> (names, matrix [S, S]); diagonal 0.

    Normalisation: BADGE adds 1/L for each of the L rounds of an experiment where i beats j, so
    each experiment weighs at most 1 and matrices of several datasets can be summed; here L is the
    number of rounds compared for that pair (equal to the experiment's rounds when all are shared).
    nan where the pair shares no testable round."""
    cmp = compare_pairs(results, alpha=alpha, ddof=ddof)
    m = cmp.matrix
    np.fill_diagonal(m, 0.0)
    return cmp.names, m


def column_means(matrix: np.ndarray) -> np.ndarray:
    """The summary the paper prints under the matrix: for each column j, the mean over the other
    rows i != j of entry (i, j), i.e. how often j loses (lower is better). nan entries are
    ignored; nan if the column has none. matrix: [S, S] -> [S]."""
    m = np.array(matrix, np.float64)  # [S, S]
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix: expected a square [S, S] array, got shape {m.shape}")
    np.fill_diagonal(m, np.nan)
    out = np.full(m.shape[1], np.nan)
    for j in range(m.shape[1]):
        col = m[:, j][~np.isnan(m[:, j])]
        if col.size:
            out[j] = col.mean()
    return out


# ---------------------------------------------------------------------------------------------
# Query time


@dataclasses.dataclass(frozen=True)
class QueryTimes:
    """Seconds one strategy spent choosing rows, over its seeds and rounds (nan: none recorded)."""

    queries: int  # rows with a query_seconds (round 0 has none: the initial set is not queried)
    seconds_mean: float  # steady-state query time (query_seconds)
    seconds_total: float
    compiles: int  # rows with a query_compile_seconds
    compile_mean: float  # the part spent compiling (query_compile_seconds)
    compile_total: float


def query_time_table(results: Sequence[dict]) -> dict[str, QueryTimes]:
    """Mean and total of query_seconds and of query_compile_seconds per strategy, over the rows
    that have them (empty cells, as in round 0, are skipped), in strategy order."""
    out = {}
    for name in strategy_names(results):
        mine = [r for r in results if r["strategy"] == name]
        stats = []
        for col in SECONDS_COLUMNS:
            v = np.asarray([float(r[col]) for r in mine if r.get(col) is not None], np.float64)  # [Q]
            stats += [v.size, float(v.mean()) if v.size else math.nan, float(v.sum()) if v.size else math.nan]
        out[name] = QueryTimes(*stats)
    return out


# ---------------------------------------------------------------------------------------------
# Plots

LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # 7 is coprime with tab10's 10 colours


def line_style(i: int) -> dict:
    """Matplotlib style of the i-th strategy's curve: tab10 colours, then the next line style, with
    the marker cycling apart; (colour, line style) differs for 40 strategies, with the marker for 280."""
    from matplotlib import colormaps

    colours = colormaps["tab10"].colors
    return {"color": colours[i % 10], "linestyle": LINE_STYLES[(i // 10) % len(LINE_STYLES)],
            "marker": MARKERS[i % len(MARKERS)]}


def _plot_label(text: str) -> str:
    """User text as a matplotlib label: one line, at most 40 characters, '$' not read as mathtext,
    and no leading '_' (which would hide it from the legend)."""
    text = re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", " ", text)
    text = text if len(text) <= 40 else text[:39] + "\u2026"
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def learning_curves_figure(results: Sequence[dict]):
    """The learning curves as a Figure: mean test accuracy vs labelled count per strategy, band =
    +- population std over seeds; a distinct colour/line style per strategy, the legend right of the axes."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    names = strategy_names(results)
    rows = summary_table(results, ddof=0)
    labels = [_plot_label(n) for n in names]
    ncols = 1 if len(names) <= 24 else 2
    legend_width = min(4.5, 0.6 + 0.075 * max(map(len, labels))) * ncols
    height = max(4.5, 1.5 + 0.2 * math.ceil(len(names) / ncols))
    fig = Figure(figsize=(6.5 + legend_width, height), layout="constrained")
    ax = fig.add_subplot()
    for i, (name, label) in enumerate(zip(names, labels, strict=True)):
        pts = [(r.labelled, r.cells[name]) for r in rows if name in r.cells]
        x = np.array([p[0] for p in pts], np.float64)  # [R]
        mean = np.array([p[1].mean for p in pts])  # [R]
        std = np.array([p[1].std for p in pts])  # [R]
        style = line_style(i)
        ax.plot(x, mean, markersize=3, linewidth=1.3, label=label, **style)
        ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.12, linewidth=0)
    ax.set_xlabel("labelled examples")
    ax.set_ylabel("test accuracy")
    ax.set_title("Learning curves (mean, band = +- std over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, ncols=ncols,
              fontsize="small" if len(names) <= 12 else "x-small")
    return fig


def pairwise_matrix_figure(results: Sequence[dict], *, alpha: float = 0.05, ddof: int = 1):
    """The comparison matrix as a Figure: a heat map with the fractions in the cells and the column
    means under the x labels; the figure grows and the fonts shrink with the number of strategies."""
    from matplotlib.figure import Figure

    names, m = pairwise_matrix(results, alpha=alpha, ddof=ddof)
    cols = column_means(m)
    s = len(names)
    font = 10.0 if s <= 5 else max(5.5, 10.0 - 0.3 * (s - 5))
    cell = 0.9 if s <= 5 else max(0.5, 0.9 - 0.03 * (s - 5))  # inches per cell
    side = max(3.5, 1.2 + cell * s)
    shown = np.where(np.eye(s, dtype=bool), np.nan, m)  # [S, S]; the diagonal is no comparison
    fig = Figure(figsize=(side + 2.5, side + 1.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(shown), vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(image, ax=ax, label="fraction of rounds won", shrink=0.8)
    for i in range(s):
        for j in range(s):
            v = shown[i, j]
            text, dark = ("-", True) if np.isnan(v) else (f"{v:.2f}", v > 0.6)
            ax.text(j, i, text, ha="center", va="center", color="black" if dark else "white", fontsize=font)
    labels = [_plot_label(n) for n in names]
    ticks = [n if np.isnan(c) else f"{n}\n(mean {c:.2f})" for n, c in zip(labels, cols, strict=True)]
    ax.set_xticks(range(s), ticks, rotation=45, ha="right", rotation_mode="anchor", fontsize=font)
    ax.set_yticks(range(s), labels, fontsize=font)
    ax.set_xlabel("loses (column; mean = how often it loses)")
    ax.set_ylabel("wins (row)")
    ax.set_title(f"Row beats column\n(paired t-test, alpha={alpha:g}, ddof={ddof})")
    return fig


# ---------------------------------------------------------------------------------------------
# Files


def _make_out_dir(out_dir: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{out_dir}: cannot make the report folder there ({e.strerror or e}); pass --out "
                         "a writable folder") from None


def _write_file(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """write_atomic, with an unwritable target (read-only folder, a folder in the way) as ValueError."""
    try:
        write_atomic(path, write)
    except OSError as e:
        raise ValueError(f"{path}: cannot write it ({e.strerror or e}); pass --out a writable folder") from None


def make_plots(results: Sequence[dict], out_dir: str, *, alpha: float = 0.05, ddof: int = 1) -> list[str]:
    """Write learning_curves.png and pairwise_matrix.png (see the *_figure functions) into out_dir,
    atomically. -> the two paths. An out_dir that cannot be written is a ValueError naming it."""
    _make_out_dir(out_dir)
    paths = []
    for fig, name in ((learning_curves_figure(results), "learning_curves.png"),
                      (pairwise_matrix_figure(results, alpha=alpha, ddof=ddof), "pairwise_matrix.png")):
        paths.append(os.path.join(out_dir, name))
        _write_file(paths[-1], lambda f, fig=fig: fig.savefig(f, format="png", dpi=120))
    return paths


# ---------------------------------------------------------------------------------------------
# The report

_MD_ALWAYS = frozenset("\\`*|[]<>&~$")


def md_escape(text: str) -> str:
    """User text (a strategy name, a path) as literal Markdown inline text: one line, and every
    character that could end a table cell, open emphasis, code, a link or HTML backslash-escaped.
    An underscore inside a word (alfamix_learned) opens nothing in CommonMark and stays as it is."""
    text = re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", " ", str(text))
    out = []
    for k, ch in enumerate(text):
        inside_word = 0 < k < len(text) - 1 and text[k - 1].isalnum() and text[k + 1].isalnum()
        out.append("\\" + ch if ch in _MD_ALWAYS or (ch == "_" and not inside_word) else ch)
    if text[:1] in ("#", "-", "+", "="):  # would start a heading or a list where a line starts with it
        out[0] = "\\" + out[0]
    if (number := re.match(r"[0-9]+[.)]", text)):  # would start an ordered list
        out[number.end() - 1] = "\\" + out[number.end() - 1]
    return "".join(out)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str]) -> str:
    sep = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep[a] for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _frac(v: float) -> str:
    return "-" if np.isnan(v) else f"{v:.2f}"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f} +- {std:.4f}" if not math.isnan(std) else f"{mean:.4f}"


def _seconds(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.3f}" if v < 100 else f"{v:.1f}"


def _accuracy_section(results: Sequence[dict], names: Sequence[str]) -> list[str]:
    rows = summary_table(results, ddof=0)
    table = []
    for r in rows:
        cells = [f"{_pm(c.mean, c.std)} ({c.n})" if (c := r.cells.get(n)) else "-" for n in names]
        table.append(["/".join(map(str, r.rounds)), str(r.labelled), *cells])
    return ["", "## Test accuracy", "",
            "Mean +- std over seeds (population std, ddof=0) of test accuracy in [0, 1]; (n) = seeds.", "",
            _markdown_table(["round", "labelled", *map(md_escape, names)], table, ["r", "r", *"l" * len(names)])]


def _aubc_section(results: Sequence[dict]) -> list[str]:
    aubc = aubc_table(results, ddof=0)
    ranked = sorted(aubc.items(), key=lambda item: -item[1].mean)  # stable: ties keep the strategy order
    table = [[md_escape(n), _pm(a.mean, a.std), str(len(a.per_seed)), f"{a.labelled_range[0]}-{a.labelled_range[1]}"]
             for n, a in ranked]
    parts = ["", "## Area under the budget curve (AUBC)", "",
             "Trapezoid area under accuracy vs labelled count divided by the labelled range (a mean accuracy "
             "over the budget), per seed; mean +- std (ddof=0) over seeds. Best first.", "",
             _markdown_table(["strategy", "AUBC", "seeds", "labelled"], table, ["l", "l", "r", "r"])]
    uneven = [n for n, a in aubc.items() if not a.same_range]
    spans = {a.labelled_range for a in aubc.values()}
    if uneven or len(spans) > 1:
        parts += ["", "Note: the curves do not all span the same labelled counts"
                  + (f" (seeds differ within: {', '.join(map(md_escape, uneven))})" if uneven else "")
                  + "; AUBC over different budgets is not comparable."]
    return parts


def _query_time_section(results: Sequence[dict]) -> list[str]:
    table = [[md_escape(n), str(q.queries), _seconds(q.seconds_mean), _seconds(q.seconds_total),
              _seconds(q.compile_mean), _seconds(q.compile_total)] for n, q in query_time_table(results).items()]
    return ["", "## Query time", "",
            "Seconds spent choosing the rows to label, over seeds and rounds (round 0 has no query): steady-state "
            "time (query_seconds) and the part spent compiling (query_compile_seconds); '-' = none recorded.", "",
            _markdown_table(["strategy", "queries", "query s mean", "query s total", "compile s mean",
                             "compile s total"], table, ["l", *"r" * 5])]


def _matrix_section(results: Sequence[dict], names: Sequence[str], alpha: float, ddof: int) -> list[str]:
    cmp = compare_pairs(results, alpha=alpha, ddof=ddof)
    _, m = pairwise_matrix(results, alpha=alpha, ddof=ddof)
    cols = column_means(m)
    crit = ", ".join(f"n={n}: {t_critical(n, alpha):.3f}" for n in cmp.sample_sizes) or "none"
    parts = ["", "## Pairwise comparison matrix", "",
             f"Entry (row i, column j) = fraction of the compared rounds (labelled counts) in which i beats j: "
             f"paired t-test over the seeds both ran, d = acc_i - acc_j, t = mean(d) / (std(d, ddof={ddof}) / "
             f"sqrt(n)), win when t > t.ppf(1 - {alpha:g}/2, n - 1) (critical values {crit}). "
             "Last row: mean of each column over the other rows (how often the column loses; lower is better). "
             "Diagonal: no comparison.",
             ""]
    table = [[md_escape(n), *("-" if i == j else _frac(v) for j, v in enumerate(m[i]))] for i, n in enumerate(names)]
    table.append(["column mean", *(_frac(c) for c in cols)])
    parts.append(_markdown_table(["row beats column", *map(md_escape, names)], table, ["l", *"r" * len(names)]))
    off = ~np.eye(len(names), dtype=bool)
    n_skipped = int(cmp.skipped[off].sum()) // 2
    if n_skipped:
        parts += ["", f"Skipped {n_skipped} (pair, round) comparison(s) where the two strategies share fewer than "
                  "2 seeds."]
    if np.any(cmp.compared[off] == 0):
        parts += ["", "'-' off the diagonal: the pair shares no round with at least 2 seeds."]
    return parts


def _finished_picks(picks: dict, results: Sequence[dict]) -> dict:
    """The picks of the rounds results.csv holds: a running run's picks.csv may be a round ahead."""
    done: dict[tuple[str, int], set[int]] = {}
    for r in results:
        done.setdefault((r["strategy"], r["seed"]), set()).add(r["round"])
    out = {run: {k: v for k, v in rounds.items() if k in done.get(run, ())} for run, rounds in picks.items()}
    return {run: rounds for run, rounds in out.items() if rounds}


def _overlap_section(picks: dict, names: Sequence[str]) -> list[str]:
    """The 'overlap of queried rows' table, when at least two strategies have picks."""
    with_picks = {s for s, _ in picks}
    order = [n for n in names if n in with_picks] + [s for s in dict.fromkeys(s for s, _ in picks) if s not in names]
    if len(order) < 2:
        return []
    order, overlap, counts = pick_overlap(picks, order)
    table = [[md_escape(a), *("-" if i == j or counts[i, j] == 0 else f"{overlap[i, j]:.2f} ({counts[i, j]})"
                              for j in range(len(order)))] for i, a in enumerate(order)]
    return ["", "## Overlap of queried rows", "",
            "Jaccard overlap (rows both queried / rows either queried) of the pool rows two strategies queried in "
            "rounds >= 1 (the shared initial set excluded), mean over the seeds both have picks.csv rows for; "
            "(n) = seeds; 1 = the same rows, 0 = none in common.", "",
            _markdown_table(["overlap", *map(md_escape, order)], table, ["l", *"r" * len(order)])]


def render_report(
    dirs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | None = None,
    *,
    alpha: float = 0.05,
    ddof: int = 1,
    allow_mixed: bool = False,
) -> str:
    """The text `alfamix-jax report DIR [DIR...]` prints: Markdown tables of accuracy per round,
    AUBC (best first), query time, the pairwise comparison matrix and, where picks.csv exist, the
    overlap of queried rows (over the rounds results.csv holds); and the plot paths. Also writes
    the plots and the same text as report.md into `out_dir` (default: the first DIR's report/
    folder), atomically.
    `ddof` is the t-test's std (1 = sample, 0 = the original); accuracy std is always ddof=0.
    Runs whose config.json differ beyond strategies and seeds are refused unless `allow_mixed`."""
    dir_list = _as_dir_list(dirs)
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha: expected a significance level in (0, 1), got {alpha!r}")
    if ddof not in (0, 1):
        raise ValueError(f"ddof: expected 0 (population std, the original) or 1 (sample std), got {ddof!r}")
    _results_paths(dir_list)  # every DIR exists and holds results.csv, before comparing their configs
    notes = check_configs(dir_list, allow_mixed=allow_mixed)
    results = load_results(dir_list)
    picks = _merge_picks(dir_list)
    out_dir = os.path.join(dir_list[0], "report") if out_dir is None else os.fspath(out_dir)
    names = strategy_names(results)
    seeds = sorted({r["seed"] for r in results})

    parts = ["# alfamix-jax report", ""]
    parts.append("Runs: " + ", ".join(md_escape(os.path.join(d, RESULTS_FILE)) for d in dir_list))
    parts.append(f"Strategies: {', '.join(map(md_escape, names))}. Seeds: {', '.join(map(str, seeds))}. "
                 f"Rows: {len(results)}.")
    if notes:
        parts += ["", "Configs differ:", "", *(f"- {md_escape(n)}" for n in notes)]
    parts += _accuracy_section(results, names)
    parts += _aubc_section(results)
    parts += _query_time_section(results)
    parts += _matrix_section(results, names, alpha, ddof)
    parts += _overlap_section(_finished_picks(picks, results), names)

    paths = make_plots(results, out_dir, alpha=alpha, ddof=ddof)
    report_path = os.path.join(out_dir, "report.md")
    parts += ["", "## Files", "", *(f"- {md_escape(p)}" for p in [*paths, report_path])]
    text = "\n".join(parts) + "\n"
    _write_file(report_path, lambda f: f.write(text.encode("utf-8")))
    return text
