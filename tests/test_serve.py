"""Serving an item-row model from its cached codes, new users folded in, and the HTTP service
started for real on a loopback port and talked to over HTTP.

One short `experiment=i_autorec_target` run on the real MovieLens-100K serves the module (20
full-batch Rprop epochs: its test RMSE is already well below the bias baseline's); the session's
tiny rows=users run serves the rows=users and bearer-token checks.
"""

from __future__ import annotations

import http.client
import json
import math
import queue
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

HOST = "127.0.0.1"
NEW_USER = [{"movie_id": 50, "rating": 5}, {"movie_id": 181, "rating": 4},
            {"movie_id": 172, "rating": 5}, {"movie_id": 1, "rating": 2}]


@pytest.fixture(scope="module")
def iat_run(train_run, tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("iat-run"),
                     ["experiment=i_autorec_target", "trainer.max_epochs=20", "logger=csv"])


# -- the HTTP side -------------------------------------------------------------------------------
def request(port: int, method: str, path: str, body=None, headers: dict | None = None,
            raw: bytes | None = None, conn: http.client.HTTPConnection | None = None):
    """(status, decoded JSON) of one request to 127.0.0.1:port."""
    own = conn is None
    conn = conn or http.client.HTTPConnection(HOST, port, timeout=60)
    h = {"Content-Type": "application/json"} if body is not None or raw is not None else {}
    h.update(headers or {})
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    try:
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        payload = r.read()
    finally:
        if own:
            conn.close()
    return r.status, json.loads(payload) if payload else None


@contextmanager
def started_server(args: list[str], log: Path, timeout: float = 240.0):
    """`python -m deepcf.serve ARGS --port 0` in a subprocess (its imports logged by
    -X importtime); yields its port; stopped after."""
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "deepcf.serve", *args,
                                 "--port", "0"],
                                stdout=subprocess.PIPE, stderr=err, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
        port, deadline, seen = None, time.monotonic() + timeout, []
        try:
            while port is None:
                try:
                    line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
                except queue.Empty:
                    break
                seen.append(line)
                if "listening on http://127.0.0.1:" in line:
                    port = int(line.rsplit(":", 1)[1].split()[0])
            assert port is not None, f"no 'listening on' line: {seen}, {log.read_text()[-2000:]}"
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def iat_server(iat_run, tmp_path_factory, cache_dir):
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with started_server([str(iat_run), "--cache-dir", str(cache_dir), "--body-timeout", "1",
                         "--max-n", "500"], log) as port:
        yield port, log


def cli_rows(argv: list[str]) -> list[dict]:
    """What `deepcf.recommend ARGV` shows, as the service's items (blank -> None)."""
    from deepcf.recommend import main

    return [{"rank": r["rank"], "movie_id": r["movie_id"], "title": r["title"],
             "predicted_rating": None if r["predicted_rating"] == "" else r["predicted_rating"],
             "score": None if r["score"] == "" else r["score"]} for r in main(argv)]


def new_user_csv(path: Path, uid: int = 5000) -> Path:
    path.write_text("userId,movieId,rating\n"
                    + "".join(f"{uid},{r['movie_id']},{r['rating']}\n" for r in NEW_USER))
    return path


# -- cached codes and the fold-in ----------------------------------------------------------------
def test_cached_codes_predict_what_the_onnx_forward_predicts(iat_run):
    from deepcf.serving.runs import load_model, run_datamodule
    from deepcf.serving.scoring import UserScores, densify

    scorer, card = load_model(iat_run / "model.onnx")
    codes = card.codes
    assert codes is not None and codes.k == 500 and codes.items.shape[0] == len(card.item_ids)
    train = run_datamodule(iat_run).split.train
    XT = train.T.tocsr()  # the model's rows: movies
    movies = np.arange(0, XT.shape[0], 7)
    onnx = scorer(densify(XT, movies))
    np.testing.assert_allclose(codes.model_rows(movies), onnx, atol=2e-4, rtol=0)
    users = np.arange(0, train.shape[0], 11)
    fast = UserScores(scorer, train, "item", 256, codes).block(users)
    dense = UserScores(scorer, train, "item", 256).block(users)  # every movie through ONNX
    np.testing.assert_allclose(fast, dense, atol=2e-4, rtol=0)


