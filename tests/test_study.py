"""The study's tables: the experiments table (mean ± std over seeds, diverged seeds reported) and
the baselines it sits next to, against brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from deepcf.stats import fit_biases
from deepcf.study.baselines import baseline_scores
from deepcf.study.experiments import BEGIN, END, baselines, collect, mean_std, table, update_readme


def _run(name: str, seed: int, rmse: float, epochs: int = 5) -> dict:
    return {"experiment": name, "seed": seed, "test/rmse": rmse, "test/mae": rmse * 0.8,
            "val/rmse_best": rmse - 0.01, "epochs": epochs}


def test_mean_std_and_diverged_seeds():
    assert mean_std([1.0, 2.0, 3.0]) == "2.0000 ± 1.0000"  # sample std (ddof=1)
    assert mean_std([0.9]) == "0.9000"
    assert mean_std([1.0, float("nan"), 3.0]) == "2.0000 ± 1.4142 (1/3 diverged)"
    assert mean_std([float("nan"), float("inf")]) == "diverged (2/2)"


def test_table_rows_baselines_first_then_experiments_in_order(tmp_path):
    runs = {"b": [_run("b", s, r) for s, r in ((1, 1.0), (2, float("nan")), (3, 1.2))],
            "a": [_run("a", s, 0.9 + s / 100, epochs=s) for s in (1, 2, 3)]}
    for i, rs in enumerate(runs.values()):
        for j, r in enumerate(rs):
            (tmp_path / f"{i}{j}").mkdir()
            (tmp_path / f"{i}{j}" / "metrics.json").write_text(json.dumps(r))
    assert {k: len(v) for k, v in collect(tmp_path).items()} == {"a": 3, "b": 3}
    base = {"global mean": [{"test/rmse": 1.1, "test/mae": 0.9}] * 3}
    lines = table(collect(tmp_path), base, ["a", "b", "missing"]).splitlines()
    assert lines[0].startswith("| experiment | test RMSE |") and len(lines) == 5
    assert lines[2].startswith("| *global mean* (baseline) | 1.1000 ± 0.0000 | 0.9000 ± 0.0000")
    assert lines[3] == ("| `a` | 0.9200 ± 0.0100 | 0.7360 ± 0.0080 | 0.9100 ± 0.0100 | 1/2/3 "
                        "| 3 |")
    assert lines[4].startswith("| `b` | 1.1000 ± 0.1414 (1/3 diverged) |")


def test_update_readme_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold table\n{END}\noutro\n")
    update_readme(readme, "| new |")
    assert readme.read_text() == f"intro\n{BEGIN}\n| new |\n{END}\noutro\n"
    (tmp_path / "other.md").write_text("no block")
    with pytest.raises(SystemExit, match="no <!-- experiments:begin -->"):
        update_readme(tmp_path / "other.md", "x")


def _ratings(seed=0, n_users=30, n_items=20, density=0.3):
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    mask[np.arange(n_users), rng.integers(0, n_items, n_users)] = True
    r = rng.integers(1, 6, (n_users, n_items)).astype(np.float32)
    return sp.csr_matrix(np.where(mask, r, 0))


def test_bias_fit_is_the_fixed_point_of_regularised_least_squares():
    """Each sweep solves b_i given b_u, then b_u given b_i; at convergence both are ridge
    solutions: b_i = sum_u (r - mu - b_u) / (reg_i + n_i), and likewise for b_u."""
    X = _ratings()
    mu, b_u, b_i = fit_biases(X, reg_u=3.0, reg_i=2.0, sweeps=200)
    D = X.toarray()
    obs = D != 0
    assert mu == pytest.approx(D[obs].mean())
    res_i = np.where(obs, D - mu - b_u[:, None], 0).sum(0) / (2.0 + obs.sum(0))
    res_u = np.where(obs, D - mu - b_i[None, :], 0).sum(1) / (3.0 + obs.sum(1))
    np.testing.assert_allclose(b_i, res_i, atol=1e-8)
    np.testing.assert_allclose(b_u, res_u, atol=1e-8)


def test_baseline_scores_against_numpy():
    train, test = _ratings(0), _ratings(1)
    s = baseline_scores(train, test, 1.0, 5.0)
    T = test.toarray()
    obs = T != 0
    mu = train.data.mean()
    err = np.clip(mu, 1, 5) - T[obs]
    assert s["global mean"]["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
    assert s["global mean"]["mae"] == pytest.approx(np.mean(np.abs(err)))
    m, b_u, b_i = fit_biases(train)
    pred = np.clip(m + b_u[:, None] + b_i[None, :], 1, 5)[obs]
    assert s["user+item bias"]["rmse"] == pytest.approx(np.sqrt(np.mean((pred - T[obs]) ** 2)))


def test_baselines_use_the_runs_splits(cache_dir, monkeypatch):
    """One row per seed, on the split each seed's run uses (seed = split seed)."""
    from deepcf.data.datamodule import RatingsDataModule
    from deepcf.data.sources import Synthetic

    monkeypatch.setenv("DEEPCF_CACHE_DIR", str(cache_dir))
    got = baselines([1, 2], ["data=synthetic"])
    assert set(got) == {"global mean", "user+item bias"}
    for seed, row in zip((1, 2), got["user+item bias"]):
        dm = RatingsDataModule(Synthetic("tiny"), protocol={"seed": seed},
                               cache_dir=str(cache_dir))
        dm.setup()
        want = baseline_scores(dm.split.train, dm.split.test, *dm.rating_range)
        assert row["test/rmse"] == pytest.approx(want["user+item bias"]["rmse"])
    assert got["user+item bias"][0]["test/rmse"] != got["user+item bias"][1]["test/rmse"]


