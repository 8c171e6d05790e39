"""The accuracy protocols of `make accuracy`, the baselines and ACCURACY.md (deepcf.study)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from deepcf.data.matrix import RatingMatrix
from deepcf.errors import ConfigError
from deepcf.serving.evaluate import topn_metrics
from deepcf.stats import fit_biases
from deepcf.study import accuracy as acc
from deepcf.study import fits, glocal
from deepcf.study import render as rnd
from deepcf.study import selection as sel
from deepcf.study.baselines import BiasedMF, fit_mf, predict_biases
from deepcf.study.protocols import (
    bias_fallback,
    per_user_holdout,
    rating_errors,
    rating_split,
    topn_split,
)


def random_ratings(n_users=40, n_items=30, density=0.3, seed=0, few=()) -> sp.csr_matrix:
    """Random 1..5 ratings; the users in `few` get only 3 ratings."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    for u in few:
        mask[u] = False
        mask[u, rng.choice(n_items, 3, replace=False)] = True
    mask[np.flatnonzero(mask.sum(1) == 0), 0] = True
    vals = rng.integers(1, 6, (n_users, n_items)).astype(np.float32)
    return sp.csr_matrix(np.where(mask, vals, 0.0).astype(np.float32))


def entries(X: sp.spmatrix) -> set[tuple[int, int, float]]:
    C = X.tocoo()
    return set(zip(C.row.tolist(), C.col.tolist(), C.data.tolist()))


# -- top-N metrics against brute force --------------------------------------------------------

def brute_topn(scores: np.ndarray, train: np.ndarray, test: np.ndarray, ks) -> dict:
    """Straight from the metrics' definitions, one user at a time, in plain Python."""
    n_users, n_movies = train.shape
    candidate_movies = {j for j in range(n_movies) if train[:, j].any()}
    names = ("precision", "recall", "recall_capped", "ndcg", "map", "mrr", "hit")
    per = {f"{m}@{k}": [] for k in ks for m in names}
    shown = {k: [] for k in ks}
    for u in range(n_users):
        held = {j for j in range(n_movies) if test[u, j]}
        if not held:
            continue
        cands = [j for j in candidate_movies if not train[u, j]]
        ranked = sorted(cands, key=lambda j: -scores[u, j])
        for k in ks:
            top = ranked[:k]
            shown[k] += top
            hits = [j in held for j in top]
            per[f"precision@{k}"].append(sum(hits) / k)
            per[f"recall@{k}"].append(sum(hits) / len(held))
            per[f"recall_capped@{k}"].append(sum(hits) / min(k, len(held)))
            dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h)
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(held))))
            per[f"ndcg@{k}"].append(dcg / idcg)
            precisions = [sum(hits[: r + 1]) / (r + 1) for r, h in enumerate(hits) if h]
            per[f"map@{k}"].append(sum(precisions) / min(k, len(held)))
            per[f"mrr@{k}"].append(next((1 / (r + 1) for r, h in enumerate(hits) if h), 0.0))
            per[f"hit@{k}"].append(float(any(hits)))
    out = {name: float(np.mean(v)) for name, v in per.items()}
    users_with = [u for u in range(n_users) if train[u].any()]
    for k in ks:
        counts = np.bincount(shown[k], minlength=n_movies).astype(float)
        out[f"coverage@{k}"] = (counts > 0).sum() / n_movies
        mean_abs_diff = np.abs(counts[:, None] - counts[None, :]).sum()
        out[f"gini@{k}"] = mean_abs_diff / (2 * n_movies**2 * counts.mean())
        info = [-math.log2(max(train[:, j].sum(), 1) / len(users_with)) for j in shown[k]]
        out[f"novelty@{k}"] = sum(info) / len(info)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topn_metrics_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_users, n_movies = 25, 40
    inter = rng.random((n_users, n_movies)) < 0.35
    held = inter & (rng.random((n_users, n_movies)) < 0.3)
    held[0] = inter[0] = False
    inter[0, :30], held[0, 5:29] = True, True  # |held-out| 24 > every K
    held[1] = inter[1] & False
    inter[1, [3, 7, 9]], held[1, 7] = True, True  # |held-out| 1 < every K
    held[2] = False  # a user with nothing held out is not evaluated
    inter[:, 39] = False
    inter[4, 39] = held[4, 39] = True  # a movie only held out: never a candidate, still counted
    train, test = inter & ~held, held
    scores = rng.normal(size=(n_users, n_movies))
    ks = (3, 10, 20)
    got = topn_metrics(lambda users: scores[users], sp.csr_matrix(train.astype(np.float32)),
                       sp.csr_matrix(test.astype(np.float32)), ks, chunk=7)
    want = brute_topn(scores, train, test, ks)
    for name, value in want.items():
        assert got[name] == pytest.approx(value), name
    assert got["n_users"] == int((test.sum(1) > 0).sum())


