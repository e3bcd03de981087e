"""The report: results.csv loading and its errors, the accuracy table, AUBC, the pairwise
comparison matrix (hand-computed case, an independent scipy implementation, the original's
ddof=0 / 2.776 rule) and the plots."""
import csv
import itertools
import json
import math
import os
import re

import matplotlib.image
import numpy as np
import pytest
import scipy.stats

from alfamix_jax.experiment import report

COLUMNS = ["strategy", "seed", "round", "labelled", "test_accuracy", "query_seconds", "query_compile_seconds",
           "train_seconds", "train_epochs", "candidates", "filled"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_config(directory, **changes):
    """DIR/config.json like the runner's (a small one); changes: dotted field -> value."""
    config = {"name": "test", "data": {"name": "digits", "max_train": None}, "loop": {"budget": 10, "rounds": 2},
              "train": {"learning_rate": 0.001, "optimizer": "adam"}, "strategies": ["A"], "seeds": [0]}
    for field, value in changes.items():
        *path, last = field.split(".")
        node = config
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def write_run(directory, rows, columns=COLUMNS, config=True):
    """rows: (strategy, seed, round, labelled, accuracy) -> DIR/results.csv like the runner's, and a
    config.json (strategies and seeds from the rows) unless config is False."""
    os.makedirs(directory, exist_ok=True)
    if config:
        write_config(directory, strategies=sorted({r[0] for r in rows}), seeds=sorted({r[1] for r in rows}))
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
    assert sorted(os.listdir(out_dir)) == ["learning_curves.png", "pairwise_matrix.png", "report.md"]  # no temp
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


# ---------------------------------------------------------------------------------------------
# Merging runs: config.json must agree up to strategies and seeds


def test_configs_that_differ_are_refused_unless_allow_mixed(tmp_path):
    a = write_run(tmp_path / "a", [("A", 0, 0, 10, 0.5), ("A", 0, 1, 20, 0.6)])
    b = write_run(tmp_path / "b", [("B", 1, 0, 10, 0.4), ("B", 1, 1, 20, 0.7)])
    assert "Configs differ" not in report.render_report([a, b])  # other strategies and seeds: fine

    write_config(b, strategies=["B"], seeds=[1], **{"train.learning_rate": 0.01, "data.max_train": 500})
    with pytest.raises(ValueError, match=r"data\.max_train: null in .*a, 500 in .*b; train\.learning_rate: 0\.001 "
                                         r"in .*a, 0\.01 in .*b; .*--allow-mixed"):
        report.render_report([a, b])
    text = report.render_report([a, b], allow_mixed=True)
    assert "- train.learning_rate: 0.001 in" in text and "--allow-mixed" in text  # listed in the report

    # A third run agreeing with the first: values grouped by the DIRs holding them; absent fields named.
    c = write_run(tmp_path / "c", [("C", 2, 0, 10, 0.5)])
    write_config(c, strategies=["C"], seeds=[2], **{"train.new_field": 1})
    lines = report.config_differences([(d, report.load_config_json(d)) for d in (a, b, c)])
    assert f"train.learning_rate: 0.001 in {a} and {c}, 0.01 in {b}" in lines
    assert f"train.new_field: absent in {a} and {b}, 1 in {c}" in lines


def test_a_workdir_without_config_json(tmp_path):
    a = write_run(tmp_path / "a", [("A", 0, 0, 10, 0.5)])
    bare = write_run(tmp_path / "bare", [("B", 0, 0, 10, 0.4)], config=False)
    assert report.load_config_json(bare) is None
    assert "Strategies: B." in report.render_report([bare])  # alone: nothing to compare with
    with pytest.raises(ValueError, match=r"bare/config.json: not found.*--allow-mixed"):
        report.render_report([a, bare])
    text = report.render_report([a, bare], allow_mixed=True)
    assert "bare/config.json: not found (merged anyway" in text


@pytest.mark.parametrize("content, match", [
    (b'{"train": {"learning_rate": 0.001,}}', r"config.json line 1 column 35: not valid JSON"),
    (b'{\n  "name": "x"\n  "seeds": [1]\n}', r"config.json line 3 column 3: not valid JSON"),
    (b"[1, 2]", r"config.json: expected a JSON object"),
    (b'{"name": "\x00"}', r"config.json line 1: a NUL byte"),
    (b'{"name": "\xff"}', r"config.json line 1: byte 0xff is not UTF-8"),
    (b"[" * 100000, r"config.json"),
])
def test_bad_config_json_names_the_file(tmp_path, content, match):
    a = write_run(tmp_path / "a", [("A", 0, 0, 10, 0.5)])
    (tmp_path / "a" / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        report.render_report([a])  # even alone, and even with allow_mixed: the file is broken
    with pytest.raises(ValueError, match=match):
        report.render_report([a], allow_mixed=True)


def test_cli_report_refuses_mixed_configs_with_one_line(tmp_path, capsys):
    from alfamix_jax.cli import main

    a = write_run(tmp_path / "a", [("A", 0, 0, 10, 0.5)])
    b = write_run(tmp_path / "b", [("B", 0, 0, 10, 0.4)])
    write_config(b, **{"loop.budget": 20})
    assert main(["report", a, b, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "loop.budget: 10 in" in err and "--allow-mixed" in err
    assert main(["report", a, b, "--out", str(tmp_path / "out"), "--allow-mixed"]) == 0
    assert "loop.budget: 10 in" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Parse errors name the file and line; user text is escaped


def table_blocks(text):
    """The Markdown tables of a report, each as its list of lines."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    return blocks + ([current] if current else [])


def test_user_text_is_escaped_in_markdown(tmp_path):
    evil = ["a|b", "<script>alert(1)</script>", "x\ny | z", "`code`", "*bold*", "_em_", "[link](http://x)", "# h"]
    names = [*evil, "alfamix_learned"]
    rows = [(n, s, r, 10 * (r + 1), 0.5 + 0.01 * (k + s + r)) for k, n in enumerate(names) for s in (0, 1)
            for r in (0, 1)]
    d = write_run(tmp_path / "r", rows)
    write_picks(d, [(n, s, r, k, 10 * r + k + s) for n in names[:2] for s in (0, 1) for r in (0, 1) for k in (0, 1)])
    text = report.render_report([d])
    tables = table_blocks(text)
    assert len(tables) == 5  # accuracy, AUBC, query time, matrix, overlap
    for table in tables:
        widths = {len(re.split(r"(?<!\\)\|", line)) for line in table}
        assert len(widths) == 1, table  # no cell split by a name's '|' or newline
    assert "<script>" not in text and "\\<script\\>" in text
    assert "\\`code\\`" in text and "\\*bold\\*" in text and "\\_em\\_" in text and "\\[link\\]" in text
    assert "| \\# h |" in text
    assert "| alfamix_learned |" in text  # an underscore inside a word stays readable
    assert not any(line.startswith("y") for line in text.splitlines())


@pytest.mark.parametrize("mangle, match", [
    (lambda b: b.replace(b"A,0,1,", b"\xe9,0,1,"), r"results.csv line 3: byte 0xe9 is not UTF-8"),
    (lambda b: b.replace(b"A,0,1,", b"A\x00,0,1,"), r"results.csv line 3: a NUL byte"),
    (lambda b: bytes(range(256)) * 4, r"results.csv line 1: a NUL byte; this is a binary file"),
    (lambda b: b + b"A,0,5\n", r"results.csv line 4: column 'labelled' is empty"),
    (lambda b: b + b"A,0,5,60,0.5,1,2,3,4,5,6,7\n", r"results.csv line 4: more fields than the header"),
    (lambda b: b + b'A,0,5,60,0.5,"' + b"x" * 200000 + b'"\n', r"results.csv line 4: not readable as CSV"),
    (lambda b: b + b"A,0,5,60,0.5,slow,,,,,\n", r"results.csv line 4: query_seconds = 'slow', expected seconds"),
    (lambda b: b + b"A,0,5,60,0.5,-1,,,,,\n", r"results.csv line 4: query_seconds = '-1'"),
    (lambda b: b + b"A,0,5,60,0.5,1,nan,,,,\n", r"results.csv line 4: query_compile_seconds = 'nan'"),
    (lambda b: b + b"A,1e400,5,60,0.5,1,1,,,,\n", r"results.csv line 4: column 'seed' = '1e400' is not an integer"),
    (lambda b: b + b"A,1" + b"0" * 30 + b",5,60,0.5,1,1,,,,\n", r"results.csv line 4: column 'seed' = '10+' is not"),
])
def test_garbled_results_name_the_file_and_line(tmp_path, mangle, match):
    d = write_run(tmp_path / "r", [("A", 0, 0, 10, 0.5), ("A", 0, 1, 20, 0.6)])
    path = tmp_path / "r" / "results.csv"
    path.write_bytes(mangle(path.read_bytes()))
    with pytest.raises(ValueError, match=match):
        report.render_report([d])


def test_a_bom_is_accepted_and_an_unreadable_file_is_named(tmp_path):
    d = write_run(tmp_path / "r", [("A", 0, 0, 10, 0.5)])
    path = tmp_path / "r" / "results.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert report.load_results(d)[0]["strategy"] == "A"
    os.remove(tmp_path / "r" / "config.json")
    os.mkdir(tmp_path / "r" / "config.json")
    with pytest.raises(ValueError, match=r"r/config.json: cannot read it"):
        report.render_report([d])


# ---------------------------------------------------------------------------------------------
# Output files


def test_outputs_go_through_write_atomic_with_the_umask_mode(tmp_path, hand_dirs, monkeypatch):
    written = []
    real = report.write_atomic
    monkeypatch.setattr(report, "write_atomic", lambda path, write: (written.append(path), real(path, write)))
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        report.render_report(hand_dirs, str(out))
    finally:
        os.umask(old)
    names = ["learning_curves.png", "pairwise_matrix.png", "report.md"]
    assert sorted(os.path.basename(p) for p in written) == names
    for name in names:
        assert os.stat(out / name).st_mode & 0o777 == 0o644, name
    assert sorted(os.listdir(out)) == names
    assert not hasattr(report, "_write_atomic")


def test_an_unwritable_output_folder_is_a_value_error(tmp_path, hand_dirs):
    in_the_way = tmp_path / "file"
    in_the_way.write_text("x")
    with pytest.raises(ValueError, match=r"file: cannot make the report folder"):
        report.render_report(hand_dirs, str(in_the_way))
    with pytest.raises(ValueError, match=r"file/sub: cannot make the report folder"):
        report.render_report(hand_dirs, str(in_the_way / "sub"))
    blocked = tmp_path / "blocked"
    (blocked / "report.md").mkdir(parents=True)  # a folder where report.md goes
    with pytest.raises(ValueError, match=r"blocked/report.md: cannot write it"):
        report.render_report(hand_dirs, str(blocked))
    assert sorted(os.listdir(blocked)) == ["learning_curves.png", "pairwise_matrix.png", "report.md"]
    if os.geteuid() != 0:  # root writes into read-only folders
        read_only = tmp_path / "ro"
        read_only.mkdir()
        read_only.chmod(0o555)
        try:
            with pytest.raises(ValueError, match=r"ro/learning_curves.png: cannot write it"):
                report.render_report(hand_dirs, str(read_only))
        finally:
            read_only.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# Plots with many strategies


def many_strategies(tmp_path, count=20):
    rows = [(f"strategy_{k:02d}", s, r, 10 * (r + 1), 0.4 + 0.02 * r + 0.005 * k + 0.001 * s)
            for k in range(count) for s in (0, 1) for r in range(3)]
    return report.load_results([write_run(tmp_path / f"many{count}", rows)])


def test_twenty_curves_have_distinct_styles_and_the_legend_is_outside(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_hex

    fig = report.learning_curves_figure(many_strategies(tmp_path))
    (ax,) = fig.axes
    styles = [(to_hex(line.get_color()), line.get_linestyle()) for line in ax.get_lines()]
    assert len(styles) == 20 and len(set(styles)) == 20
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    axes = ax.get_window_extent(renderer)
    assert legend.x0 >= axes.x1  # right of the axes, covering no curve
    assert legend.x1 <= fig.bbox.x1 + 1 and legend.y0 >= -1  # and not cut off
    assert len(ax.get_legend().get_texts()) == 20
    assert fig.get_figwidth() > 7


def test_the_matrix_figure_grows_with_the_strategies(tmp_path):
    small = report.pairwise_matrix_figure(many_strategies(tmp_path, 3))
    large = report.pairwise_matrix_figure(many_strategies(tmp_path, 20))
    assert large.get_figwidth() > small.get_figwidth() + 5 and large.get_figheight() > small.get_figheight() + 5
    small_ax, large_ax = small.axes[0], large.axes[0]
    labels = large_ax.get_xticklabels()
    assert len(labels) == 20 and all(t.get_rotation() == 45 for t in labels)
    assert labels[0].get_fontsize() < small_ax.get_xticklabels()[0].get_fontsize()
    assert large_ax.texts[0].get_fontsize() < small_ax.texts[0].get_fontsize()


def test_plot_labels_are_safe():
    assert report._plot_label("a$b$c") == r"a\$b\$c"  # no mathtext
    assert report._plot_label("_hidden") == " _hidden"  # a leading '_' would drop it from the legend
    assert report._plot_label("x\ny") == "x y" and len(report._plot_label("n" * 100)) == 40


# ---------------------------------------------------------------------------------------------
# AUBC order, query time


def test_aubc_table_is_sorted_best_first(tmp_path):
    rows = [(n, 0, r, 10 * (r + 1), acc + 0.1 * r) for n, acc in (("low", 0.3), ("high", 0.6), ("mid", 0.4))
            for r in range(2)]
    text = report.render_report([write_run(tmp_path / "r", rows)])
    section = text.split("## Area under the budget curve")[1].split("##")[0]
    order = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")][1:]
    assert order == ["high", "mid", "low"]
    assert "Strategies: low, high, mid." in text  # the other tables keep the run order


def test_query_time_table(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    lines = ["strategy,seed,round,labelled,test_accuracy,query_seconds,query_compile_seconds"]
    for seed in (0, 1):
        lines += [f"q,{seed},0,10,0.5,,", f"q,{seed},1,20,0.6,0.5,2.0", f"q,{seed},2,30,0.7,1.5,0.0"]
        lines += [f"none,{seed},0,10,0.5,,", f"none,{seed},1,20,0.6,,"]
    (d / "results.csv").write_text("\n".join(lines) + "\n")
    times = report.query_time_table(report.load_results(str(d)))
    assert times["q"] == report.QueryTimes(4, 1.0, 4.0, 4, 1.0, 4.0)
    assert times["none"].queries == 0 and math.isnan(times["none"].seconds_mean)
    text = report.render_report([str(d)])
    assert "| q | 4 | 1.000 | 4.000 | 1.000 | 4.000 |" in text
    assert "| none | 0 | - | - | - | - |" in text


# ---------------------------------------------------------------------------------------------
# picks.csv


def write_picks(directory, rows, header="strategy,seed,round,rank,index"):
    """rows: (strategy, seed, round, rank, index) -> DIR/picks.csv like the runner's."""
    lines = [header] + [",".join(map(str, r)) for r in rows]
    with open(os.path.join(directory, "picks.csv"), "w", newline="") as f:
        f.write("\n".join(lines) + "\n")


def picks_case(tmp_path):
    """A, B on seeds 0, 1 and C on seed 0; initial sets shared, queried rows chosen to overlap."""
    queried = {("A", 0): [[2, 3], [4, 5]], ("B", 0): [[3, 4], [6, 7]], ("C", 0): [[8, 2], [9, 3]],
               ("A", 1): [[10, 11], [12, 13]], ("B", 1): [[13, 12], [11, 10]]}
    rows = []
    for (name, seed), rounds in queried.items():
        for r, idx in enumerate([[0, 1], *rounds]):
            rows += [(name, seed, r, k, i) for k, i in enumerate(idx)]
    results = [(name, seed, r, 2 * (r + 1), 0.5 + 0.1 * r) for name, seed in queried for r in range(3)]
    d = write_run(tmp_path / "p", results)
    write_picks(d, rows[::-1])  # any row order
    return d


def test_load_picks_and_the_overlap_table(tmp_path):
    d = picks_case(tmp_path)
    picks = report.load_picks(d)
    assert set(picks) == {("A", 0), ("B", 0), ("C", 0), ("A", 1), ("B", 1)}
    np.testing.assert_array_equal(picks[("C", 0)][1], [8, 2])  # rank order, not file order
    assert picks[("A", 0)][0].dtype == np.int64 and sorted(picks[("B", 1)]) == [0, 1, 2]
    names, overlap, counts = report.pick_overlap(picks)
    assert names == ("A", "B", "C")
    # seed 0: A {2,3,4,5} vs B {3,4,6,7} -> 2/6; seed 1: the same four rows -> 1; mean 2/3.
    assert overlap[0, 1] == pytest.approx(2 / 3) and counts[0, 1] == 2
    assert overlap[0, 2] == pytest.approx(2 / 6) and counts[0, 2] == 1  # A vs C {2,3,8,9}: seed 0 only
    assert overlap[1, 2] == pytest.approx(1 / 7)  # B {3,4,6,7} vs C {2,3,8,9}
    text = report.render_report([d])
    assert "## Overlap of queried rows" in text
    assert "| A | - | 0.67 (2) | 0.33 (1) |" in text
    # A running run's picks.csv may hold a round results.csv has not: the table leaves it out.
    with open(os.path.join(d, "picks.csv"), "a") as f:
        f.write("A,0,3,0,6\nA,0,3,1,7\n")  # would make A and B agree more on seed 0
    assert len(report.load_picks(d)[("A", 0)]) == 4
    assert "| A | - | 0.67 (2) | 0.33 (1) |" in report.render_report([d])
    assert report.load_picks(tmp_path) == {}  # no picks.csv


def test_no_overlap_table_with_one_strategy_or_no_picks(tmp_path):
    d = write_run(tmp_path / "r", [("A", 0, 0, 2, 0.5), ("A", 0, 1, 4, 0.6)])
    assert "Overlap" not in report.render_report([d])
    write_picks(d, [("A", 0, 0, 0, 1), ("A", 0, 0, 1, 2), ("A", 0, 1, 0, 3), ("A", 0, 1, 1, 4)])
    assert "Overlap" not in report.render_report([d])


@pytest.mark.parametrize("rows, header, match", [
    ([("A", 0, 0, 0, "x")], None, r"picks.csv line 2: column 'index' = 'x' is not an integer"),
    ([("A", 0, 0, 0, 1), ("A", 0, 1.5, 0, 2)], None, r"picks.csv line 3: column 'round' = '1.5' is not an integer"),
    ([("A", 0, 0, 0, 2**63)], None, r"picks.csv line 2: column 'index' = '9223372036854775808' is not an integer"),
    ([("A", 0, 0, 0, -1)], None, r"picks.csv line 2: column 'index' = -1 is negative"),
    ([("A", 0, 0, 0, 3), ("A", 0, 1, 0, 3)], None, r"picks.csv line 3: index 3 is picked twice .*also line 2"),
    ([("A", 0, 0, 0, 3), ("A", 0, 0, 0, 4)], None, r"picks.csv line 3: rank 0 appears twice"),
    ([("A", 0, 0, 0, 3), ("A", 0, 0, 2, 4)], None, r"picks.csv line 2: .*round 0 has ranks up to 2 but no rank 1"),
    ([("A", 0, 0, 0)], "strategy,seed,round,index", r"picks.csv: missing column\(s\) rank"),
    ([("A", 0, 0, 0, "")], None, r"picks.csv line 2: column 'index' is empty"),
    ([("A", 0, 0, 0, "1\x00")], None, r"picks.csv line 2: a NUL byte"),
])
def test_bad_picks_name_the_file_and_line(tmp_path, rows, header, match):
    d = write_run(tmp_path / "r", [("A", 0, 0, 2, 0.5)])
    write_picks(d, rows, **({"header": header} if header else {}))
    with pytest.raises(ValueError, match=match):
        report.load_picks(d)
    with pytest.raises(ValueError, match=match):
        report.render_report([d])


def test_picks_of_one_run_in_two_dirs_are_refused(tmp_path):
    a = write_run(tmp_path / "a", [("A", 0, 0, 2, 0.5)])
    b = write_run(tmp_path / "b", [("B", 0, 0, 2, 0.5)])
    for d in (a, b):
        write_picks(d, [("A", 0, 0, 0, 1)])
    with pytest.raises(ValueError, match=r"strategy 'A', seed 0 has picks in both .*a/picks.csv and .*b/picks.csv"):
        report.render_report([a, b])