def test_transcripts_are_what_the_commands_print(tmp_path):
    from deepcf.errors import DeepCFError
    from deepcf.study.transcripts import rewrite

    (tmp_path / "f.txt").write_text("from a file\n")
    text = ("# doc\n<!-- transcript: cat f.txt -->\nstale\n<!-- /transcript -->\nmiddle\n"
            "<!-- transcript: echo $PWD/x -->\n<!-- /transcript -->\n")
    got = rewrite(text, tmp_path)
    assert got == ("# doc\n<!-- transcript: cat f.txt -->\n```\n$ cat f.txt\nfrom a file\n```\n"
                   "<!-- /transcript -->\nmiddle\n<!-- transcript: echo $PWD/x -->\n```\n"
                   "$ echo $PWD/x\nx\n```\n<!-- /transcript -->\n")
    assert rewrite(got, tmp_path) == got  # same output, same file
    (tmp_path / "f.txt").write_text("changed\n")
    only = rewrite(got.replace("\nx\n", "\nold\n"), tmp_path, match="cat ")
    assert "$ cat f.txt\nchanged\n" in only and "$ echo $PWD/x\nold\n" in only
    saved = []
    with pytest.raises(DeepCFError, match="`exit 3` exited with 3"):
        rewrite("<!-- transcript: echo a -->\n<!-- /transcript -->\n"
                "<!-- transcript: exit 3 -->\nold\n<!-- /transcript -->", tmp_path,
                save=saved.append)
    assert saved == ["<!-- transcript: echo a -->\n```\n$ echo a\na\n```\n<!-- /transcript -->\n"
                     "<!-- transcript: exit 3 -->\nold\n<!-- /transcript -->"]


def test_transcripts_of_several_files_run_in_the_order_given(tmp_path, capsys):
    from deepcf.study.transcripts import main

    first, second = tmp_path / "README.md", tmp_path / "serving.md"
    first.write_text("<!-- transcript: echo made > made.txt && head made.txt -->\n"
                     "<!-- /transcript -->\n")
    second.write_text("text\n<!-- transcript: cat made.txt -->\nold\n<!-- /transcript -->\n")
    main([str(first), str(second), "--root", str(tmp_path)])
    assert "$ cat made.txt\nmade\n```" in second.read_text()  # it used what README.md made
    assert "README.md: 1 transcript(s) written" in capsys.readouterr().out
    # --match filters over every file; a match in none of them, a missing file or an unclosed
    # block is one line before any command runs
    (tmp_path / "made.txt").write_text("again\n")
    main([str(first), str(second), "--root", str(tmp_path), "--match", "cat made"])
    assert "$ cat made.txt\nagain\n" in second.read_text()
    assert (tmp_path / "made.txt").read_text() == "again\n"  # README.md's block did not run
    before = second.read_text()
    unclosed = tmp_path / "unclosed.md"
    unclosed.write_text("a\n<!-- transcript: echo x -->\nno end\n")
    for args, message in (
            (["--match", "nowhere"], "--match 'nowhere': no transcript command in"),
            ([str(tmp_path / "gone.md")], "gone.md: no such file"),
            ([str(unclosed)], "unclosed.md:2: a transcript block without its closing")):
        with pytest.raises(SystemExit) as e:
            main([str(second), *args, "--root", str(tmp_path)])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert second.read_text() == before
