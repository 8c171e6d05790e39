"""Recommendations: never a movie the user rated, titles and CSV, the popularity fallback, and one
clear line for each bad input."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import scipy.sparse as sp


@pytest.fixture(scope="module")
def loaded(tiny_run):
    from deepcf.serving.recommend import load_ratings

    return load_ratings(tiny_run)


def test_every_user_gets_unseen_movies_in_score_order(loaded):
    from deepcf.serving.recommend import recommend

    scorer, card, data = loaded
    recs = list(recommend(scorer, card, data, data.user_ids, n=10, chunk=64))
    by_user: dict[int, list[dict]] = {}
    for r in recs:
        by_user.setdefault(r["user_id"], []).append(r)
    assert len(by_user) == len(data.user_ids)
    col = {int(m): i for i, m in enumerate(card.item_ids)}
    for uid, mine in by_user.items():
        row = data.rows_of([uid])[0]
        rated = set(data.X[row].indices)
        picked = [col[r["movie_id"]] for r in mine]
        assert not rated & set(picked)
        assert [r["rank"] for r in mine] == list(range(1, len(mine) + 1))
        scores = [r["score"] for r in mine]
        assert scores == sorted(scores, reverse=True)
        preds = [r["predicted_rating"] for r in mine]
        assert preds == sorted(preds, reverse=True)
        assert all(card.rating_min <= p <= card.rating_max for p in preds)
        assert {r["basis"] for r in mine} == {"model"}


def test_cli_writes_csv_and_table(tiny_run, tmp_path, capsys):
    from deepcf.recommend import main
    from deepcf.serving.recommend import load_ratings

    _, _, data = load_ratings(tiny_run)
    uid = int(data.user_ids[0])
    out = tmp_path / "recs.csv"
    main([str(tiny_run), "--user", str(uid), "-n", "5", "--csv", str(out)])
    text = capsys.readouterr().out
    assert f"user {uid} (" in text and "top 5 unseen movies, predicted by the model" in text
    rows = list(csv.DictReader(out.open()))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5]
    assert {r["user_id"] for r in rows} == {str(uid)} and rows[0]["basis"] == "model"


def test_ratings_file_with_titles_and_popularity_fallback(tiny_run, tmp_path):
    from deepcf.serving.recommend import load_ratings, recommend
    from deepcf.serving.sidecar import read_sidecar, write_sidecar

    # a copy of the model whose sidecar knows titles, as an ML-100K model's does
    model = tmp_path / "m.onnx"
    model.write_bytes((tiny_run / "model.onnx").read_bytes())
    card = read_sidecar(tiny_run / "model.onnx")
    card.titles = np.array([f"Movie {i}" for i in card.item_ids])
    write_sidecar(model, card)
    known_silent = int(card.user_ids[1])  # a model user absent from this ratings file
    m = card.item_ids
    ratings = tmp_path / "ratings.csv"
    ratings.write_text(f"userId,movieId,rating\n{card.user_ids[0]},{m[0]},5\n"
                       f"{card.user_ids[0]},{m[3]},2\n99001,{m[1]},4\n")
    scorer, card, data = load_ratings(model=model, ratings=ratings)
    recs = list(recommend(scorer, card, data, np.array([card.user_ids[0], 99001,
                                                        known_silent]), n=4))
    first = [r for r in recs if r["user_id"] == card.user_ids[0]]
    assert {r["movie_id"] for r in first}.isdisjoint({int(m[0]), int(m[3])})
    assert all(r["title"] == f"Movie {r['movie_id']}" for r in recs)
    new_user = [r for r in recs if r["user_id"] == 99001]  # new, but rated: the model scores
    assert len(new_user) == 4 and new_user[0]["basis"] == "model"
    silent = [r for r in recs if r["user_id"] == known_silent]
    assert [r["basis"] for r in silent] == ["popularity"] * 4
    assert [r["predicted_rating"] for r in silent] == [""] * 4
    assert [r["score"] for r in silent] == [""] * 4
    top = np.argsort(-card.item_train_count, kind="stable")[:4]
    assert [r["movie_id"] for r in silent] == card.item_ids[top].tolist()

    from deepcf.serving.recommend import format_table

    assert "POPULARITY FALLBACK" in format_table(silent)


def test_bad_inputs_get_one_clear_line(tiny_run, tmp_path, capsys):
    from deepcf.recommend import main
    from deepcf.serving.sidecar import read_sidecar

    model = str(tiny_run / "model.onnx")
    card = read_sidecar(model)
    unseen = int(card.item_ids.max()) + 1000
    bad_movie = tmp_path / "bad_movie.csv"
    bad_movie.write_text(f"userId,movieId,rating\n{card.user_ids[0]},{unseen},4\n")
    wide = tmp_path / "wide.npz"
    sp.save_npz(wide, sp.csr_matrix((2, len(card.item_ids) + 7), dtype=np.float32))
    cases = [
        ([str(tiny_run), "--user", "987654"], "unknown user id 987654"),
        (["--model", model, "--ratings", str(bad_movie), "--user", "1"],
         f"movie id {unseen} was never seen by the model"),
        (["--model", model, "--ratings", str(wide), "--user", "0"],
         f"{len(card.item_ids) + 7} movie columns but the model scores {len(card.item_ids)}"),
        ([str(tiny_run), "--user", "abc"], "user id 'abc' is not an integer"),
        ([str(tiny_run), "--all"], "--all needs --csv"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("deepcf.recommend: error: ") and message in err, err
        assert "\n" not in err


def test_model_whose_movie_count_differs_from_the_run_data(tiny_run, tmp_path, capsys):
    import torch

    from deepcf.models.autoencoder import AutoEncoder
    from deepcf.recommend import main
    from deepcf.serving.export import export_onnx
    from deepcf.serving.sidecar import read_sidecar, write_sidecar

    card = read_sidecar(tiny_run / "model.onnx")
    n = len(card.item_ids) - 1  # a consistent model + sidecar, trained on other movies
    card.item_ids, card.titles = card.item_ids[:n], None
    card.item_train_count = card.item_train_count[:n]
    model = export_onnx(AutoEncoder.build(n, hidden=[8]), tmp_path / "other.onnx",
                        torch.zeros(2, n))
    write_sidecar(model, card)
    with pytest.raises(SystemExit):
        main([str(tiny_run), "--model", str(model), "--user", str(card.user_ids[0])])
    err = capsys.readouterr().err
    assert f"the model scores {n} movies but the data of {tiny_run} has {n + 1}" in err

    card.item_ids = np.append(card.item_ids, 10**9)  # sidecar no longer fits the graph
    write_sidecar(model, card)
    with pytest.raises(SystemExit):
        main([str(tiny_run), "--model", str(model), "--user", str(card.user_ids[0])])
    assert f"the model takes {n} movies but its sidecar" in capsys.readouterr().err
