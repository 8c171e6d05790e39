"""Ranking: implicit data, the multinomial objective, the validation NDCG@10 in training, against
brute-force computations on small data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from deepcf.errors import ConfigError
from deepcf.models.autoencoder import AutoEncoder
from deepcf.models.sparse_ops import Pattern
from deepcf.serving.metrics import RankingAccumulator
from deepcf.serving.scoring import top_k_unseen
from deepcf.training.objectives.multinomial import multinomial_nll


def _batch(x: torch.Tensor):
    """(Pattern, values) of the non-zero entries of dense rows x."""
    nz = x.nonzero()
    counts = (x != 0).sum(1)
    off = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)[:-1]])
    return Pattern.from_offsets(off, nz[:, 1], x.shape[1]), x[x != 0]


def test_implicit_data_option_all_and_threshold():
    from deepcf.data.split import implicit_matrix, parse_implicit

    X = sp.csr_matrix(np.array([[5, 0, 3.5, 1], [0, 4, 0, 2]], np.float32))
    np.testing.assert_array_equal(implicit_matrix(X, "all").toarray(), (X.toarray() != 0) * 1.0)
    np.testing.assert_array_equal(implicit_matrix(X, 3.5).toarray(),
                                  (X.toarray() >= 3.5) * 1.0)
    assert implicit_matrix(X, 3.5).nnz == 3  # the others are dropped, not stored zeros
    assert implicit_matrix(X, None) is X
    with pytest.raises(ConfigError, match="data.implicit='yes'"):
        parse_implicit("yes")


@pytest.mark.parametrize("data", ["synthetic", "ml100k"])
def test_implicit_works_for_every_source(data, make_cfg, tmp_path):
    from deepcf.training.config import build

    extra = ["data.source.scale=tiny"] if data == "synthetic" else []
    cfg = make_cfg(f"data={data}", *extra, "data.implicit=4")
    dm = build(cfg.data, "data")
    dm.setup("fit")
    for part in (dm.split.train, dm.split.val, dm.split.test):
        assert part.nnz and (part.data == 1).all()
    assert dm.rating_range == (0.0, 1.0)
    m = dm.matrix.ratings
    assert sum(p.nnz for p in (dm.split.train, dm.split.val, dm.split.test)) == \
        int((m.data >= 4).sum())


def test_implicit_ratings_csv(make_cfg, tmp_path):
    from deepcf.training.config import build

    f = tmp_path / "r.csv"
    rng = np.random.default_rng(0)
    lines = ["userId,movieId,rating"] + [f"{u},{m},{rng.integers(1, 6)}" for u in range(20)
                                         for m in rng.choice(30, 10, replace=False)]
    f.write_text("\n".join(lines) + "\n")
    cfg = make_cfg("data=ratings_csv", f"data.source.path={f}", "data.implicit=all")
    dm = build(cfg.data, "data")
    dm.setup("fit")
    assert dm.split.train.nnz + dm.split.val.nnz + dm.split.test.nnz == 200
    assert (dm.split.train.data == 1).all()


def test_multinomial_nll_against_dense_torch():
    torch.manual_seed(0)
    x = torch.randint(0, 3, (4, 9)).float() * (torch.rand(4, 9) < 0.5)
    x[0, 0] = 1.0
    logits = torch.randn(4, 9, requires_grad=True)
    pat, val = _batch(x)
    got = multinomial_nll(logits, pat, val)
    want = -(x * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(got, want)
    g1, = torch.autograd.grad(got, logits)
    g2, = torch.autograd.grad(want, logits)
    torch.testing.assert_close(g1, g2)


def test_autoencoder_sparse_logits_equal_the_dense_forward():
    torch.manual_seed(0)
    net = AutoEncoder.build(15, hidden=[6, 3], activation="tanh")
    x = (torch.rand(5, 15) < 0.4).float()
    pat, val = _batch(x)
    logits, penalty = net.train_logits(pat, val)
    torch.testing.assert_close(logits, net(x))
    assert penalty is None


def _ndcg_by_hand(scores, seen, relevant, candidate, k=10):
    out = []
    for r in range(scores.shape[0]):
        rel = set(np.flatnonzero(relevant[r]))
        if not rel:
            continue
        cand = [j for j in range(scores.shape[1]) if not seen[r, j] and candidate[j]]
        ranked = sorted(cand, key=lambda j: -scores[r, j])[:k]
        dcg = sum(1 / math.log2(i + 2) for i, j in enumerate(ranked) if j in rel)
        ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(rel))))
        out.append(dcg / ideal)
    return np.array(out)


def test_ranked_rows_ndcg_against_brute_force():
    """Seen and non-candidate columns never ranked, rows without a relevant entry left out."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 25))
    seen = rng.random((6, 25)) < 0.3
    relevant = (rng.random((6, 25)) < 0.2) & ~seen
    relevant[3] = False  # a row without relevant entries is left out
    candidate = rng.random(25) > 0.1
    masked = np.where(candidate, scores, -np.inf)
    top, _ = top_k_unseen(masked, sp.csr_matrix(seen), 10)
    acc = RankingAccumulator(25, ["ndcg@10"], np.ones(25), per_user=True)
    acc.add(top, relevant)
    want = _ndcg_by_hand(scores, seen, relevant, candidate)
    assert acc.result()["n_users"] == len(want) == 5
    np.testing.assert_allclose(acc.per_user_values()["ndcg@10"], want)
    assert acc.result()["ndcg@10"] == pytest.approx(want.mean())