@pytest.mark.parametrize("net_name,options", [
    ("autoencoder", {"hidden": [16, 8], "activation": "selu", "residual": "bias"}),
    ("autoencoder", {"hidden": [12], "activation": "sigmoid", "residual": "none"}),
    ("kernel", {"hidden": [10, 6], "residual": "target"}),
])
def test_every_item_row_net_splits_into_codes_and_output_layer(net_name, options):
    """The codes (`item_codes`) of an untrained, perturbed net predict its dense forward."""
    import scipy.sparse as sp
    import torch

    from deepcf.models.autoencoder import AutoEncoder
    from deepcf.models.kernel import KernelNet
    from deepcf.serving.export import item_codes

    rng = np.random.default_rng(3)
    X = sp.random(40, 25, density=0.2, format="csr", random_state=4, dtype=np.float32)
    X.data = rng.integers(1, 6, X.nnz).astype(np.float32)
    torch.manual_seed(0)
    net = {"autoencoder": AutoEncoder, "kernel": KernelNet}[net_name].build(25, **options)
    net.fit_data(X)
    with torch.no_grad():  # the residual's output layer starts at zero: give it weights
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    codes = item_codes(net, X, l2=10.0)
    with torch.no_grad():
        dense = net.eval()(torch.from_numpy(X.toarray())).numpy()
    np.testing.assert_allclose(codes.model_rows(np.arange(40)), dense, atol=1e-5, rtol=0)
    assert codes.ridge == 5.0
    nonlinear = AutoEncoder.build(25, hidden=[8], linear_last=False)
    assert item_codes(nonlinear, X) is None  # its outputs are not linear in the codes


def test_fold_in_of_training_users_is_close_to_the_trained_model(iat_run):
    """100 training users folded in from their training ratings alone: on their held-out
    ratings the fold-in beats the bias baseline and is within 0.03 of the trained model."""
    from deepcf.serving.runs import load_model, run_datamodule
    from deepcf.study.baselines import fit_biases

    _, card = load_model(iat_run / "model.onnx")
    codes, split = card.codes, run_datamodule(iat_run).split
    train, test = split.train.tocsr(), split.test.tocsr()
    pool = np.flatnonzero((np.diff(test.indptr) > 0) & (np.diff(train.indptr) > 0))
    users = np.sort(np.random.default_rng(0).choice(pool, 100, replace=False))
    T = test[users].tocoo()
    movies, who = T.col, users[T.row]

    def rmse(pred):
        pred = np.clip(pred, card.rating_min, card.rating_max)
        return math.sqrt(float(np.mean((pred - T.data) ** 2)))

    W, b = codes.fold_in(train[users])
    folded = rmse(np.einsum("nk,nk->n", codes.items[movies], W[T.row]) + b[T.row]
                  + codes.item_base[movies])
    trained = rmse(codes.at(movies, who))
    mu, b_u, b_i = fit_biases(train)
    bias = rmse(mu + b_u[who] + b_i[movies])
    assert folded < bias, (folded, bias)
    assert abs(folded - trained) <= 0.03, (folded, trained)
    # and the fold-in really fits: the trained rows are not what it returns
    assert not np.allclose(W, codes.user_weights[users])


def test_recommend_takes_a_new_user_on_an_item_row_run(iat_run, tmp_path, capsys):
    rows = cli_rows(["--model", str(iat_run / "model.onnx"), "--ratings",
                     str(new_user_csv(tmp_path / "new.csv")), "--user", "5000", "-n", "5"])
    out = capsys.readouterr().out
    assert "user 5000 (4 ratings): top 5 unseen movies, predicted by the model" in out
    assert len(rows) == 5 and not {50, 181, 172, 1} & {r["movie_id"] for r in rows}
    assert all(1 <= r["predicted_rating"] <= 5 for r in rows)


def test_evaluate_reads_the_codes_and_matches_training(iat_run):
    from deepcf.serving.evaluate import evaluate_run

    r = evaluate_run(iat_run)
    assert abs(r["rating"]["rmse"] - r["training_test_rmse"]) < 1e-4


def test_the_server_imports_nothing_of_training(iat_server):
    _, log = iat_server  # the server runs with -X importtime: every import is on its stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in log.read_text().splitlines()
                if line.startswith("import time:")}
    assert {"deepcf.serving.service", "deepcf.serving.codes", "fastapi"} <= imported
    assert not {m for m in imported if m.startswith("deepcf.training")}


# -- the service, over HTTP ----------------------------------------------------------------------
def test_health_and_model(iat_server):
    port, _ = iat_server
    assert request(port, "GET", "/health") == (200, {"status": "ok"})
    status, info = request(port, "GET", "/model")
    assert status == 200
    assert info["experiment"] == "i_autorec_target" and info["rows"] == "movies"
    assert info["score_kind"] == "rating" and info["rating_range"] == [1.0, 5.0]
    assert info["shape"] == {"users": 943, "movies": 1682}
    assert info["training_metrics"]["test/rmse"] > 0 and info["trained_at"]
    assert info["item_codes_bytes"] == (1682 + 943) * 501 * 4


