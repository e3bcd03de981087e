"""The experiment report: accuracy table, AUBC, the paper's pairwise comparison matrix, plots.

Reads the `results.csv` that the runner writes in each run directory (one row per strategy, seed
and round) and renders what `alfamix-jax report DIR [DIR...]` prints. The comparison matrix is the
one ALFA-Mix (Parvaneh et al., CVPR 2022) reuses from BADGE (Ash et al., ICLR 2020): a paired
t-test over seeds for each pair of strategies and each labelled-set size. Host-side NumPy and
scipy only; no JAX. Plots use `matplotlib.figure.Figure` directly, so no pyplot backend state is
touched.

Accuracy std (table, AUBC, plot band) is the population std over seeds (ddof=0) unless asked
otherwise; the t-test std is ddof=1 by default (ddof=0 reproduces the original's code).
"""
import csv
import dataclasses
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import scipy.stats

RESULTS_FILE = "results.csv"
# Columns the report reads; the runner also writes query_seconds, query_compile_seconds,
# train_seconds, train_epochs, candidates, filled (kept in each row dict as raw strings).
REQUIRED_COLUMNS = ("strategy", "seed", "round", "labelled", "test_accuracy")
INT_COLUMNS = ("seed", "round", "labelled")


# ---------------------------------------------------------------------------------------------
# Reading


def _as_dir_list(dirs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    if isinstance(dirs, str | os.PathLike):
        return [os.fspath(dirs)]
    out = [os.fspath(d) for d in dirs]
    if not out:
        raise ValueError("dirs: no run directory given; pass at least one DIR containing results.csv")
    return out


def _parse_int(text: str) -> int:
    """An integer, also when written as an integral float ("3.0")."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise
        return int(value)


def _read_one(path: str) -> list[tuple[int, dict]]:
    """Rows of one results.csv as (line number, parsed row dict)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        if not header:
            raise ValueError(f"{path}: empty file (no header row); rerun the experiment or remove this DIR")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)} (header has {', '.join(map(str, header))}); "
                f"expected at least {', '.join(REQUIRED_COLUMNS)}: was it written by the alfamix-jax runner?"
            )
        rows = []
        for raw in reader:
            line = reader.line_num
            if None in raw:
                raise ValueError(f"{path} line {line}: more fields than the header; fix or delete that line")
            row: dict = {}
            for key, value in raw.items():
                row[key] = None if value is None or value.strip() == "" else value.strip()
            for col in REQUIRED_COLUMNS:
                if row[col] is None:
                    raise ValueError(f"{path} line {line}: column {col!r} is empty; fix or delete that line")
            for col in INT_COLUMNS:
                try:
                    row[col] = _parse_int(row[col])
                except ValueError:
                    raise ValueError(
                        f"{path} line {line}: column {col!r} = {row[col]!r} is not an integer; fix or delete that line"
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
            rows.append((line, row))
    if not rows:
        raise ValueError(f"{path}: header but no rows (no round finished yet?); rerun the experiment or drop this DIR")
    return rows


def load_results(dirs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict]:
    """Read `DIR/results.csv` from each run directory and concatenate the rows.

    Each row is a dict: strategy (str), seed, round, labelled (int), test_accuracy (float in
    [0, 1]), and every other column as its raw string (None when empty). A (strategy, seed, round)
    seen twice, in one file or across DIRs, is an error rather than a silent merge: it means the
    same run was passed twice or two runs share a seed. Raises ValueError naming the file and fix.
    """
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

    results: list[dict] = []
    where: dict[tuple, str] = {}  # (strategy, seed, round) and (strategy, seed, "labelled", n) -> file line
    for path in paths:
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
# Files


def _write_atomic(path: str, write: Callable[[str], None]) -> None:
    """Call write(tmp) on a temporary file next to `path`, then rename it over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _write_atomic(path, write)


def _save_figure(fig, path: str) -> None:
    _write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def make_plots(results: Sequence[dict], out_dir: str, *, alpha: float = 0.05, ddof: int = 1) -> list[str]:
    """Write learning_curves.png (mean test accuracy vs labelled count per strategy, band = +-
    population std over seeds) and pairwise_matrix.png (the comparison matrix as a heat map with
    the fractions in the cells; x tick labels carry the column means). -> the two paths."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    os.makedirs(out_dir, exist_ok=True)
    names = strategy_names(results)
    rows = summary_table(results, ddof=0)

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name in names:
        pts = [(r.labelled, r.cells[name]) for r in rows if name in r.cells]
        x = np.array([p[0] for p in pts], np.float64)  # [R]
        mean = np.array([p[1].mean for p in pts])  # [R]
        std = np.array([p[1].std for p in pts])  # [R]
        (line,) = ax.plot(x, mean, marker="o", markersize=3, label=name)
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("labelled examples")
    ax.set_ylabel("test accuracy")
    ax.set_title("Learning curves (mean, band = +- std over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    curves_path = os.path.join(out_dir, "learning_curves.png")
    _save_figure(fig, curves_path)

    _, m = pairwise_matrix(results, alpha=alpha, ddof=ddof)
    cols = column_means(m)
    s = len(names)
    shown = np.where(np.eye(s, dtype=bool), np.nan, m)  # [S, S]; the diagonal is no comparison
    side = max(3.5, 1.2 + 0.9 * s)
    fig = Figure(figsize=(side + 2.0, side + 0.6), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(shown), vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(image, ax=ax, label="fraction of rounds won", shrink=0.8)
    for i in range(s):
        for j in range(s):
            v = shown[i, j]
            text, dark = ("-", True) if np.isnan(v) else (f"{v:.2f}", v > 0.6)
            ax.text(j, i, text, ha="center", va="center", color="black" if dark else "white")
    ticks = [n if np.isnan(c) else f"{n}\n(mean {c:.2f})" for n, c in zip(names, cols, strict=True)]
    ax.set_xticks(range(s), ticks, rotation=30, ha="right")
    ax.set_yticks(range(s), names)
    ax.set_xlabel("loses (column; mean = how often it loses)")
    ax.set_ylabel("wins (row)")
    ax.set_title(f"Row beats column\n(paired t-test, alpha={alpha:g}, ddof={ddof})")
    matrix_path = os.path.join(out_dir, "pairwise_matrix.png")
    _save_figure(fig, matrix_path)
    return [curves_path, matrix_path]


# ---------------------------------------------------------------------------------------------
# The report


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str]) -> str:
    sep = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep[a] for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _frac(v: float) -> str:
    return "-" if np.isnan(v) else f"{v:.2f}"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f} +- {std:.4f}" if not math.isnan(std) else f"{mean:.4f}"


