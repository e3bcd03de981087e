"""The report: results.csv loading and its errors, the accuracy table, AUBC, the pairwise
comparison matrix (hand-computed case, an independent scipy implementation, the original's
ddof=0 / 2.776 rule) and the plots."""
import csv
import itertools
import math
import os

import matplotlib.image
import numpy as np
import pytest
import scipy.stats

from alfamix_jax.experiment import report

COLUMNS = ["strategy", "seed", "round", "labelled", "test_accuracy", "query_seconds", "query_compile_seconds",
           "train_seconds", "train_epochs", "candidates", "filled"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(directory, rows, columns=COLUMNS):
    """rows: (strategy, seed, round, labelled, accuracy) -> DIR/results.csv like the runner's."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for strategy, seed, rnd, labelled, acc in rows:
            alfa = strategy == "alfamix"
            full = dict(zip(COLUMNS, [strategy, seed, rnd, labelled, repr(float(acc)), "0.5", "1.5", "2.0", "7",
                                      "40" if alfa else "", "3" if alfa else ""], strict=True))
            writer.writerow([full[c] for c in columns])
    return str(directory)


# The hand-built case: methods A, B, C; rounds at 10, 20, 30 labelled; 4 seeds.
# acc_B[r, s] = 0.5 + 0.1 r + 0.01 s, acc_A = acc_B + D_AB[r], acc_C = acc_B + D_CB[r].
# Paired t (ddof=1, n=4, t_crit = t.ppf(0.975, 3) = 3.182):
#   A-B: r0 d=[.01,.02,.03,.04] mean .025, std sqrt(.0005/3) -> t = 3.873 win;
#        r1 d=[.03,-.01,.02,0] mean .01, std sqrt(.001/3) -> t = 1.095 no; r2 d=.05 constant -> +inf win.
#   C-B: r0 d=[.02,.02,.02,.06] mean .03, std .02 -> t = 3.000 no (ddof=0: 3.000 * sqrt(4/3) = 3.464 win);
#        r1 d=-[.01,.02,.03,.04] -> B-C t = 3.873 win; r2 d=0 exactly -> t = 0, nobody wins.
#   A-C: r0 d=[-.01,0,.01,-.02] t = -0.775 no either way; r1 d=[.04,.01,.05,.04] mean .035,
#        std sqrt(.0003) -> t = 4.041 win; r2 d=.05 -> win.
SEEDS = (0, 1, 2, 3)
LABELLED = (10, 20, 30)
D_AB = np.array([[0.01, 0.02, 0.03, 0.04], [0.03, -0.01, 0.02, 0.0], [0.05] * 4])
D_CB = np.array([[0.02, 0.02, 0.02, 0.06], [-0.01, -0.02, -0.03, -0.04], [0.0] * 4])


def hand_accuracy():
    b = np.array([[0.5 + 0.1 * r + 0.01 * s for s in SEEDS] for r in range(3)])  # [R, seeds]
    return {"A": b + D_AB, "B": b, "C": b + D_CB}


@pytest.fixture
def hand_dirs(tmp_path):
    """A and B in one run directory, C in another with its seeds written in reverse order."""
    acc = hand_accuracy()
    rows_ab = [(m, s, r, LABELLED[r], acc[m][r, s]) for m in "AB" for s in SEEDS for r in range(3)]
    rows_c = [("C", s, r, LABELLED[r], acc["C"][r, s]) for s in reversed(SEEDS) for r in range(3)]
    return [write_run(tmp_path / "ab", rows_ab), write_run(tmp_path / "c", rows_c)]


def test_critical_values_match_the_original_constant():
    # The original hard-codes 2.776 (5 seeds, 4 degrees of freedom); we derive it from n.
    assert round(report.t_critical(5), 3) == 2.776
    assert round(report.t_critical(3), 3) == 4.303
    assert round(report.t_critical(4), 3) == 3.182
    assert report.t_critical(5, alpha=0.01) > report.t_critical(5)
    for bad in (1, 0):
        with pytest.raises(ValueError, match="n"):
            report.t_critical(bad)
    with pytest.raises(ValueError, match="alpha"):
        report.t_critical(5, alpha=1.5)


def test_paired_t_hand_values():
    assert report.paired_t(D_AB[0]) == pytest.approx(3.8730, abs=1e-4)
    assert report.paired_t(D_AB[1]) == pytest.approx(1.0954, abs=1e-4)
    assert report.paired_t(D_CB[0]) == pytest.approx(3.0, abs=1e-9)
    assert report.paired_t(D_CB[0], ddof=0) == pytest.approx(3.0 * math.sqrt(4 / 3), abs=1e-9)
    assert report.paired_t(D_AB[1] - D_CB[1]) == pytest.approx(4.0415, abs=1e-4)
    assert report.paired_t(D_AB[0] - D_CB[0]) == pytest.approx(-0.7746, abs=1e-4)
    # ddof=1 equals scipy's paired t statistic.
    a, b = hand_accuracy()["A"][1], hand_accuracy()["B"][1]
    assert report.paired_t(a - b) == pytest.approx(scipy.stats.ttest_rel(a, b).statistic, rel=1e-9)


def test_paired_t_zero_spread():
    # Every seed agrees on a positive difference: t = +inf, a win; negative: -inf; all zero: 0, no 0/0.
    assert report.paired_t([0.05] * 4) == math.inf
    assert report.paired_t([-0.05] * 3, ddof=0) == -math.inf
    assert report.paired_t([0.0] * 5) == 0.0
    assert not report.paired_t([0.0] * 5) > report.t_critical(5)
    with pytest.raises(ValueError, match="d"):
        report.paired_t([0.1])
    with pytest.raises(ValueError, match="ddof"):
        report.paired_t([0.1, 0.2], ddof=2)


def test_matrix_hand_case(hand_dirs):
    results = report.load_results(hand_dirs)
    names, m = report.pairwise_matrix(results)
    assert names == ("A", "B", "C")
    expected = np.array([[0, 2 / 3, 2 / 3], [0, 0, 1 / 3], [0, 0, 0]])
    np.testing.assert_allclose(m, expected, atol=1e-12)
    np.testing.assert_allclose(report.column_means(m), [0.0, 1 / 3, 1 / 2], atol=1e-12)

    # ddof=0 (the original) makes C-B in round 0 significant: t = 3.464 > 3.182, nothing else flips.
    _, m0 = report.pairwise_matrix(results, ddof=0)
    expected[2, 1] = 1 / 3
    np.testing.assert_allclose(m0, expected, atol=1e-12)

    cmp = report.compare_pairs(results)
    off = ~np.eye(3, dtype=bool)
    assert np.all(cmp.compared[off] == 3) and np.all(cmp.skipped == 0)
    assert cmp.wins[0, 1] == 2 and cmp.sample_sizes == (4,)

    # A stricter alpha: t.ppf(0.995, 3) = 5.841 keeps only the infinite t's (round 2 of A-B, A-C).
    _, strict = report.pairwise_matrix(results, alpha=0.01)
    np.testing.assert_allclose(strict, [[0, 1 / 3, 1 / 3], [0, 0, 0], [0, 0, 0]], atol=1e-12)


def test_matrix_skips_rounds_without_two_shared_seeds(tmp_path):
    rows = [("A", s, 0, 10, 0.5 + 0.01 * s) for s in (0, 1, 2)]
    rows += [("A", s, 1, 20, 0.8 + 0.01 * s) for s in (0, 1, 2)]
    rows += [("B", 0, 0, 10, 0.3)]  # round 0: one shared seed -> skipped
    rows += [("B", s, 1, 20, 0.6 + 0.01 * s) for s in (1, 2, 5)]  # round 1: seeds 1, 2 shared -> tested
    rows += [("C", 9, 0, 10, 0.4), ("C", 8, 0, 10, 0.45)]  # no seed shared with anyone
    cmp = report.compare_pairs(report.load_results([write_run(tmp_path / "r", rows)]))
    assert cmp.compared[0, 1] == cmp.compared[1, 0] == 1
    assert cmp.skipped[0, 1] == cmp.skipped[1, 0] == 1
    assert cmp.wins[0, 1] == 1  # d = 0.2 constant over seeds 1, 2 -> +inf
    assert cmp.sample_sizes == (2,)
    m = cmp.matrix
    assert np.isnan(m[0, 2]) and np.isnan(m[2, 1]) and m[0, 1] == 1.0
    text = report.render_report([str(tmp_path / "r")])
    assert "Skipped 3 (pair, round) comparison(s)" in text  # A-B round 0, A-C and B-C round 0
    assert "'-' off the diagonal" in text


def independent_matrix(acc, alpha, ddof):
    """acc: dict name -> [R, seeds] with nan = missing. Straight from the definition with scipy."""
    names = list(acc)
    m = np.full((len(names), len(names)), np.nan)
    for (i, a), (j, b) in itertools.product(enumerate(names), repeat=2):
        if i == j:
            m[i, j] = 0.0
            continue
        wins = compared = 0
        for r in range(acc[a].shape[0]):
            both = ~np.isnan(acc[a][r]) & ~np.isnan(acc[b][r])
            n = int(both.sum())
            if n < 2:
                continue
            t = scipy.stats.ttest_rel(acc[a][r][both], acc[b][r][both]).statistic
            if ddof == 0:
                t *= math.sqrt(n / (n - 1))
            compared += 1
            wins += t > scipy.stats.t.ppf(1 - alpha / 2, n - 1)
        if compared:
            m[i, j] = wins / compared
    return names, m


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matrix_matches_independent_implementation(tmp_path, seed, ddof):
    rng = np.random.default_rng(seed)
    names = ["random", "entropy", "alfamix", "badge"]
    n_rounds, n_seeds = 6, 5
    acc = {}
    rows = []
    for k, name in enumerate(names):
        a = 0.6 + 0.03 * np.arange(n_rounds)[:, None] + 0.004 * k + rng.normal(0, 0.004, (n_rounds, n_seeds))
        a[rng.random(a.shape) < 0.15] = np.nan  # some runs missing -> pairs share fewer seeds
        acc[name] = a
        rows += [(name, s, r, 100 * (r + 1), a[r, s]) for r in range(n_rounds) for s in range(n_seeds)
                 if not np.isnan(a[r, s])]
    results = report.load_results([write_run(tmp_path / "r", rows)])
    got_names, got = report.pairwise_matrix(results, alpha=0.05, ddof=ddof)
    want_names, want = independent_matrix(acc, 0.05, ddof)
    assert list(got_names) == want_names
    np.testing.assert_allclose(got, want, atol=1e-12, equal_nan=True)
    assert 0 < np.nansum(got) < np.sum(~np.eye(4, dtype=bool))  # a mix of wins and non-wins


def test_ddof0_with_five_seeds_is_the_original_rule(tmp_path):
    # The original: t = mean(d) / (np.std(d) / sqrt(5)), win when t > 2.776.
    rng = np.random.default_rng(7)
    a = 0.7 + rng.normal(0, 0.01, (8, 5))  # [R, seeds]
    b = a - 0.008 + rng.normal(0, 0.01, (8, 5))
    rows = [(m, s, r, 10 * (r + 1), x[r, s]) for m, x in (("a", a), ("b", b)) for r in range(8) for s in range(5)]
    _, m = report.pairwise_matrix(report.load_results([write_run(tmp_path / "r", rows)]), ddof=0)
    d = a - b
    original = np.mean(d.mean(1) / (d.std(1) / math.sqrt(5)) > 2.776)
    assert 0 < original < 1
    assert m[0, 1] == pytest.approx(original)


def test_area_under_budget_curve_hand_values():
    # (0.5 + 0.7) / 2 * 10 + (0.7 + 0.8) / 2 * 20 = 21 over a range of 30 -> 0.7.
    assert report.area_under_budget_curve([10, 20, 40], [0.5, 0.7, 0.8]) == pytest.approx(0.7)
    assert report.area_under_budget_curve([40, 10, 20], [0.8, 0.5, 0.7]) == pytest.approx(0.7)
    assert report.area_under_budget_curve([100], [0.42]) == 0.42
    assert report.area_under_budget_curve([0, 5], [0.3, 0.3]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="labelled"):
        report.area_under_budget_curve([10, 10], [0.5, 0.6])
    with pytest.raises(ValueError, match="labelled, accuracy"):
        report.area_under_budget_curve([10, 20], [0.5])


def test_aubc_table_and_summary_table(tmp_path):
    rows = [("s", 0, 0, 10, 0.5), ("s", 0, 1, 20, 0.7), ("s", 0, 2, 40, 0.8),  # AUBC 0.7
            ("s", 1, 0, 10, 0.3), ("s", 1, 1, 20, 0.5), ("s", 1, 2, 40, 0.6),  # AUBC 0.5
            ("t", 0, 0, 10, 0.9)]
    results = report.load_results([write_run(tmp_path / "r", rows)])
    aubc = report.aubc_table(results)
    assert aubc["s"].per_seed == pytest.approx({0: 0.7, 1: 0.5})
    assert aubc["s"].mean == pytest.approx(0.6) and aubc["s"].std == pytest.approx(0.1)
    assert aubc["s"].labelled_range == (10, 40) and aubc["s"].same_range
    assert aubc["t"].mean == pytest.approx(0.9) and aubc["t"].std == 0.0
    assert report.aubc_table(results, ddof=1)["s"].std == pytest.approx(math.sqrt(0.02))

    table = report.summary_table(results)
    assert [r.labelled for r in table] == [10, 20, 40]
    assert table[0].rounds == (0,)
    first = table[0].cells
    assert first["s"].mean == pytest.approx(0.4) and first["s"].std == pytest.approx(0.1) and first["s"].n == 2
    assert first["t"] == report.Cell(0.9, 0.0, 1)
    assert "t" not in table[1].cells
    assert report.summary_table(results, ddof=1)[0].cells["s"].std == pytest.approx(math.sqrt(0.02))

    text = report.render_report([str(tmp_path / "r")])
    assert "| 0 | 10 | 0.4000 +- 0.1000 (2) | 0.9000 +- 0.0000 (1) |" in text
    assert "| 1 | 20 | 0.6000 +- 0.1000 (2) | - |" in text
    assert "| s | 0.6000 +- 0.1000 | 2 | 10-40 |" in text
    assert "AUBC over different budgets is not comparable" in text  # t spans 10-10, s spans 10-40


def is_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    image = matplotlib.image.imread(path)
    return head == PNG_SIGNATURE and image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def test_render_report_writes_plots_and_text(hand_dirs):
    text = report.render_report(hand_dirs, ddof=0)
    out_dir = os.path.join(hand_dirs[0], "report")
    curves, matrix, md = (os.path.join(out_dir, f) for f in ("learning_curves.png", "pairwise_matrix.png",
                                                             "report.md"))
    for path in (curves, matrix):
        assert os.path.getsize(path) > 1000 and is_png(path)
        assert f"- {path}" in text
    with open(md, encoding="utf-8") as f:
        assert f.read() == text
    assert not [f for f in os.listdir(out_dir) if f.startswith(".tmp-")]
    assert "(critical values n=4: 3.182)" in text and "std(d, ddof=0)" in text
    assert "| A | - | 0.67 | 0.67 |" in text
    assert "| C | 0.00 | 0.33 | - |" in text  # ddof=0: C beats B in round 0
    assert "| column mean | 0.00 | 0.50 | 0.50 |" in text
    for heading in ("## Test accuracy", "## Area under the budget curve (AUBC)", "## Pairwise comparison matrix"):
        assert heading in text


def test_make_plots_other_dir_and_overwrite(hand_dirs, tmp_path):
    results = report.load_results(hand_dirs)
    out = tmp_path / "plots" / "deep"
    paths = report.make_plots(results, str(out))
    assert [os.path.basename(p) for p in paths] == ["learning_curves.png", "pairwise_matrix.png"]
    assert all(is_png(p) for p in paths)
    paths_again = report.make_plots(results[:12], str(out))  # A alone: one curve, a 1x1 matrix
    assert paths_again == paths and all(is_png(p) for p in paths)
    assert sorted(os.listdir(out)) == ["learning_curves.png", "pairwise_matrix.png"]


def test_five_seeds_report_uses_2776(tmp_path):
    rows = [(m, s, 0, 10, 0.5 + 0.01 * s + (0.02 if m == "x" else 0.0) * (s % 2 + 1)) for m in "xy" for s in range(5)]
    text = report.render_report([write_run(tmp_path / "r", rows)], str(tmp_path / "out"), ddof=0)
    assert "(critical values n=5: 2.776)" in text


def test_extra_and_reordered_columns_are_accepted(tmp_path):
    columns = ["test_accuracy", "labelled", "round", "seed", "strategy"]
    d = write_run(tmp_path / "r", [("a", 0, 0, 10, 0.5)], columns=columns)
    with open(os.path.join(d, "results.csv")) as f:
        lines = f.read().splitlines()
    with open(os.path.join(d, "results.csv"), "w") as f:
        f.write("\n".join([lines[0] + ",note", lines[1] + ",hello", ""]))
    (row,) = report.load_results(d)
    assert row == {"strategy": "a", "seed": 0, "round": 0, "labelled": 10, "test_accuracy": 0.5, "note": "hello"}
    # The runner's full column set: ALFA-Mix's candidates/filled kept, others' empty -> None.
    full = report.load_results([write_run(tmp_path / "f", [("alfamix", 0, 0, 10, 0.5), ("random", 0, 0, 10, 0.4)])])
    assert full[0]["candidates"] == "40" and full[1]["candidates"] is None and full[1]["filled"] is None


def test_errors_name_the_file_and_the_fix(tmp_path, hand_dirs):
    missing_dir = tmp_path / "nope"
    with pytest.raises(ValueError, match="nope: no such directory"):
        report.load_results([str(missing_dir)])

    no_csv = tmp_path / "no_csv"
    no_csv.mkdir()
    with pytest.raises(ValueError, match=r"no_csv/results.csv: not found.*run the experiment"):
        report.render_report([str(no_csv)])

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty/results.csv: empty file"):
        report.load_results([str(empty)])

    header_only = write_run(tmp_path / "header_only", [])
    with pytest.raises(ValueError, match=r"header_only/results.csv: header but no rows"):
        report.load_results(header_only)

    no_acc = write_run(tmp_path / "no_acc", [("a", 0, 0, 10, 0.5)], columns=["strategy", "seed", "round", "labelled"])
    with pytest.raises(ValueError, match=r"no_acc/results.csv: missing column\(s\) test_accuracy"):
        report.load_results(no_acc)

    bad_acc = write_run(tmp_path / "bad_acc", [("a", 0, 0, 10, 1.5)])
    with pytest.raises(ValueError, match=r"bad_acc/results.csv line 2: test_accuracy .* \[0, 1\]"):
        report.load_results(bad_acc)

    bad_seed = tmp_path / "bad_seed"
    write_run(bad_seed, [("a", 0, 0, 10, 0.5)])
    text = (bad_seed / "results.csv").read_text().replace("a,0,0,10", "a,0.0,0,10.0")
    (bad_seed / "results.csv").write_text(text)
    assert report.load_results(str(bad_seed))[0]["labelled"] == 10  # integral floats are integers
    text = text.replace("a,0.0,", "a,zero,")
    (bad_seed / "results.csv").write_text(text)
    with pytest.raises(ValueError, match=r"bad_seed/results.csv line 2: column 'seed' = 'zero' is not an integer"):
        report.load_results(str(bad_seed))

    # The same (strategy, seed, round) in two DIRs, or twice in one file: an error, never merged.
    copy = write_run(tmp_path / "copy", [("A", 3, 1, 20, 0.9)])
    with pytest.raises(ValueError, match=r"strategy 'A', seed 3, round 1 appears twice: .*ab/results.csv line \d+ "
                                         r"and .*copy/results.csv line 2.*pass each run once"):
        report.load_results([hand_dirs[0], copy])
    twice = write_run(tmp_path / "twice", [("A", 0, 0, 10, 0.5), ("A", 0, 0, 10, 0.6)])
    with pytest.raises(ValueError, match=r"twice/results.csv line 2 and .*twice/results.csv line 3"):
        report.load_results(twice)
    stale = write_run(tmp_path / "stale", [("A", 0, 0, 10, 0.5), ("A", 0, 1, 10, 0.6)])
    with pytest.raises(ValueError, match=r"two rounds with labelled = 10 .*stale/results.csv line 2 and .*line 3"):
        report.load_results(stale)
    with pytest.raises(ValueError, match="given twice"):
        report.load_results([hand_dirs[0], hand_dirs[0] + "/"])
    with pytest.raises(ValueError, match="dirs: no run directory"):
        report.load_results([])

    with pytest.raises(ValueError, match="ddof"):
        report.render_report(hand_dirs, str(tmp_path / "x"), ddof=2)
    with pytest.raises(ValueError, match="matrix"):
        report.column_means(np.zeros((2, 3)))