def test_recommend_known_and_new_user_equal_the_cli(iat_server, iat_run, tmp_path):
    port, _ = iat_server
    status, known = request(port, "POST", "/recommend", {"user": 196, "n": 10})
    assert status == 200 and known["basis"] == "model" and known["user_id"] == 196
    assert known["items"] == cli_rows([str(iat_run), "--user", "196", "-n", "10"])
    assert known["n_ratings"] == 39 and known["ranked_by"] == "ranked by predicted rating"

    status, new = request(port, "POST", "/recommend",
                          {"ratings": NEW_USER + [{"movie_id": 999999, "rating": 3}], "n": 10})
    assert status == 200 and new["user_id"] is None and new["n_ratings"] == 4
    assert new["ignored_movie_ids"] == [999999]
    assert new["items"] == cli_rows(["--model", str(iat_run / "model.onnx"), "--ratings",
                                     str(new_user_csv(tmp_path / "new.csv")), "--user", "5000",
                                     "-n", "10"])
    status, corrected = request(port, "POST", "/recommend", {"user": 196, "pop_beta": 0.5})
    assert status == 200
    assert corrected["items"] == cli_rows([str(iat_run), "--user", "196", "--pop-beta", "0.5"])


def test_predict_reads_the_same_scores(iat_server):
    port, _ = iat_server
    _, recs = request(port, "POST", "/recommend", {"user": 196, "n": 5})
    movies = [r["movie_id"] for r in recs["items"]]
    status, pred = request(port, "POST", "/predict", {"user": 196, "movies": movies})
    assert status == 200
    assert [p["predicted_rating"] for p in pred["predictions"]] == [
        r["predicted_rating"] for r in recs["items"]]
    status, pred = request(port, "POST", "/predict", {"ratings": NEW_USER, "movies": [50, 98]})
    assert status == 200 and [p["movie_id"] for p in pred["predictions"]] == [50, 98]
    assert all(1 <= p["predicted_rating"] <= 5 for p in pred["predictions"])


BAD = [
    # (body or raw bytes, headers, status, a piece of the message)
    (b'{"user": 196,', None, 400, "malformed JSON"),
    (b"", None, 400, "empty request body"),
    ({"user": 196}, {"Content-Type": "text/plain"}, 415, "application/json"),
    ({"user": 99999}, None, 404, "unknown user id 99999"),
    ({}, None, 422, 'give "user"'),
    ({"user": 196, "ratings": NEW_USER}, None, 422, "not both"),
    ({"ratings": []}, None, 422, "the list is empty"),
    ({"ratings": [{"movie_id": 50, "rating": 9}]}, None, 422, "outside the rating range"),
    (b'{"ratings": [{"movie_id": 50, "rating": NaN}]}', None, 422, "outside the rating range"),
    ({"ratings": [{"movie_id": 50, "rating": 3}, {"movie_id": 50, "rating": 4}]}, None, 422,
     "rated twice"),
    ({"ratings": [{"movie_id": 999999, "rating": 3}]}, None, 422, "no rating of a movie"),
    ({"user": 196, "n": 0}, None, 422, "n=0 must be in 1..500"),
    ({"user": 196, "n": 10**12}, None, 422, "must be in 1..500"),
    ({"user": 10**30}, None, 422, "user:"),
    ({"user": "196"}, None, 422, "user: Input should be a valid integer"),
    ({"user": 196, "pop_beta": -1}, None, 422, "pop_beta"),
    ({"user": 196, "colour": "red"}, None, 422, "colour"),
    ([196], None, 422, "body"),
]


@pytest.mark.parametrize("body,headers,status,text", BAD,
                         ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_a_bad_request_gets_a_clear_4xx(iat_server, body, headers, status, text):
    port, _ = iat_server
    raw = body if isinstance(body, bytes) else None
    got, answer = request(port, "POST", "/recommend", None if raw is not None else body,
                          headers, raw=raw)
    assert got == status and text in answer["error"], answer
    assert "\n" not in answer["error"]


def test_predict_and_paths_bad_requests(iat_server):
    port, _ = iat_server
    status, answer = request(port, "POST", "/predict", {"user": 196, "movies": [50, 999999]})
    assert status == 422 and "unknown movie id 999999" in answer["error"]
    assert request(port, "POST", "/predict", {"user": 196, "movies": []})[0] == 422
    assert request(port, "GET", "/recommend")[0] == 405
    assert request(port, "GET", "/nowhere")[0] == 404


def test_a_big_or_slow_body_is_refused_not_waited_for(iat_server):
    port, _ = iat_server
    status, answer = request(port, "POST", "/recommend", raw=b" " * (2 << 20))
    assert status == 413 and "over the limit" in answer["error"]
    with socket.create_connection((HOST, port), timeout=30) as s:  # promises 100 bytes, sends 9
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"user\": ")
        t0 = time.monotonic()
        reply = s.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 408") and time.monotonic() - t0 < 20