def render_report(
    dirs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | None = None,
    *,
    alpha: float = 0.05,
    ddof: int = 1,
) -> str:
    """The text `alfamix-jax report DIR [DIR...]` prints: Markdown tables of accuracy per round,
    AUBC and the pairwise comparison matrix, and the plot paths. Also writes the plots and the
    same text as report.md into `out_dir` (default: the first DIR's report/ folder), atomically.
    `ddof` is the t-test's std (1 = sample, 0 = the original); accuracy std is always ddof=0."""
    dir_list = _as_dir_list(dirs)
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha: expected a significance level in (0, 1), got {alpha!r}")
    if ddof not in (0, 1):
        raise ValueError(f"ddof: expected 0 (population std, the original) or 1 (sample std), got {ddof!r}")
    results = load_results(dir_list)
    out_dir = os.path.join(dir_list[0], "report") if out_dir is None else os.fspath(out_dir)
    names = strategy_names(results)
    seeds = sorted({r["seed"] for r in results})

    parts = ["# alfamix-jax report", ""]
    parts.append("Runs: " + ", ".join(os.path.join(d, RESULTS_FILE) for d in dir_list))
    parts.append(f"Strategies: {', '.join(names)}. Seeds: {', '.join(map(str, seeds))}. Rows: {len(results)}.")

    rows = summary_table(results, ddof=0)
    parts += ["", "## Test accuracy", "",
              "Mean +- std over seeds (population std, ddof=0) of test accuracy in [0, 1]; (n) = seeds.", ""]
    table = []
    for r in rows:
        cells = [f"{_pm(c.mean, c.std)} ({c.n})" if (c := r.cells.get(n)) else "-" for n in names]
        table.append(["/".join(map(str, r.rounds)), str(r.labelled), *cells])
    parts.append(_markdown_table(["round", "labelled", *names], table, ["r", "r", *"l" * len(names)]))

    aubc = aubc_table(results, ddof=0)
    parts += ["", "## Area under the budget curve (AUBC)", "",
              "Trapezoid area under accuracy vs labelled count divided by the labelled range (a mean accuracy "
              "over the budget), per seed; mean +- std (ddof=0) over seeds.", ""]
    table = [[n, _pm(a.mean, a.std), str(len(a.per_seed)), f"{a.labelled_range[0]}-{a.labelled_range[1]}"]
             for n, a in aubc.items()]
    parts.append(_markdown_table(["strategy", "AUBC", "seeds", "labelled"], table, ["l", "l", "r", "r"]))
    uneven = [n for n, a in aubc.items() if not a.same_range]
    spans = {a.labelled_range for a in aubc.values()}
    if uneven or len(spans) > 1:
        parts += ["", "Note: the curves do not all span the same labelled counts"
                  + (f" (seeds differ within: {', '.join(uneven)})" if uneven else "")
                  + "; AUBC over different budgets is not comparable."]

    cmp = compare_pairs(results, alpha=alpha, ddof=ddof)
    _, m = pairwise_matrix(results, alpha=alpha, ddof=ddof)
    cols = column_means(m)
    crit = ", ".join(f"n={n}: {t_critical(n, alpha):.3f}" for n in cmp.sample_sizes) or "none"
    parts += ["", "## Pairwise comparison matrix", "",
              f"Entry (row i, column j) = fraction of the compared rounds (labelled counts) in which i beats j: "
              f"paired t-test over the seeds both ran, d = acc_i - acc_j, t = mean(d) / (std(d, ddof={ddof}) / "
              f"sqrt(n)), win when t > t.ppf(1 - {alpha:g}/2, n - 1) (critical values {crit}). "
              "Last row: mean of each column over the other rows (how often the column loses; lower is better). "
              "Diagonal: no comparison.",
              ""]
    table = [[n, *("-" if i == j else _frac(v) for j, v in enumerate(m[i]))] for i, n in enumerate(names)]
    table.append(["column mean", *(_frac(c) for c in cols)])
    parts.append(_markdown_table(["row beats column", *names], table, ["l", *"r" * len(names)]))
    off = ~np.eye(len(names), dtype=bool)
    n_skipped = int(cmp.skipped[off].sum()) // 2
    if n_skipped:
        parts += ["", f"Skipped {n_skipped} (pair, round) comparison(s) where the two strategies share fewer than "
                  "2 seeds."]
    if np.any(cmp.compared[off] == 0):
        parts += ["", "'-' off the diagonal: the pair shares no round with at least 2 seeds."]

    paths = make_plots(results, out_dir, alpha=alpha, ddof=ddof)
    report_path = os.path.join(out_dir, "report.md")
    parts += ["", "## Files", "", *(f"- {p}" for p in [*paths, report_path])]
    text = "\n".join(parts) + "\n"
    _write_text(report_path, text)
    return text