def test_topn_metrics_never_rank_a_training_or_unknown_movie():
    X = random_ratings(seed=3)
    s = topn_split(X, 0)
    bad = np.zeros(X.shape[1], bool)
    bad[np.bincount(s.train.indices, minlength=X.shape[1]) == 0] = True
    # a model that prefers exactly the movies the protocol forbids still gets no credit for them
    dense_train = s.train.toarray() != 0

    def score(users):
        return np.where(dense_train[users] | bad, 100.0, 0.0) + 1e-3 * np.arange(X.shape[1])

    forbidden_first = topn_metrics(score, s.train, s.test)
    neutral = topn_metrics(lambda users: np.tile(1e-3 * np.arange(X.shape[1]), (len(users), 1)),
                           s.train, s.test)
    assert forbidden_first["ndcg@10"] == pytest.approx(neutral["ndcg@10"])


# -- the splits -------------------------------------------------------------------------------

def test_topn_split_properties():
    X = random_ratings(n_users=50, n_items=40, density=0.4, few=(3, 7))
    s = topn_split(X, 0)
    assert entries(s.train) | entries(s.test) == entries(X)
    assert not entries(s.train) & entries(s.test)
    n = np.diff(X.indptr)
    n_test = np.diff(s.test.indptr)
    for u in range(X.shape[0]):
        if n[u] < 5:
            assert n_test[u] == 0  # fewer than 5 ratings: whole in training, not evaluated
        else:
            assert n_test[u] == max(1, math.floor(0.2 * n[u] + 0.5))
    assert n_test[3] == n_test[7] == 0
    # the carve is the same rule applied to the training part
    assert entries(s.fit) | entries(s.val) == entries(s.train)
    assert not entries(s.fit) & entries(s.val)
    n_tr = np.diff(s.train.indptr)
    n_val = np.diff(s.val.indptr)
    assert all(n_val[u] == (max(1, math.floor(0.2 * n_tr[u] + 0.5)) if n_tr[u] >= 5 else 0)
               for u in range(X.shape[0]))
    again = topn_split(X, 0)
    assert entries(again.test) == entries(s.test) and entries(again.val) == entries(s.val)
    assert entries(topn_split(X, 1).test) != entries(s.test)


def test_per_user_holdout_is_random_within_users():
    X = sp.csr_matrix(np.ones((1, 100), np.float32))
    firsts = {tuple(per_user_holdout(X, seed)[1].indices[:3]) for seed in range(5)}
    assert len(firsts) == 5  # not the first movies of the row every time
    with pytest.raises(ConfigError):
        per_user_holdout(X, 0, fraction=1.0)


def test_rating_split_properties():
    X = random_ratings(n_users=60, n_items=50)
    s = rating_split(X, 0, (1.0, 5.0))
    assert entries(s.train) | entries(s.test) == entries(X)
    assert not entries(s.train) & entries(s.test)
    assert s.test.nnz == round(0.2 * X.nnz)
    assert entries(s.fit) | entries(s.val) == entries(s.train)
    assert not entries(s.fit) & entries(s.val)
    assert s.val.nnz == round(0.1 * s.train.nnz)
    again = rating_split(X, 0, (1.0, 5.0))
    assert entries(again.test) == entries(s.test) and entries(again.val) == entries(s.val)
    assert entries(rating_split(X, 2, (1.0, 5.0)).test) != entries(s.test)