def test_a_concurrent_burst_gets_the_sequential_answers(iat_server):
    port, log = iat_server
    users = [196, 1, 22, 244, 305, 6, 62, 286]
    bodies = [{"user": u, "n": 10} for u in users] + [{"ratings": NEW_USER, "n": 10}]
    alone = [request(port, "POST", "/recommend", b)[1] for b in bodies]
    before = log.read_text().count("POST /recommend")
    deadline = time.monotonic() + 120

    def client(k: int) -> list[tuple[int, dict, dict]]:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        out = []
        try:
            for i in range(12):
                if time.monotonic() > deadline:
                    break
                j = (k + i) % len(bodies)
                status, answer = request(port, "POST", "/recommend", bodies[j], conn=conn)
                out.append((status, answer, alone[j]))
        finally:
            conn.close()
        return out

    with ThreadPoolExecutor(16) as pool:
        results = [r for part in pool.map(client, range(16)) for r in part]
    assert len(results) == 16 * 12
    for status, answer, expected in results:
        assert status == 200
        assert [r["movie_id"] for r in answer["items"]] == [
            r["movie_id"] for r in expected["items"]]
        assert np.allclose([r["score"] for r in answer["items"]],
                           [r["score"] for r in expected["items"]], atol=1e-3)
    time.sleep(0.5)  # the log lines of the last answers
    assert log.read_text().count("POST /recommend") - before == len(results)
    _, info = request(port, "GET", "/model")
    assert info["requests_scored"] > info["batches"]  # some requests were scored together


# -- a rows=users model, in-process server thread with a bearer token ----------------------------
@pytest.fixture(scope="module")
def tiny_server(tiny_run):
    from deepcf.serving import service

    served = service.load_served(tiny_run)
    sock = service.bind(HOST, 0)
    srv = service.server(service.asgi_app(served, token="s3cret"))
    t = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield sock.getsockname()[1], served
    srv.should_exit = True
    t.join(timeout=20)


def test_token_and_rows_of_users_equal_the_cli(tiny_server, tiny_run, tmp_path):
    port, served = tiny_server
    auth = {"Authorization": "Bearer s3cret"}
    uid = int(served.data.user_ids[3])
    assert request(port, "GET", "/health")[0] == 200  # no token for the load balancer
    status, answer = request(port, "POST", "/recommend", {"user": uid})
    assert status == 401 and "bearer token" in answer["error"]
    assert request(port, "GET", "/model", headers={"Authorization": "Bearer nope"})[0] == 401
    status, known = request(port, "POST", "/recommend", {"user": uid, "n": 5}, auth)
    assert status == 200 and known["items"] == cli_rows([str(tiny_run), "--user", str(uid),
                                                          "-n", "5"])
    movies = [int(m) for m in served.card.item_ids[:3]]
    ratings = [{"movie_id": m, "rating": r} for m, r in zip(movies, (5, 3, 4))]
    f = tmp_path / "new.csv"
    f.write_text("userId,movieId,rating\n" + "".join(
        f"777777,{x['movie_id']},{x['rating']}\n" for x in ratings))
    status, new = request(port, "POST", "/recommend", {"ratings": ratings, "n": 5}, auth)
    assert status == 200 and new["items"] == cli_rows(
        ["--model", str(tiny_run / "model.onnx"), "--ratings", str(f), "--user", "777777",
         "-n", "5"])


def test_predict_refuses_a_ranking_model(tiny_server):
    import dataclasses

    from deepcf.serving.service import PredictRequest, RequestError, Served, resolve

    _, served = tiny_server
    ranking = Served(served.scorer, dataclasses.replace(served.card, score_kind="EDLAE score"),
                     served.data, served.X, movie_col=served.movie_col)
    with pytest.raises(RequestError) as e:
        resolve(ranking, "predict",
                PredictRequest(user=int(served.data.user_ids[0]), movies=[1]), 10)
    assert e.value.status == 422 and "ranking model" in e.value.message


def test_the_command_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    from deepcf.serve import main, read_token

    for argv, text in (([str(tmp_path / "nope")], "no such run dir"),
                       ([str(tmp_path), "--port", "70000"], "--port 70000"),
                       ([str(tmp_path), "--max-n", "0"], "--max-n"),
                       ([str(tmp_path), "--token-file", str(tmp_path / "none")], "--token-file")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("deepcf.serve: error: ") and text in err
        assert "\n" not in err
    (tmp_path / "token").write_text("s3cret\n")
    assert read_token(str(tmp_path / "token")) == "s3cret"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(Exception, match="empty"):
        read_token(str(tmp_path / "empty"))
