"""EDLAE / DLAE (deepcf.models.edlae): the closed form against brute force, the net's forward,
ONNX parity, and the whole train -> checkpoint -> ONNX -> evaluate -> recommend path."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from deepcf.errors import ConfigError
from deepcf.models.contract import net_from_checkpoint
from deepcf.models.edlae import EDLAE, edlae_weights
from deepcf.stats import binary_gram, popularity_weights


def tiny_binary(seed=0, n_users=40, n_movies=6, density=0.45) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = (rng.random((n_users, n_movies)) < density).astype(np.float64)
    X[0] = 1.0  # every movie has an interaction
    return X


@pytest.mark.parametrize("p,lam", [(0.0, 2.0), (0.25, 0.5), (0.5, 3.0)])
def test_dlae_is_the_minimiser_of_the_expected_dropout_loss(p, lam):
    """Brute force: every dropout mask of every row enumerated with its probability; the
    expected loss E ||x - (m * x / (1 - p)) B||^2 + lam ||B||^2 is a least-squares problem in
    B over the stacked (weighted) masked rows; its solution is DLAE's closed form."""
    X = tiny_binary(1, n_users=12, n_movies=4)
    n = X.shape[1]
    inputs, targets, weights = [], [], []
    for x in X:
        for mask in itertools.product((0, 1), repeat=n):
            m = np.array(mask, np.float64)
            prob = np.prod(np.where(m == 1, 1 - p, p)) if p > 0 else float(m.all())
            if prob == 0:
                continue
            inputs.append(m * x / (1 - p))
            targets.append(x)
            weights.append(math.sqrt(prob))
    w = np.array(weights)[:, None]
    A = np.vstack([np.array(inputs) * w, math.sqrt(lam) * np.eye(n)])
    Y = np.vstack([np.array(targets) * w, np.zeros((n, n))])
    brute = np.linalg.lstsq(A, Y, rcond=None)[0]
    got = edlae_weights(binary_gram(sp.csr_matrix(X * 3.0)), p, lam, emphasis=False)
    np.testing.assert_allclose(got, brute, atol=1e-9)


@pytest.mark.parametrize("p,lam", [(0.0, 3.0), (0.33, 1.0), (0.7, 0.0)])
def test_edlae_is_the_zero_diagonal_regression_with_dropout_penalty(p, lam):
    """Brute force: column j regressed on the other columns with the penalty
    Lambda = p/(1-p) diag(G) + lam (the zero-diagonal solution, one solve per column)."""
    X = tiny_binary(2, n_users=30, n_movies=7)
    G = X.T @ X
    reg = p / (1 - p) * np.diag(G) + lam
    B = edlae_weights(binary_gram(sp.csr_matrix(X * 5.0)), p, lam, emphasis=True)
    for j in range(X.shape[1]):
        o = [i for i in range(X.shape[1]) if i != j]
        b = np.linalg.solve(G[np.ix_(o, o)] + np.diag(reg[o]), G[o, j])
        assert B[j, j] == 0.0
        np.testing.assert_allclose(B[o, j], b, atol=1e-9)


def test_the_ease_row_is_edlae_at_p_zero():
    """The study's EASE row scores with deepcf's EDLAE net at dropout 0 (one piece of math)."""
    from deepcf.study.fits import ease
    from deepcf.study.selection import Task

    X = sp.csr_matrix(tiny_binary(3, n_users=50, n_movies=9) * 4.0)
    B = edlae_weights(binary_gram(X), 0.0, 7.0)
    got = ease(X, None, {"lam": 7.0}, Task(1.0, 5.0, 0))(np.arange(50))
    np.testing.assert_allclose(got, (X.toarray() != 0) @ B, atol=1e-5)