def test_val_ndcg_in_training_equals_the_topn_protocol(make_cfg):
    """The module's val/ndcg@10 on a split's carve is the protocol's NDCG@10 of the same net."""
    import pytorch_lightning as pl

    from deepcf.serving.evaluate import topn_metrics
    from deepcf.training.assembly import assemble

    cfg = make_cfg("data=synthetic", "data.source.scale=tiny", "data.implicit=all",
                   "objective=multinomial", "model.metrics=[ndcg@10]", "model.net.hidden=[16]")
    dm, model = assemble(cfg)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False)
    got = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert "val/rmse" not in got  # a multinomial model's outputs are not ratings
    net = model.net.eval()
    with torch.no_grad():
        want = topn_metrics(lambda users: net(torch.from_numpy(
            dm.split.train[users].toarray())).numpy(), dm.split.train, dm.split.val, ks=(10,))
    assert got["val/ndcg@10"] == pytest.approx(want["ndcg@10"], abs=1e-6)


def test_ranking_run_early_stops_on_val_ndcg_and_returns_its_best(make_cfg):
    from deepcf.training.train import train

    m = train(make_cfg("data=synthetic", "data.implicit=all", "objective=multinomial",
                       "model.metrics=[ndcg@10]", "trainer.max_epochs=2",
                       "model.net.hidden=[16]", "optimized_metric=val/ndcg@10_best"))
    assert 0 < m["val/ndcg@10_best"] <= 1 and "test/ndcg@10" in m and "test/rmse" not in m
    assert m["status"] == "ok" and m["onnx"]


def test_the_monitor_follows_the_output_kind_and_a_metric_not_logged_is_one_line(make_cfg,
                                                                              tmp_path):
    from deepcf.training.train import train

    m = train(make_cfg("data=synthetic", "objective=multinomial", "trainer.max_epochs=1",
                       "model.net.hidden=[8]", "logger=none"))
    assert m["monitor"] == "val/ndcg@10" and m["optimized_metric"] == "val/ndcg@10_best"
    assert "val/rmse" not in m and "test/rmse" not in m
    with pytest.raises(ConfigError, match="callbacks.model_checkpoint.monitor=val/rmse"):
        train(make_cfg("data=synthetic", "objective=multinomial", "trainer.max_epochs=1",
                       "callbacks.model_checkpoint.monitor=val/rmse", output_dir=tmp_path / "b"))
    with pytest.raises(ConfigError, match="add the metric to model.metrics"):
        train(make_cfg("data=synthetic", "trainer.max_epochs=1",
                       "callbacks.early_stopping.monitor=val/ndcg@10", output_dir=tmp_path / "c"))