def test_rating_errors_clip_and_declared_fallback():
    train = sp.csr_matrix(np.array([[4, 0, 2], [5, 0, 0], [0, 0, 0]], np.float32))
    test = sp.csr_matrix(np.array([[0, 3, 0], [0, 0, 1], [2, 0, 0]], np.float32))
    # (0,1): movie 1 unknown -> cold; (1,2): warm; (2,0): user 2 unknown -> cold
    mu, b_u, b_i = fit_biases(train)
    out = rating_errors(lambda r, c: np.full(len(r), 9.0), train, test, 1.0, 5.0)
    pred = np.array([mu + b_u[0], 5.0, mu + b_i[0]])  # cold: mu + the known bias; warm: clipped
    err = np.clip(pred, 1, 5) - np.array([3.0, 1.0, 2.0])
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
    assert out["mae"] == pytest.approx(np.mean(np.abs(err)))
    assert out["n_cold"] == 2 and out["n_ratings"] == 3
    assert bias_fallback(train)(np.array([2]), np.array([1]))[0] == pytest.approx(mu)
    plain = rating_errors(lambda r, c: np.full(len(r), 0.0), train, test, 1.0, 5.0,
                          fallback=False)
    assert plain["rmse"] == pytest.approx(np.sqrt(np.mean((1 - np.array([3, 1, 2])) ** 2)))
    assert plain["n_cold"] == 2
    broken = rating_errors(lambda r, c: np.full(len(r), np.nan), train, test, 1.0, 5.0)
    assert math.isnan(broken["rmse"]) and broken["n_nonfinite"] == 1  # the warm one


# -- the baselines against direct computations ------------------------------------------------

def test_ease_matches_per_column_ridge_regression():
    from deepcf.models.edlae import edlae_weights
    from deepcf.stats import binary_gram

    rng = np.random.default_rng(0)
    X = (rng.random((30, 12)) < 0.4).astype(np.float64)
    lam = 3.0
    B = edlae_weights(binary_gram(sp.csr_matrix(X * 4.0)), 0.0, lam)  # ratings are binarised
    for j in range(X.shape[1]):
        others = [i for i in range(X.shape[1]) if i != j]
        A = X[:, others]
        b = np.linalg.solve(A.T @ A + lam * np.eye(len(others)), A.T @ X[:, j])
        assert B[j, j] == 0.0
        np.testing.assert_allclose(B[others, j], b, atol=1e-10)


def test_fit_biases_reaches_regularised_least_squares():
    X = random_ratings(n_users=20, n_items=15, density=0.5, seed=1).tocoo()
    reg_u, reg_i = 3.0, 2.0
    mu = X.data.mean()
    n_u, n_i = X.shape
    A = np.zeros((X.nnz, n_u + n_i))
    A[np.arange(X.nnz), X.row] = 1.0
    A[np.arange(X.nnz), n_u + X.col] = 1.0
    penalty = np.diag(np.r_[np.full(n_u, reg_u), np.full(n_i, reg_i)])
    sol = np.linalg.solve(A.T @ A + penalty, A.T @ (X.data - mu))
    got_mu, b_u, b_i = fit_biases(X.tocsr(), reg_u, reg_i, sweeps=300)
    assert got_mu == pytest.approx(mu)
    np.testing.assert_allclose(np.r_[b_u, b_i], sol, atol=1e-6)


def low_rank(n_users=80, n_items=60, rank=3, seed=0):
    rng = np.random.default_rng(seed)
    R = (3.5 + rng.normal(0, 0.4, (n_users, 1)) + rng.normal(0, 0.4, (1, n_items))
         + rng.normal(0, 0.6, (n_users, rank)) @ rng.normal(0, 0.6, (rank, n_items))
         + rng.normal(0, 0.1, (n_users, n_items)))
    mask = rng.random((n_users, n_items)) < 0.5
    return sp.csr_matrix(np.where(mask, np.clip(R, 1, 5), 0).astype(np.float32))


def mf_objective(m: BiasedMF, X: sp.csr_matrix, reg: float, reg_bias: float) -> float:
    C = X.tocoo()
    err = C.data - m.predict(C.row, C.col)
    return float((err**2).sum() + reg * ((m.P**2).sum() + (m.Q**2).sum())
                 + reg_bias * ((m.b_u**2).sum() + (m.b_i**2).sum()))