def test_bad_settings_are_one_line():
    G = np.eye(3)
    with pytest.raises(ConfigError, match="model.net.dropout=1.0"):
        edlae_weights(G, 1.0, 1.0)
    with pytest.raises(ConfigError, match="model.net.lam=-1"):
        EDLAE.build(3, lam=-1.0)
    with pytest.raises(ConfigError, match="model.net.pop_beta"):
        EDLAE.build(3, pop_beta=-0.5)
    with pytest.raises(ConfigError, match="use lam > 0"):  # a movie no one interacted with
        edlae_weights(np.diag([1.0, 0.0, 2.0]), 0.5, 0.0)


def test_net_binarises_and_applies_the_popularity_correction():
    X = sp.csr_matrix(tiny_binary(4, n_users=30, n_movies=8) * np.arange(1, 9))
    net = EDLAE.build(8, dropout=0.4, lam=2.0, pop_beta=0.3)
    net.fit_closed_form(X)
    G = binary_gram(X)
    B = edlae_weights(G, 0.4, 2.0)
    s = popularity_weights(np.diag(G), 0.3)
    np.testing.assert_allclose(s, np.maximum(np.asarray((X != 0).sum(0)).ravel(), 1) ** -0.3)
    x = torch.tensor([[0, 4, 0, 1, 5, 0, 0, 2], [3, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    want = ((x.numpy() != 0) @ B) * s
    np.testing.assert_allclose(net(x).numpy(), want, atol=1e-5)
    # rebuilt from its checkpoint's spec and state (buffers), no refit
    state = {"hyper_parameters": {"net": net.spec()},
             "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}
    torch.testing.assert_close(net_from_checkpoint(state)(x), net(x))


def test_onnx_parity(tmp_path):
    from deepcf.serving.export import export_onnx, parity

    X = sp.csr_matrix(tiny_binary(5, n_users=60, n_movies=20, density=0.3) * 4.0)
    net = EDLAE.build(20, dropout=0.5, lam=1.0, pop_beta=0.2)
    net.fit_closed_form(X)
    rows = X.toarray().astype(np.float32)
    path = export_onnx(net, tmp_path / "edlae.onnx", torch.from_numpy(rows[:4]))
    assert parity(path, net, rows) <= 1e-5


def test_trains_exports_evaluates_and_recommends(make_cfg, tmp_path):
    """Closed form through deepcf.train: one pass with no optimizer, the checkpoint holds
    the fitted weights, the ONNX model is exported, evaluate --protocol topn and recommend
    serve it."""
    from deepcf.serving.evaluate import evaluate_run
    from deepcf.serving.recommend import load_ratings, recommend
    from deepcf.serving.runs import load_net
    from deepcf.training.train import train

    run = tmp_path / "run"
    cfg = make_cfg("experiment=edlae", "data=synthetic", "model.net.pop_beta=0.2",
                   "model.net.lam=100", "model.net.dropout=0.5", "logger=none", output_dir=run)
    m = train(cfg)
    assert m["onnx"] and m["epochs"] == 1 and m["scores"] == "ranking"
    assert m["monitor"] == "val/ndcg@10" and "val/rmse" not in m and "test/rmse" not in m
    net = load_net(Path(m["best_checkpoint"]))
    assert isinstance(net, EDLAE) and net.weight.abs().sum() > 0  # the fitted weights
    np.testing.assert_array_equal(torch.diagonal(net.weight).numpy(), 0.0)
    r = evaluate_run(run, ks=(10,), protocol="topn")
    assert r["protocol"] == "topn" and r["topn"]["n_users"] > 0
    assert 0.0 < r["topn"]["ndcg@10"] <= 1.0
    scorer, card, data = load_ratings(run)
    recs = list(recommend(scorer, card, data, data.user_ids[:3], n=5))
    assert len(recs) == 15 and {x["basis"] for x in recs} == {"model"}
    # a ranking model: the sidecar says so, and no predicted rating is made up from its scores
    assert card.score_kind == "EDLAE score" and not card.rates
    assert {x["predicted_rating"] for x in recs} == {""}
    assert all(isinstance(x["score"], float) for x in recs)
    # --pop-beta: the top 5 of score / popularity^0.5 among the unseen movies, brute force
    from deepcf.serving.scoring import densify

    row = data.rows_of(data.user_ids[:1])
    raw = scorer(densify(data.X, row))[0].astype(np.float64)
    corrected = raw / np.maximum(card.item_train_count, 1) ** 0.5
    corrected[data.X[row].indices] = -np.inf
    recs = list(recommend(scorer, card, data, data.user_ids[:1], n=5, pop_beta=0.5))
    assert [card.item_ids.tolist().index(x["movie_id"]) for x in recs] == \
        np.argsort(-corrected, kind="stable")[:5].tolist()


def test_the_shipped_row_measures_the_experiment_as_configured():
    from deepcf.study.fits import shipped_model
    from deepcf.training.config import compose

    net = compose(["experiment=edlae"]).model.net
    shipped = shipped_model("edlae")
    assert {k: shipped[k] for k in ("dropout", "lam", "pop_beta", "coverage_floor")} == {
        "dropout": net.dropout, "lam": net.lam, "pop_beta": net.pop_beta,
        "coverage_floor": net.coverage_floor}
    assert (net.lam, net.dropout, net.pop_beta) == ("auto", "auto", "auto")


# -- options chosen on the validation carve ---------------------------------------------------

def carve_data(seed=0, n_users=120, n_movies=15):
    from deepcf.study.protocols import per_user_holdout

    rng = np.random.default_rng(seed)
    # a few popular movies and a long tail: lam, dropout and pop_beta then matter
    p = 0.6 / (1 + np.arange(n_movies)) ** 0.7
    X = (rng.random((n_users, n_movies)) < p).astype(np.float64) * 4.0
    X[0] = 4.0
    return per_user_holdout(sp.csr_matrix(X), seed, 0.3, 3)


GRIDS = {"lam_grid": [0.1, 1.0, 5.0], "dropout_grid": [0.0, 0.5], "pop_beta_grid": [0.0, 0.5, 1.0]}


@pytest.mark.parametrize("floor", [0.0, 0.9])
def test_auto_options_are_the_carve_best_by_brute_force(floor):
    """lam=auto, dropout=auto, pop_beta=auto: the chosen values are those a plain loop over the
    grid picks (stage 1: best carve NDCG@10 of every (lam, dropout) with lam a multiple of mean
    diag(G); stage 2: pop_beta at that B, best NDCG@10 among coverage@10 >= floor, else the
    best coverage), and the net ends fitted at them."""
    from deepcf.serving.evaluate import topn_metrics
    from deepcf.training.objectives.closed_form import select_options

    train, val = carve_data()
    G = binary_gram(train)
    scale = np.diag(G).mean()

    def carve(dropout, lam, beta):
        net = EDLAE.build(train.shape[1], dropout=dropout, lam=lam * scale, pop_beta=beta)
        net.fit_closed_form(train)
        m = topn_metrics(lambda u: net(torch.from_numpy(train[u].toarray()).float()).numpy(),
                         train, val, (10,))
        return m["ndcg@10"], m["coverage@10"]

    first = {(lam, p): carve(p, lam, 0.0)[0] for lam in GRIDS["lam_grid"]
             for p in GRIDS["dropout_grid"]}
    lam, p = max(first, key=first.get)
    second = {b: carve(p, lam, b) for b in GRIDS["pop_beta_grid"]}
    ok = {b: v for b, v in second.items() if v[1] >= floor}
    beta = (max(ok, key=lambda b: ok[b][0]) if ok
            else max(second, key=lambda b: second[b][1]))

    net = EDLAE.build(train.shape[1], lam="auto", dropout="auto", pop_beta="auto",
                      coverage_floor=floor, **GRIDS)
    from deepcf.models.sparse_ops import Pattern

    rows = Pattern.from_offsets(torch.from_numpy(train.indptr[:-1].astype("int64")),
                                torch.from_numpy(train.indices.astype("int64")), net.width)
    stats = net.closed_form_stats(rows, torch.from_numpy(train.data))
    chosen, tried = select_options(net, stats, train, val)
    assert chosen == {"lam": lam, "dropout": p, "pop_beta": beta}
    assert len(tried) == 6 + 3
    net.solve(stats)
    want = EDLAE.build(train.shape[1], dropout=p, lam=lam * scale, pop_beta=beta)
    want.fit_closed_form(train)
    torch.testing.assert_close(net.weight, want.weight)
    torch.testing.assert_close(net.col_scale, want.col_scale)
    # the spec holds the chosen numbers: a re-fit on other rows solves at them, lam relative
    spec = net.spec()["config"]
    assert (spec["lam"], spec["lam_unit"], spec["dropout"], spec["pop_beta"]) == (
        lam, "mean_diag", p, beta)
    from deepcf.models.contract import build_net

    more = sp.vstack([train, train[:40]]).tocsr()
    refit = build_net(net.spec())
    refit.fit_closed_form(more)
    want = EDLAE.build(train.shape[1], dropout=p, lam=lam * np.diag(binary_gram(more)).mean(),
                       pop_beta=beta)
    want.fit_closed_form(more)
    torch.testing.assert_close(refit.weight, want.weight)


def test_auto_needs_the_carve():
    train, _ = carve_data()
    net = EDLAE.build(train.shape[1], lam="auto")
    with pytest.raises(ConfigError, match="auto"):
        net.fit_closed_form(train)
    for bad in ({"lam": "big"}, {"dropout": 1.0}, {"pop_beta": -1}, {"lam_unit": "x"},
                {"dropout_grid": []}, {"coverage_floor": 2.0}):
        with pytest.raises(ConfigError, match="model.net."):
            EDLAE.build(train.shape[1], **bad)


def test_train_chooses_on_the_run_carve_and_keeps_it(make_cfg, tmp_path):
    """experiment=edlae (auto): the choice is logged, the checkpoint's net spec holds it, and
    the checkpoint's weights are the closed form at it on the run's training rows."""
    from deepcf.serving.runs import load_net
    from deepcf.training.train import train

    grids = [f"model.net.{k}=[{','.join(map(str, v))}]" for k, v in GRIDS.items()]
    m = train(make_cfg("experiment=edlae", "data=synthetic", "logger=none", *grids,
                       output_dir=tmp_path / "run"))
    assert {"select/lam", "select/dropout", "select/pop_beta"} <= set(m)
    state = torch.load(m["best_checkpoint"], weights_only=True)
    spec = state["hyper_parameters"]["net"]["config"]
    assert spec["lam"] == m["select/lam"] and spec["lam_unit"] == "mean_diag"
    assert spec["dropout"] == m["select/dropout"] and spec["pop_beta"] == m["select/pop_beta"]
    net = load_net(Path(m["best_checkpoint"]))
    assert net.config.lam in GRIDS["lam_grid"] and net.weight.abs().sum() > 0


@pytest.mark.parametrize("override,key", [("model.l2=1.0", "model.l2=1.0"),
                                          ("noise=dropout", "noise.kind=dropout")])
def test_options_a_closed_form_net_ignores_are_refused(make_cfg, override, key):
    from deepcf.training.train import train

    with pytest.raises(ConfigError, match=key):
        train(make_cfg("experiment=edlae", "data=synthetic", "logger=none", override))


def test_emphasis_auto_and_the_ease_floor_are_the_carve_choice_by_brute_force():
    """emphasis=auto adds EDLAE/DLAE to stage 1's grid; coverage_floor=ease makes stage 2's
    floor the carve coverage@10 of stage 1's best EASE setting (dropout 0, zero diagonal)."""
    from deepcf.models.sparse_ops import Pattern
    from deepcf.serving.evaluate import topn_metrics
    from deepcf.training.objectives.closed_form import select_options

    train, val = carve_data(1)
    scale = np.diag(binary_gram(train)).mean()

    def carve(dropout, lam, emphasis, beta):
        net = EDLAE.build(train.shape[1], dropout=dropout, lam=lam * scale, pop_beta=beta,
                          emphasis=emphasis)
        net.fit_closed_form(train)
        m = topn_metrics(lambda u: net(torch.from_numpy(train[u].toarray()).float()).numpy(),
                         train, val, (10,))
        return m["ndcg@10"], m["coverage@10"]

    first = {(lam, p, e): carve(p, lam, e, 0.0) for lam in GRIDS["lam_grid"]
             for p in GRIDS["dropout_grid"] for e in (True, False)}
    lam, p, e = max(first, key=lambda k: first[k][0])
    floor = max(v for k, v in first.items() if k[1] == 0.0 and k[2])[1]
    second = {b: carve(p, lam, e, b) for b in GRIDS["pop_beta_grid"]}
    ok = {b: v for b, v in second.items() if v[1] >= floor}
    beta = (max(ok, key=lambda b: ok[b][0]) if ok
            else max(second, key=lambda b: second[b][1]))

    net = EDLAE.build(train.shape[1], lam="auto", dropout="auto", emphasis="auto",
                      pop_beta="auto", coverage_floor="ease", **GRIDS)
    rows = Pattern.from_offsets(torch.from_numpy(train.indptr[:-1].astype("int64")),
                                torch.from_numpy(train.indices.astype("int64")), net.width)
    stats = net.closed_form_stats(rows, torch.from_numpy(train.data))
    chosen, tried = select_options(net, stats, train, val)
    assert chosen == {"lam": lam, "dropout": p, "emphasis": e, "pop_beta": beta}
    assert len(tried) == 12 + 3
    assert net.spec()["config"]["emphasis"] is e
    # without an EASE setting in stage 1 the floor cannot be read: one line
    net = EDLAE.build(train.shape[1], lam="auto", dropout=0.5, pop_beta="auto",
                      coverage_floor="ease", **GRIDS)
    with pytest.raises(ConfigError, match="coverage_floor=ease"):
        select_options(net, stats, train, val)
    for bad in ({"emphasis": "maybe"}, {"coverage_floor": "popularity"}):
        with pytest.raises(ConfigError, match="model.net."):
            EDLAE.build(train.shape[1], **bad)


# -- a pruned catalogue (model.net.max_items) -------------------------------------------------

def _popular(X: sp.csr_matrix, k: int) -> np.ndarray:
    """Brute force: the k columns with the most entries, ties to the lower index, ascending."""
    counts = np.asarray((X != 0).sum(0)).ravel()
    order = sorted(range(X.shape[1]), key=lambda j: (-counts[j], j))
    return np.sort(order[:k])


@pytest.mark.parametrize("emphasis", [True, False])
def test_a_pruned_catalogue_is_the_closed_form_on_the_most_popular_movies(emphasis):
    X = sp.csr_matrix(tiny_binary(3, n_users=80, n_movies=30, density=0.25) * 3.0)
    net = EDLAE.build(30, dropout=0.5, lam=2.0, pop_beta=0.3, emphasis=emphasis, max_items=12)
    net.fit_data(X)
    net.fit_closed_form(X)
    items = _popular(X, 12)
    np.testing.assert_array_equal(net.items.numpy(), items)
    G = binary_gram(X[:, items])
    B = edlae_weights(G, 0.5, 2.0, emphasis)
    want = ((X[:, items].toarray() != 0) @ B) * popularity_weights(np.diag(G), 0.3)
    x = torch.from_numpy(X.toarray().astype(np.float32))
    out = net(x).numpy()
    np.testing.assert_allclose(out[:, items], want, atol=1e-5)
    others = np.setdiff1d(np.arange(30), items)
    assert (out[:, others] == np.finfo(np.float32).min).all()  # never above a modelled movie
    # the sparse rows' scores (validation, the carve, the study) are the forward's
    from deepcf.training.objectives.closed_form import sparse_rows_scores

    np.testing.assert_allclose(sparse_rows_scores(net, X), out, atol=1e-5)
    # rebuilt from its checkpoint: the modelled movies are part of the state
    state = {"hyper_parameters": {"net": net.spec()},
             "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}
    torch.testing.assert_close(net_from_checkpoint(state)(x), net(x))


def test_the_float32_solve_is_the_float64_one():
    from deepcf.models.edlae import edlae_weights_f32

    G = binary_gram(sp.csr_matrix(tiny_binary(4, n_users=200, n_movies=40, density=0.3)))
    for p, lam, emphasis in [(0.0, 5.0, True), (0.7, 1.0, True), (0.5, 3.0, False)]:
        want = edlae_weights(G, p, lam, emphasis)
        got = edlae_weights_f32(G.astype(np.float32), p, lam, emphasis)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_ease_baseline_at_a_dropout_is_the_net():
    from deepcf.study.baselines import fit_ease_f32

    X = sp.csr_matrix(tiny_binary(5, n_users=90, n_movies=25, density=0.3))
    items, B = fit_ease_f32(X, 4.0, np.arange(0, 25, 2), dropout=0.6)
    want = edlae_weights(binary_gram(X[:, items]), 0.6, 4.0)
    np.testing.assert_allclose(B, want, atol=1e-5)


@pytest.mark.parametrize("value", [-1, 2.5, "ten", True])
def test_a_bad_max_items_is_one_line(value):
    with pytest.raises(ConfigError, match="model.net.max_items"):
        EDLAE.build(10, dropout=0.5, lam=1.0, max_items=value)


def test_a_pruned_run_serves_from_its_cached_weights(make_cfg, tmp_path):
    """deepcf.train with max_items: the export caches B in the sidecar (checked against
    onnxruntime), evaluate and recommend score sparse rows from it, and the picks are the
    ONNX graph's own, never a movie outside the modelled ones."""
    from deepcf.serving.codes import ItemItem
    from deepcf.serving.evaluate import evaluate_run
    from deepcf.serving.recommend import load_ratings, recommend
    from deepcf.serving.scoring import densify, top_k_unseen
    from deepcf.training.train import train

    run = tmp_path / "run"
    m = train(make_cfg("experiment=edlae", "data=synthetic", "model.net.max_items=40",
                       "model.net.lam=50", "model.net.lam_unit=absolute",
                       "model.net.dropout=0.5", "model.net.emphasis=true",
                       "model.net.pop_beta=0.1", "logger=none", output_dir=run))
    assert m["onnx"]
    scorer, card, data = load_ratings(run)
    assert isinstance(card.codes, ItemItem) and len(card.codes.items) == 40
    users = data.user_ids[:25]
    rows = data.rows_of(users)
    recs = list(recommend(scorer, card, data, users, n=5))
    got = [[card.item_ids.tolist().index(r["movie_id"]) for r in recs if r["user_id"] == u]
           for u in users]
    dense = scorer(densify(data.X, rows))  # the ONNX graph on dense rows
    top, _ = top_k_unseen(dense, data.X[rows], 5)
    assert got == top.tolist()
    assert set(np.ravel(got)) <= set(card.codes.items.tolist())
    r = evaluate_run(run, ks=(10,), protocol="topn")
    assert 0.0 < r["topn"]["ndcg@10"] <= 1.0
    # the HTTP service loads and describes the same cache
    from deepcf.serving import service

    served = service.load_served(run)
    assert "item-item weights" in service.memory_note(served)
    assert "item-item" in served.info["new_users"]
