"""Evaluation: ranking metrics against brute force, ONNX vs PyTorch, and the held-out RMSE of
`deepcf.evaluate` equal to the training run's own test/rmse."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp

from deepcf.errors import ConfigError
from deepcf.serving.metrics import RankingAccumulator, gini, ndcg_at, recall_at, top_popular
from deepcf.serving.scoring import top_k_unseen
from tests.helpers import TINY_RUN

# -- metrics against brute force --------------------------------------------------------------

def brute(top: list[list[int]], relevant: list[set[int]], k: int) -> tuple[float, float]:
    recalls, ndcgs = [], []
    for t, rel in zip(top, relevant):
        if not rel:
            continue
        hits = [m in rel for m in t[:k]]
        recalls.append(sum(hits) / len(rel))
        dcg = sum(1 / math.log2(i + 2) for i, h in enumerate(hits) if h)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(rel))))
        ndcgs.append(dcg / idcg)
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def brute_gini(counts) -> float:
    x = np.asarray(counts, float)
    n = len(x)
    # mean absolute difference over all pairs / (2 * mean)
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * n * n * x.mean()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_users, n_movies, kmax = 12, 30, 8
    top = np.stack([rng.permutation(n_movies)[:kmax] for _ in range(n_users)])
    top[0, -2:] = -1  # a user with fewer unseen movies than K
    rel_dense = rng.random((n_users, n_movies)) < 0.2
    rel_dense[3] = False  # a user with nothing relevant is left out
    counts = rng.integers(0, 50, n_movies)
    acc = RankingAccumulator(n_movies, [f"{m}@{k}" for k in (3, kmax) for m in
                                        ("recall", "ndcg", "coverage", "gini", "pop1%")], counts)
    acc.add(top[:5], rel_dense[:5])  # two chunks, as the scorer feeds it
    acc.add(top[5:], rel_dense[5:])
    out = acc.result()
    relevant = [set(np.flatnonzero(r)) for r in rel_dense]
    tops = [[m for m in t if m >= 0] for t in top]
    for k in (3, kmax):
        recall, ndcg = brute(tops, relevant, k)
        assert out[f"recall@{k}"] == pytest.approx(recall)
        assert out[f"ndcg@{k}"] == pytest.approx(ndcg)
        keep = [t[:k] for t, rel in zip(tops, relevant) if rel]
        rec = np.bincount([m for t in keep for m in t], minlength=n_movies)
        assert out[f"coverage@{k}"] == pytest.approx((rec > 0).sum() / n_movies)
        assert out[f"gini@{k}"] == pytest.approx(brute_gini(rec))
        popular = np.argsort(-counts, kind="stable")[: math.ceil(0.01 * n_movies)]
        assert out[f"pop1%@{k}"] == pytest.approx(rec[popular].sum() / rec.sum())
    assert out["n_users"] == sum(1 for r in relevant if r)


def test_metric_edge_cases():
    hits = np.array([[True, False, True]])
    assert recall_at(hits, np.array([4]), 3)[0] == pytest.approx(0.5)
    ideal = 1 + 1 / math.log2(3) + 0.5
    assert ndcg_at(hits, np.array([4]), 3)[0] == pytest.approx((1 + 0.5) / ideal)
    assert gini([5, 5, 5, 5]) == 0.0
    assert gini([0, 0, 0, 8]) == pytest.approx(0.75)  # (n-1)/n: everything on one movie
    assert top_popular(np.arange(250)).tolist() == [249, 248, 247]  # ceil(1% of 250)


def test_recall_plain_and_capped_are_both_named_metrics():
    hits = np.array([[True, True, False], [True, False, False]])
    n_rel = np.array([10, 1])
    assert recall_at(hits, n_rel, 3).tolist() == pytest.approx([0.2, 1.0])
    assert recall_at(hits, n_rel, 3, capped=True).tolist() == pytest.approx([2 / 3, 1.0])
    a = RankingAccumulator(3, ["recall@3", "recall_capped@2"], np.ones(3))
    a.add(np.array([[0, 1, 2]]), np.array([[True, True, True]]))
    assert a.result()["recall@3"] == 1.0 and a.result()["recall_capped@2"] == 1.0
    with pytest.raises(ConfigError, match="no ranking metric 'other'"):
        RankingAccumulator(3, ["other@3"], np.ones(3))
    with pytest.raises(ConfigError, match="NAME@K"):
        RankingAccumulator(3, ["ndcg"], np.ones(3))


def test_top_k_unseen_never_returns_a_seen_movie():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 40)).astype(np.float32)
    seen = sp.random(50, 40, density=0.5, format="lil", random_state=1)
    seen[7] = 1.0  # a user who has seen everything: no movie is returned
    seen = seen.tocsr()
    top, vals = top_k_unseen(scores.copy(), seen, 10)
    for u in range(50):
        got = top[u][top[u] >= 0]
        assert not set(got) & set(seen[u].indices)
        unseen = np.setdiff1d(np.arange(40), seen[u].indices)
        best = unseen[np.argsort(-scores[u, unseen], kind="stable")][:10]
        assert got.tolist() == best.tolist()
    assert (top[7] == -1).all() and np.isneginf(vals[7]).all()


# -- on a trained run -------------------------------------------------------------------------

def test_run_exports_model_and_sidecar(tiny_run):
    from deepcf.serving.sidecar import read_sidecar

    card = read_sidecar(tiny_run / "model.onnx")
    assert (tiny_run / "model.deepcf.npz").exists()
    assert len(card.item_ids) <= 200 and len(card.user_ids) <= 300
    assert card.orientation == "user" and card.titles is None
    assert (card.rating_min, card.rating_max) == (1.0, 5.0)
    assert card.item_train_count.sum() > 0


def test_evaluate_rmse_equals_training_test_rmse(tiny_run, tmp_path):
    from deepcf.evaluate import main

    r = main([str(tiny_run), "--out", str(tmp_path / "eval.json"), "-k", "5", "10"])
    trained = json.loads((tiny_run / "metrics.json").read_text())
    assert r["rating"]["rmse"] == pytest.approx(trained["test/rmse"], abs=1e-5)
    assert r["rating"]["mae"] == pytest.approx(trained["test/mae"], abs=1e-5)
    assert r["rating"]["n_ratings"] == trained["test/n_ratings"]
    assert r["rating"]["n_fallback"] == trained["test/n_fallback"]
    rk = r["ranking"]
    assert rk["n_users"] > 0 and 0 <= rk["ndcg@10"] <= 1 and 0 < rk["coverage@10"] <= 1
    assert json.loads((tmp_path / "eval.json").read_text())["ks"] == [5, 10]


def test_evaluate_on_npz_matrices_matches_the_run(tiny_run, tmp_path):
    from deepcf.serving.evaluate import evaluate_files, evaluate_run
    from deepcf.serving.runs import run_datamodule

    split = run_datamodule(tiny_run).split
    sp.save_npz(tmp_path / "train.npz", split.train)
    sp.save_npz(tmp_path / "test.npz", split.test)
    files = evaluate_files(tiny_run / "model.onnx", tmp_path / "train.npz",
                           tmp_path / "test.npz", ks=(10,))
    run = evaluate_run(tiny_run, ks=(10,))
    assert files["rating"] == pytest.approx(run["rating"])


def test_generate_from_checkpoint_agrees_with_pytorch(tiny_run, tmp_path):
    import torch

    from deepcf.serving.export import export_run
    from deepcf.serving.runs import find_checkpoint, load_net, run_datamodule
    from deepcf.serving.scoring import OnnxScorer, densify
    from deepcf.serving.sidecar import read_sidecar

    out, diff = export_run(tiny_run, tmp_path / "g.onnx")
    assert diff <= 1e-4 and (tmp_path / "g.deepcf.npz").exists()
    net = load_net(find_checkpoint(tiny_run)[0])
    train = run_datamodule(tiny_run).split.train
    rows = densify(train, np.arange(train.shape[0]))  # every real row, batch != export's 8
    ours = OnnxScorer(out)(rows)
    with torch.no_grad():
        ref = net(torch.from_numpy(rows)).numpy()
    assert np.abs(ours - ref).max() <= 1e-4
    assert read_sidecar(out).item_ids.tolist() == read_sidecar(
        tiny_run / "model.onnx").item_ids.tolist()


def test_evaluate_errors_are_one_line(tiny_run, tmp_path, capsys):
    from deepcf.evaluate import main
    from deepcf.serving.sidecar import read_sidecar

    n = len(read_sidecar(tiny_run / "model.onnx").item_ids)
    bad = tmp_path / "wide.npz"
    sp.save_npz(bad, sp.csr_matrix((3, n + 1), dtype=np.float32))
    for argv, message in [
        (["--model", str(tiny_run / "model.onnx"), "--input", str(bad), "--target", str(bad)],
         f"the matrix has {n + 1} movie columns but the model scores {n} movies"),
        ([str(tmp_path)], "not a deepcf run dir (no config_resolved.yaml)"),
        (["--model", str(tmp_path / "none.onnx"), "--input", "x", "--target", "y"],
         "no such ONNX model"),
        ([], "give a RUN_DIR, or --model with --input and --target"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("deepcf.evaluate: error: ") and message in err
        assert "\n" not in err


def test_item_oriented_run_evaluates_and_ranks(tmp_path, train_run):
    from deepcf.serving.evaluate import evaluate_run
    from deepcf.serving.recommend import load_ratings, recommend

    run = train_run(tmp_path / "item", [*TINY_RUN, "data.orientation=item",
                                        "trainer.max_epochs=2"])
    r = evaluate_run(run, ks=(10,))
    trained = json.loads((run / "metrics.json").read_text())
    assert r["rating"]["rmse"] == pytest.approx(trained["test/rmse"], abs=1e-5)
    assert r["rating"]["n_fallback"] == trained["test/n_fallback"]
    scorer, card, data = load_ratings(run)
    users = data.user_ids[:20]
    col = {int(m): i for i, m in enumerate(card.item_ids)}
    for rec in recommend(scorer, card, data, users, n=5):
        row = data.rows_of([rec["user_id"]])[0]
        assert col[rec["movie_id"]] not in set(data.X[row].indices)


@pytest.mark.parametrize("pop_beta", [0.0, 0.5])
def test_evaluate_topn_protocol_matches_brute_force(tiny_run, tmp_path, pop_beta):
    """--protocol topn: the run's test split scored by the top-N protocol's definitions; the
    brute force ranks, per user, the movies with a training interaction the user has not rated
    in training or validation (validation movies get -inf: never in a top K here)."""
    from deepcf.evaluate import main
    from deepcf.serving.runs import load_model, run_datamodule
    from tests.test_accuracy import brute_topn

    scorer, card = load_model(tiny_run / "model.onnx")
    s = run_datamodule(tiny_run).split
    train, val = s.train.toarray() != 0, s.val.toarray() != 0
    scores = scorer(s.train.toarray().astype(np.float32)).astype(np.float64)
    scores /= np.maximum(card.item_train_count, 1) ** pop_beta  # the popularity correction
    scores[val] = -np.inf
    assert (train.any(0) & ~train & ~val).sum(1).min() > 10  # enough candidates for every K
    want = brute_topn(scores, train, s.test.toarray() != 0, (5, 10))
    r = main([str(tiny_run), "--protocol", "topn", "-k", "5", "10", "--pop-beta", str(pop_beta),
              "--out", str(tmp_path / "topn.json")])
    assert r["protocol"] == "topn" and "rating" not in r
    for name, value in want.items():
        assert r["topn"][name] == pytest.approx(value, abs=1e-9), name
    assert json.loads((tmp_path / "topn.json").read_text())["topn"]["n_users"] > 0


def test_pop_beta_needs_the_topn_protocol(tiny_run, capsys):
    from deepcf.evaluate import main

    with pytest.raises(SystemExit) as e:
        main([str(tiny_run), "--pop-beta", "0.3"])
    assert e.value.code == 2
    assert "--pop-beta corrects a ranking: use it with --protocol topn" in capsys.readouterr().err