def test_mf_als_descends_and_beats_the_bias_baseline_on_low_rank_data():
    X = low_rank()
    s = rating_split(X, 0, (1.0, 5.0))
    objectives = [mf_objective(fit_mf(s.train, 3, 1.0, 1.0, sweeps=n), s.train, 1.0, 1.0)
                  for n in (1, 2, 5, 10)]
    assert all(b <= a + 1e-6 for a, b in zip(objectives, objectives[1:]))  # exact block steps
    mf = fit_mf(s.train, 3, 1.0, 1.0, sweeps=20)
    bias = fit_biases(s.train)
    mf_err = rating_errors(mf.predict, s.train, s.test, 1.0, 5.0)["rmse"]
    bias_err = rating_errors(lambda r, c: predict_biases(*bias, r, c), s.train, s.test, 1.0,
                             5.0)["rmse"]
    assert mf_err < 0.8 * bias_err
    np.testing.assert_allclose(mf.scores(np.array([0, 5]))[:, [2, 7]],
                               mf.predict(np.array([0, 0, 5, 5]), np.array([2, 7, 2, 7]))
                               .reshape(2, 2))
    again = fit_mf(s.train, 3, 1.0, 1.0, sweeps=20)
    np.testing.assert_array_equal(again.P, mf.P)  # seeded


# -- the runner and ACCURACY.md ---------------------------------------------------------------

def _contender(train, val, params, task):
    b = fit_biases(train, params["reg"], params["reg"])
    pred = fits._Fitted(lambda r, c: predict_biases(*b, r, c), {"epochs": 7})
    return pred


def test_run_row_selects_on_the_carve_and_refits_on_the_training_part():
    X = random_ratings(n_users=60, n_items=40, density=0.4)
    s = rating_split(X, 0, (1.0, 5.0))
    seen = []

    def fit(train, val, params, task):
        seen.append((train.nnz, None if val is None else val.nnz, params["reg"]))
        return _contender(train, val, params, task)

    row = sel.Row("c", "rating", fit, grid=[{"reg": 1.0}, {"reg": 50.0}], kind="contender")
    metrics, chosen, info, val = sel.run_row(row, s, sel.Task(1.0, 5.0, 0))
    assert seen[:2] == [(s.fit.nnz, s.val.nnz, 1.0), (s.fit.nnz, s.val.nnz, 50.0)]
    assert seen[2] == (s.train.nnz, None, chosen["reg"])  # refit on all of the 80%
    vals = {}
    for reg in (1.0, 50.0):
        b = fit_biases(s.fit, reg, reg)
        vals[reg] = rating_errors(lambda r, c, b=b: predict_biases(*b, r, c), s.fit, s.val,
                                  1.0, 5.0)["rmse"]
    assert chosen["reg"] == min(vals, key=vals.get) and val == pytest.approx(min(vals.values()))
    assert info == {"epochs": 7} and metrics["n_ratings"] == s.test.nnz


def test_blend_fits_least_squares_weights_on_the_carve_and_keeps_them_in_the_refit():
    X = random_ratings(n_users=60, n_items=40, density=0.4)
    s = rating_split(X, 0, (1.0, 5.0))
    seen = []

    def member(train, val, params, task):
        seen.append((train.nnz, params))
        return _contender(train, val, params, task)

    fit = fits.blend({"a": (member, {"reg": 1.0}), "b": (member, {"reg": 50.0})})
    task = sel.Task(1.0, 5.0, 0)
    carve = fit(s.fit, s.val, {}, task)
    # brute force: the clipped member predictions on the carve, least squares with an intercept
    V = s.val.tocoo()
    cols = [np.ones(V.nnz)]
    for reg in (1.0, 50.0):
        b = fit_biases(s.fit, reg, reg)
        cols.append(np.clip(predict_biases(*b, V.row, V.col), 1.0, 5.0))
    w = np.linalg.lstsq(np.column_stack(cols), V.data, rcond=None)[0]
    info = carve.info
    np.testing.assert_allclose([info["w0"], info["w_a"], info["w_b"]], w, atol=1e-10)
    assert info["a:epochs"] == 7 and info["b:epochs"] == 7
    refit = fit(s.train, None, dict(info), task)
    assert seen[-2:] == [(s.train.nnz, {"reg": 1.0, "epochs": 7}),
                         (s.train.nnz, {"reg": 50.0, "epochs": 7})]
    assert refit.info["w_b"] == info["w_b"]
    r, c = np.array([0, 3]), np.array([1, 2])
    feats = [np.ones(2)] + [np.clip(predict_biases(*fit_biases(s.train, g, g), r, c), 1.0, 5.0)
                            for g in (1.0, 50.0)]
    np.testing.assert_allclose(refit(r, c), np.column_stack(feats) @ w, atol=1e-10)


