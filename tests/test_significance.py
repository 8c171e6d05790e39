"""The paired test over users (deepcf.stats.paired_test) and where the study shows it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from deepcf.errors import ConfigError
from deepcf.stats import paired_test
from deepcf.study import fits
from deepcf.study import render as rnd
from deepcf.study import selection as sel
from deepcf.study.protocols import rating_errors

A = [0.61, 0.40, 0.55, 0.72, 0.30, 0.48, 0.66, 0.52, 0.44, 0.59]
B = [0.50, 0.42, 0.41, 0.60, 0.31, 0.35, 0.58, 0.47, 0.45, 0.49]


def test_paired_test_is_scipys_on_fixed_numbers():
    w = paired_test(A, B)
    assert w["test"] == "wilcoxon" and w["n"] == 10
    assert w["p"] == pytest.approx(stats.wilcoxon(A, B).pvalue, rel=1e-12)
    assert w["mean_diff"] == pytest.approx(np.mean(np.subtract(A, B)))
    t = paired_test(A, B, "ttest")
    assert t["p"] == pytest.approx(stats.ttest_rel(A, B).pvalue, rel=1e-12)
    # by hand: t = mean(d) / (std(d, ddof 1) / sqrt(n)), two-sided
    d = np.subtract(A, B)
    tt = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    assert t["p"] == pytest.approx(2 * stats.t.sf(abs(tt), len(d) - 1), rel=1e-9)


def test_paired_test_edge_cases():
    assert paired_test(A, A)["p"] == 1.0  # no difference at all
    assert np.isnan(paired_test([0.5], [0.4])["p"])
    with pytest.raises(ConfigError):
        paired_test(A, B[:-1])
    with pytest.raises(ConfigError):
        paired_test(A, B, "sign")
    nan = paired_test([*A, np.nan], [*B, 0.1])  # a non-finite pair is left out
    assert nan["n"] == 10 and nan["p"] == pytest.approx(paired_test(A, B)["p"])


def test_rating_errors_per_user_squared_error_by_brute_force():
    rng = np.random.default_rng(0)
    train = sp.csr_matrix(rng.integers(0, 6, (12, 9)).astype(np.float32))
    dense = (rng.random((12, 9)) < 0.3) * rng.integers(1, 6, (12, 9))
    dense[3] = 0  # a user without test ratings is not a unit
    test = sp.csr_matrix(dense, dtype=np.float32)

    def pred(r, c):
        return 0.3 * r + 0.2 * c + 1.0

    out = rating_errors(pred, train, test, 1.0, 5.0, per_user=True)
    want = []
    for u in range(12):
        cols = test[u].indices
        if len(cols):
            p = np.clip(pred(np.full(len(cols), u), cols), 1, 5)
            want.append(np.mean((p - test[u].data) ** 2))
    np.testing.assert_allclose(out["per_user"]["se"], want, rtol=1e-12)
    assert "per_user" not in rating_errors(pred, train, test, 1.0, 5.0)


def _biased(train, val, params, task):
    """mu + b_u + b_i; `noise` > 0 adds a fixed perturbation (a worse model)."""
    from deepcf.stats import fit_biases
    from deepcf.study.baselines import predict_biases

    b = fit_biases(train)
    return fits._Fitted(lambda r, c: predict_biases(*b, r, c) + params.get("noise", 0.0)
                        * np.sin(np.asarray(r) * 7.0 + np.asarray(c)))


def test_the_study_reports_paired_tests_per_split(cache_dir):
    from deepcf.study import accuracy as acc

    data = acc.load_data("synthetic:tiny", str(cache_dir))
    rows = {"rating:good": sel.Row("good", "rating", _biased, kind="contender"),
            "rating:worse": sel.Row("worse", "rating", _biased, grid=[{"noise": 0.5}],
                                    kind="contender"),
            "topn:EASE": sel.ROWS["topn:EASE"] if "topn:EASE" in sel.ROWS else
            sel.Row("EASE", "topn", fits.ease, grid=[{"lam": 100.0}]),
            "topn:popularity": sel.Row("popularity", "topn", fits.popularity)}
    report = sel.build_report(data, [0, 1], rows=rows, log=lambda s: None)
    by = {(c["a"], c["b"]): c for c in report["significance"]}
    rating = by[("good", "worse")]
    assert rating["metric"] == "per-user squared error" and len(rating["splits"]) == 2
    res = {r.row.name: r for r in report["rating"]}
    for k, t in enumerate(rating["splits"]):
        a, b = res["good"].per_user[k]["se"], res["worse"].per_user[k]["se"]
        assert t["p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
        assert t["mean_diff"] < 0  # the noisy model's errors are larger
    assert ("popularity", "EASE") in by
    topn = {r.row.name: r for r in report["topn"]}
    assert len(topn["EASE"].per_user[0]["ndcg@10"]) == topn["EASE"].metrics[0]["n_users"]
    text = rnd.render({**report, "command": "test"})
    assert "## Differences beyond noise" in text
    line = next(x for x in text.splitlines() if x.startswith("| good | worse |"))
    assert f"p = {rnd._p(rating['splits'][0]['p'])}" in line