@pytest.fixture(scope="module")
def ranking_run(train_run, tmp_path_factory):
    """A tiny Mult-DAE run (ranking scores, implicit data) with its ONNX model and sidecar."""
    return train_run(tmp_path_factory.mktemp("dae-run"),
                     ["experiment=mult_dae", "data=synthetic", "data.source.scale=tiny",
                      "trainer.max_epochs=2", "model.net.hidden=[16]", "model.net.latent=8",
                      "logger=none"])


def test_ranking_run_sidecar_recommend_and_evaluate_say_scores_not_ratings(ranking_run, capsys):
    from deepcf.evaluate import main as evaluate_main
    from deepcf.recommend import main as recommend_main
    from deepcf.serving.recommend import load_ratings, recommend
    from deepcf.serving.sidecar import read_sidecar

    card = read_sidecar(ranking_run / "model.onnx")
    assert card.score_kind == "MultDAE score" and not card.rates and card.implicit == "all"
    scorer, card, data = load_ratings(ranking_run)
    uid = int(data.user_ids[np.flatnonzero(np.diff(data.X.indptr))[0]])
    recs = list(recommend(scorer, card, data, np.array([uid]), n=5))
    assert all(r["predicted_rating"] == "" and r["score"] != "" for r in recs)
    # the model's input is the user's ratings as interactions, as in training
    row = data.rows_of([uid])[0]
    x = (data.X[row].toarray() != 0).astype(np.float32)
    best = np.argsort(-np.where(x[0] != 0, -np.inf, scorer(x)[0]), kind="stable")[:5]
    assert [r["movie_id"] for r in recs] == [int(card.item_ids[j]) for j in best]
    recommend_main([str(ranking_run), "--user", str(uid), "-n", "3"])
    out = capsys.readouterr().out
    assert "ranked by MultDAE score (not a rating)" in out
    evaluate_main([str(ranking_run)])
    out = capsys.readouterr().out
    assert "RMSE" not in out.replace("no RMSE/MAE", "")
    assert "no RMSE/MAE: the model's outputs are MultDAE scores" in out


def test_rating_run_is_labelled_ranked_by_predicted_rating(tiny_run, capsys):
    from deepcf.recommend import main as recommend_main
    from deepcf.serving.sidecar import read_sidecar

    assert read_sidecar(tiny_run / "model.onnx").score_kind == "rating"
    recommend_main([str(tiny_run), "--user", "1", "-n", "3"])
    assert "ranked by predicted rating" in capsys.readouterr().out


def test_blend_weight_rule_against_brute_force():
    """The ensemble's weight: the best carve NDCG@10 among weights with carve coverage@10 >= the
    floor (else the best NDCG@10), over standardised scores."""
    from deepcf.serving.evaluate import topn_metrics
    from deepcf.study import fits
    from deepcf.study.protocols import topn_split

    rng = np.random.default_rng(0)
    X = sp.csr_matrix((rng.random((60, 40)) < 0.3).astype(np.float32))
    s = topn_split(X, 0)
    pop = np.asarray(s.fit.sum(0)).ravel()
    noise = rng.normal(size=(60, 40))

    def a(users):
        return np.broadcast_to(pop, (len(users), 40)) * 10.0

    def b(users):
        return noise[users]

    for floor in (0.0, 0.5, 1.01):
        scored = {}
        for w in fits.BLEND_WEIGHTS:
            z = [(S - S.mean(1, keepdims=True)) / S.std(1, keepdims=True) for S in
                 (a(np.arange(60)), b(np.arange(60)))]
            m = topn_metrics(lambda u, w=w, z=z: (1 - w) * z[0][u] + w * z[1][u], s.fit, s.val)
            scored[w] = (m["ndcg@10"], m["coverage@10"])
        ok = [w for w, (_, c) in scored.items() if c >= floor] or list(scored)
        want = max(ok, key=lambda w: (scored[w][0], w))
        assert fits.blend_weight(a, b, s.fit, s.val, min_coverage=floor) == want