def test_the_carve_score_is_shown_whenever_the_row_fitted_on_the_carve():
    res = sel.RowResult(sel.Row("c", "rating", _contender, grid=[{"reg": 1.0}],
                                select_epochs=True), val=[0.9, 0.91])
    assert rnd._val(res) == sel.ms([0.9, 0.91])
    res.row = sel.Row("c", "rating", _contender, grid=[{"reg": 1.0}])
    assert rnd._val(res) == "–"


def test_register_refuses_a_second_row_of_the_same_name():
    with pytest.raises(ConfigError):
        sel.register(sel.Row("EASE", "topn", lambda *a: None))
    with pytest.raises(ConfigError):
        sel.Row("x", "ranking", lambda *a: None)


@pytest.fixture(scope="module", autouse=True)
def small_contenders():
    """The autoencoder contenders with a small net and few epochs (the same code, faster)."""
    fits.CONTENDER_EXTRA[:] = ["model.net.hidden=[16]", "trainer.max_epochs=4",
                              "callbacks.early_stopping.patience=2"]
    budget = glocal.FT_MAX_EPOCHS, glocal.FT_PATIENCE
    glocal.FT_MAX_EPOCHS, glocal.FT_PATIENCE = 4, 2
    yield
    fits.CONTENDER_EXTRA.clear()
    glocal.FT_MAX_EPOCHS, glocal.FT_PATIENCE = budget


def light_rows() -> dict:
    """The registry with the MF rows at a small grid and few sweeps (the same code, faster)."""
    rows = dict(sel.ROWS)
    small = [{"rank": 4, "reg": r, "reg_bias": 5.0, "sweeps": 3} for r in (5.0, 15.0)]
    for key, row in rows.items():
        if row.fit in (fits.mf, fits.mf_rank):
            rows[key] = sel.Row(row.name, row.protocol, row.fit, grid=small, note=row.note)
    return rows


@pytest.fixture(scope="module")
def tiny_report(cache_dir):
    data = acc.load_data("synthetic:tiny", str(cache_dir))
    rows = light_rows()
    rows["rating:my contender"] = sel.Row("my contender", "rating", _contender,
                                          grid=[{"reg": 2.0}, {"reg": 20.0}], kind="contender")
    rows["rating:my blend"] = sel.Row("my blend", "rating", _contender, grid=[{"reg": 0.1}],
                                      kind="ensemble")
    report = sel.build_report(data, [0, 1], side_data=data, side_seeds=[0], rows=rows,
                              command="test", log=lambda s: None)
    return report, rnd.render(report)


def test_accuracy_md_has_every_row_anchor_and_target(tiny_report):
    report, text = tiny_report
    for row in report["rows"]:
        assert row.name in text
    for anchor in rnd.ANCHORS:
        assert f"| {anchor[0]} |" in text
    assert "**my contender** (contender)" in text and "epochs=7" in text
    assert text.count("| best single rating model: RMSE <= 0.878") == 1
    assert "a single ranking model above EASE by more than its std" in text
    assert "stretch: a single ranking model with NDCG@10 >= 0.46" in text
    assert "## Untuned defaults on Synthetic(scale='tiny', mode='popularity')" in text
    assert "split seeds 0, 1." in text
    rating = {r.row.name: r for r in report["rating"]}
    assert len(rating["user+item bias"].metrics) == 2
    # the autoencoder contenders and the blend trained, chose their epochs, and were refitted
    for name in ("I-AutoRec (published: L2 on weights, full-batch Rprop)",
                 "I-AutoRec + residual target", "I-AutoRec + bias residual",
                 "U-AutoRec + bias residual", "U-AutoRec + dense re-feeding",
                 "I-AutoRec with GLocal-K's local kernel",
                 "GLocal-K: local kernel + global-kernel fine-tuning",
                 "blend: I-AutoRec + residual target, kernelised I-AutoRec, biased MF"):
        assert rating[name].error is None, rating[name].error
        assert all((0 if k == "ft_epochs" else 1) <= i[k] <= 4 for i in rating[name].info
                   for k in i if k.endswith("epochs")), rating[name].info
        assert all(np.isfinite(m["rmse"]) for m in rating[name].metrics)
    # the rating target is the best single model: ensembles never count
    best = report["targets"][0]["best"]
    singles = {n: np.mean([m["rmse"] for m in r.metrics]) for n, r in rating.items()
               if r.row.kind != "ensemble"}
    assert best == min(singles, key=singles.get)
    for r in report["topn"]:
        for m in r.metrics:
            assert 0 <= m["ndcg@10"] <= 1 and 0 < m["coverage@10"] <= 1


@pytest.mark.slow  # the whole command on the tiny set (about 45 s)
def test_accuracy_command_writes_the_file(tmp_path, cache_dir, monkeypatch):
    out = tmp_path / "ACCURACY.md"
    monkeypatch.setattr(sel, "ROWS", light_rows())
    acc.main(["--quick", "--data", "synthetic:tiny", "--side-data", "none", "--out", str(out),
              "--cache-dir", str(cache_dir)])
    text = out.read_text()
    assert "`python -m deepcf.study.accuracy --quick --data synthetic:tiny --side-data none`" \
        in text
    assert "## Targets" in text and "Untuned defaults" not in text
    with pytest.raises(SystemExit) as e:
        acc.main(["--data", "ml1m", "--out", str(out), "--cache-dir", str(cache_dir)])
    assert e.value.code == 2


def test_a_row_that_fails_or_diverges_is_reported_not_fatal(cache_dir):
    from deepcf.errors import DataError

    def broken(train, val, params, task):
        raise DataError("this row needs item features")

    def nan_for_large(train, val, params, task):
        b = fit_biases(train)
        bad = params["reg"] > 1
        return fits._Fitted(lambda r, c: np.full(len(r), np.nan) if bad
                           else predict_biases(*b, r, c))

    data = acc.load_data("synthetic:tiny", str(cache_dir))
    rows = {"rating:broken": sel.Row("broken", "rating", broken, kind="contender"),
            "rating:unstable": sel.Row("unstable", "rating", nan_for_large,
                                       grid=[{"reg": 5.0}, {"reg": 0.5}], kind="contender"),
            "topn:popularity": sel.ROWS["topn:popularity"]}
    report = sel.build_report(data, [0], rows=rows, log=lambda s: None)
    text = rnd.render(report)
    assert "| **broken** (contender) | failed: this row needs item features |" in text
    unstable = next(r for r in report["rating"] if r.row.name == "unstable")
    assert unstable.params == [{"reg": 0.5}]  # the diverged setting is never chosen
    assert report["targets"][0]["best"] == "unstable"


def test_itemknn_matches_brute_force():
    from deepcf.study.baselines import fit_itemknn

    rng = np.random.default_rng(4)
    X = (rng.random((30, 10)) < 0.4).astype(np.float64)
    S = fit_itemknn(sp.csr_matrix(X * 3.0), k=3)
    for j in range(10):
        cos = {i: X[:, i] @ X[:, j] / max(np.linalg.norm(X[:, i]) * np.linalg.norm(X[:, j]),
                                          1e-300) for i in range(10) if i != j}
        keep = sorted(cos, key=cos.get, reverse=True)[:3]
        for i in range(10):
            want = cos[i] if i in keep else 0.0
            assert S[i, j] == pytest.approx(want, abs=1e-12) or (
                i != j and cos[i] == cos[keep[-1]])  # a tie at the k-th neighbour: either


def test_popularity_correction_divides_scores_by_popularity():
    X = random_ratings(seed=5)
    ease = fits.popularity_corrected(fits.ease)
    got = ease(X, None, {"lam": 10.0, "pop_beta": 0.3}, sel.Task(1, 5, 0))(np.arange(5))
    plain = fits.ease(X, None, {"lam": 10.0}, sel.Task(1, 5, 0))(np.arange(5))
    pop = np.maximum(np.bincount(X.indices, minlength=X.shape[1]), 1)
    np.testing.assert_allclose(got, plain / pop**0.3)


def test_min_coverage_selects_the_best_ndcg_among_covering_settings():
    """Setting 'narrow' ranks better on the carve but recommends few movies; with
    min_coverage it is not eligible; with none eligible the best NDCG is kept."""
    X = random_ratings(n_users=60, n_items=40, density=0.3, seed=6)
    s = topn_split(X, 0)

    def fit(train, val, params, task):
        pop = np.bincount(train.indices, minlength=train.shape[1]).astype(float)
        noise = np.random.default_rng(0).random((train.shape[0], train.shape[1]))
        return fits._Fitted(lambda users: pop + (0.0 if params["narrow"] else 100.0)
                           * noise[users])

    vals = {n: topn_metrics(fit(s.fit, None, {"narrow": n}, None), s.fit, s.val)
            for n in (True, False)}
    assert vals[True]["coverage@10"] < vals[False]["coverage@10"]
    assert vals[True]["ndcg@10"] > vals[False]["ndcg@10"]
    grid = [{"narrow": True}, {"narrow": False}]
    for floor, want in ((None, True), (vals[False]["coverage@10"], False), (2.0, True)):
        row = sel.Row("r", "topn", fit, grid=grid, min_coverage=floor)
        _, chosen, _, _ = sel.run_row(row, s, sel.Task(1.0, 5.0, 0))
        assert chosen["narrow"] is want, floor


def test_the_coverage_target_is_the_ease_rows_carve_coverage_on_each_split():
    """min_coverage=COVERAGE_TARGET: on each split, only settings whose carve coverage@10 reaches
    the carve coverage@10 of the EASE row's choice there are eligible; without an EASE row before
    it the row fails with a message naming what it needs."""
    X = random_ratings(n_users=60, n_items=40, density=0.3, seed=6)

    def fit(train, val, params, task):
        pop = np.bincount(train.indices, minlength=train.shape[1]).astype(float)
        noise = np.random.default_rng(0).random((train.shape[0], train.shape[1]))
        return fits._Fitted(lambda users: pop + params["noise"] * noise[users])

    ease = sel.Row(sel.EASE_ROW, "topn", fits.ease, grid=[{"lam": 1.0}, {"lam": 30.0}])
    grid = [{"noise": v} for v in (0.0, 0.3, 3.0, 100.0)]
    row = sel.Row("r", "topn", fit, grid=grid, min_coverage=sel.COVERAGE_TARGET)
    data = RatingMatrix(X, np.arange(X.shape[0]), np.arange(X.shape[1]))
    res_ease, res = sel.run_protocol("topn", data, [0, 1], [ease, row], log=lambda _: None)
    assert res.error is None and res_ease.error is None
    excluded = 0
    for seed, floor, chosen in zip((0, 1), res_ease.val_coverage, res.params):
        s = topn_split(X, seed)
        carve = [topn_metrics(fit(s.fit, s.val, p, None), s.fit, s.val) for p in grid]
        want = max(zip(grid, carve), key=lambda pm: (pm[1]["coverage@10"] >= floor,
                                                    pm[1]["ndcg@10"]))[0]
        best = max(zip(grid, carve), key=lambda pm: pm[1]["ndcg@10"])[0]
        assert 0.0 < floor <= 1.0 and chosen == want, (seed, floor, chosen)
        excluded += want != best
    assert excluded  # the floor changed a choice
    alone, = sel.run_protocol("topn", data, [0], [row], log=lambda _: None)
    assert "needs the EASE row" in alone.error
