"""The HTTP service over a trained run: `deepcf-serve RUN_DIR` (deepcf.serve).

A JSON API on FastAPI (routing, request schemas, OpenAPI docs at /docs) served by uvicorn (the
ASGI server), with onnxruntime (rows=users models) or the model's cached item codes
(rows=movies, deepcf.serving.codes) doing the scoring, through the same functions as
`deepcf.recommend`: `UserScores` scores, `ranked` picks the top N and labels it.

Start-up loads the ONNX model, its sidecar and the run's ratings once (a request never reads
from disk):

- `GET /health`: `{"status": "ok"}` (no token needed: for load balancers);
- `GET /model`: what is served (net, experiment, orientation, score kind, rating range, data
  shape, training metrics, when it was trained and exported, how new users are scored, the
  memory of the cached codes);
- `POST /recommend`: `{"user": 196}` (a user of the run's data) or `{"ratings": [{"movie_id":
  50, "rating": 5}, ...]}` (a new user), with `n` (default 10) and `pop_beta` (default 0,
  scores / popularity^B); answers the top N unseen movies with ids, titles, scores and, for a
  rating model, predicted ratings, labelled as `deepcf.recommend` labels them;
- `POST /predict`: `{"user": 196, "movies": [50, 181]}` (or `ratings` instead of `user`): the
  predicted ratings of those movies (rating models only); a movie nobody rated in training, or
  a user without ratings, gets the training mean (the held-out protocol's fallback), labelled.

Requests that arrive while the scorer is busy are scored together in one call (one
onnxruntime run, or one product with the codes), then answered one by one; a short window
(`batch_window`) waits for requests already being read. Scores are computed in one worker
thread, so the event loop keeps reading and answering.

Bad requests get a 4xx with `{"error": "<one line>"}`: malformed JSON or an empty body 400, a
missing or wrong token 401, an unknown path 404, an unknown user id 404, a wrong method 405, a
body read slower than `body_timeout` 408, a body over `max_body` bytes 413, a content type
other than application/json 415, and 422 for a well-formed request that cannot be answered
(unknown or mistyped fields, `user` and `ratings` both or neither, ratings out of the rating
range or not finite, a movie rated twice, no rating of a known movie, `n` outside 1..`max_n`,
`pop_beta` negative or not finite, /predict on a ranking model or of movies the model does not
know). Ratings of movies the model does not know are ignored, and named in the answer's
`ignored_movie_ids` (a catalogue grows after training; the other ratings still count).
Each request is logged in one line (client, method, path, status, milliseconds, what).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import numpy as np
import scipy.sparse as sp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from deepcf.data.orientation import rows_are_items
from deepcf.data.split import implicit_matrix
from deepcf.errors import DeepCFError, UnknownUserError
from deepcf.serving.codes import ItemItem
from deepcf.serving.recommend import load_ratings, ranked, ranked_by
from deepcf.serving.runs import Ratings, best_metrics
from deepcf.serving.scoring import UserScores
from deepcf.serving.sidecar import ModelCard

log = logging.getLogger("deepcf.serve")


class RequestError(Exception):
    """A request the service answers with `status` and a one-line `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# -- what is served ------------------------------------------------------------------------------
@dataclass
class Served:
    """The model, its sidecar and the ratings it answers for, loaded once."""

    scorer: object
    card: ModelCard
    data: Ratings
    X: sp.csr_matrix  # data.X as the model's input (interactions when data.implicit)
    info: dict = field(default_factory=dict)
    movie_col: dict = field(default_factory=dict)  # raw movie id -> column

    rows: dict = field(default_factory=dict)  # raw user id -> row of data

    @property
    def n_model_users(self) -> int:
        return len(self.card.user_ids)

    def row_of(self, user: int) -> int:
        """The user's row of the served ratings (UnknownUserError as Ratings.rows_of)."""
        row = self.rows.get(user)
        return int(self.data.rows_of([user])[0]) if row is None else row


def load_served(run_dir=None, model=None, ratings=None, cache_dir: str | None = None,
                threads: int = 1) -> Served:
    """Load what `deepcf.recommend` loads for the same arguments, and describe it.

    `threads`: onnxruntime's intra-op threads and the BLAS threads of the codes' products (0:
    their defaults, one per core). A request's products are small (one user against the
    catalogue), and threads that wait on each other for them cost more than they save, above
    all on a busy machine: measured on 2 loaded cores, one user's codes product took 0.07 ms of
    CPU with one OpenBLAS thread and 4 ms with two."""
    if threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, "blas")
    scorer, card, data = load_ratings(run_dir, model, ratings, cache_dir, threads)
    if rows_are_items(card.orientation) and card.codes is None:
        raise DeepCFError(f"{scorer.path}: a model whose rows are movies is served from the item "
                          f"codes in its sidecar, and this sidecar has none: re-export it with "
                          f"`python -m deepcf.export RUN_DIR`")
    X = implicit_matrix(data.X, card.implicit or None)
    served = Served(scorer, card, data, X,
                    movie_col={int(m): j for j, m in enumerate(card.item_ids)},
                    rows={int(u): j for j, u in enumerate(data.user_ids)})
    served.info = describe(served, Path(scorer.path), None if run_dir is None else Path(run_dir))
    if len(data.user_ids):  # warm up (first-call allocations), so no request pays for it
        score_jobs(served, [Job("recommend", 0, int(data.user_ids[0]))])
        score_jobs(served, [Job("recommend", 0, int(data.user_ids[0])),
                            Job("recommend", None, None, np.array([0], np.int32),
                                np.array([card.rating_max], np.float32))])
    return served


def _when(path: Path) -> str | None:
    if not path.exists():
        return None
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(
        timespec="seconds")


def describe(s: Served, model: Path, run_dir: Path | None) -> dict:
    """The answer of GET /model."""
    card = s.card
    net = experiment = None
    metrics: dict = {}
    if run_dir is not None:
        metrics = best_metrics(run_dir)
        experiment = metrics.get("experiment")
        conf = run_dir / "config_resolved.yaml"
        if conf.exists():
            import yaml

            try:
                cfg = yaml.safe_load(conf.read_text()) or {}
                net = (cfg.get("model") or {}).get("net")
                experiment = experiment or cfg.get("task_name")
            except yaml.YAMLError:
                pass
    items = rows_are_items(card.orientation)
    codes = card.codes
    return {
        "model": str(model), "run_dir": None if run_dir is None else str(run_dir),
        "net": net, "experiment": experiment,
        "orientation": card.orientation,
        "rows": "movies" if items else "users",
        "score_kind": card.score_kind, "rates": card.rates, "ranked_by": ranked_by(card),
        "rating_range": [card.rating_min, card.rating_max], "train_mean": card.train_mean,
        "implicit": card.implicit or None,
        "shape": {"users": len(card.user_ids), "movies": len(card.item_ids)},
        "data": {"source": s.data.source, "users": int(s.data.X.shape[0]),
                 "ratings": int(s.data.X.nnz)},
        "new_users": ("folded in: ridge regression of the user's output row on the item codes "
                      "of the movies they rated" if items else
                      "scored from their ratings by the cached item-item weights"
                      if isinstance(codes, ItemItem) else
                      "scored by the model's forward pass over their ratings"),
        "item_codes_bytes": None if codes is None else int(codes.nbytes),
        "training_metrics": {k: v for k, v in metrics.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)
                             and math.isfinite(v)},
        "trained_at": _when(run_dir / "metrics.json") if run_dir is not None else None,
        "exported_at": _when(model),
    }


# -- requests ------------------------------------------------------------------------------------
@dataclass
class Job:
    """One request's user, resolved: a data row (known user) or the ratings of a new one."""

    kind: str  # "recommend" | "predict"
    row: int | None  # the user's row of the served ratings, None for a new user
    user_id: int | None
    new_cols: np.ndarray | None = None  # a new user's rated columns and ratings
    new_vals: np.ndarray | None = None
    n: int = 10
    pop_beta: float = 0.0
    movies: np.ndarray | None = None  # /predict: the columns asked for
    ignored: list[int] = field(default_factory=list)


def resolve(s: Served, kind: str, body, max_n: int) -> Job:
    """A validated request (RecommendRequest or PredictRequest) as a Job; RequestError when it
    cannot be answered."""
    card = s.card
    user, ratings = body.user, body.ratings
    if (user is None) == (ratings is None):
        raise RequestError(422, ("give \"user\" or \"ratings\", not both" if user is not None
                                 else "give \"user\" (a known user id) or \"ratings\" (a new "
                                      "user's list of {\"movie_id\", \"rating\"})"))
    job = Job(kind, None, user)
    if kind == "recommend":
        n, beta = body.n, body.pop_beta
        if not 1 <= n <= max_n:
            raise RequestError(422, f"n={n} must be in 1..{max_n}")
        if not (math.isfinite(beta) and beta >= 0):
            raise RequestError(422, f"pop_beta={beta} must be a finite number >= 0")
        job.n, job.pop_beta = int(n), float(beta)
    else:
        if not card.rates:
            raise RequestError(422, f"/predict answers predicted ratings, and this model's "
                                    f"outputs are {card.score_kind}s (a ranking model, not "
                                    f"ratings): use /recommend")
        movies = body.movies
        if not 1 <= len(movies) <= len(card.item_ids):
            raise RequestError(422, f"movies: give 1..{len(card.item_ids)} movie ids, got "
                                    f"{len(movies)}")
        unknown = [m for m in movies if m not in s.movie_col]
        if unknown:
            raise RequestError(422, f"movies: unknown movie id {unknown[0]}"
                                    + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1
                                       else "") + ": the model was not trained on it")
        job.movies = np.array([s.movie_col[m] for m in movies], np.int64)
    if user is not None:
        try:
            job.row = s.row_of(user)
        except UnknownUserError as e:
            raise RequestError(404, f"{e}; send the user's \"ratings\" instead") from None
        return job
    if not ratings:
        raise RequestError(422, "ratings: the list is empty; give at least one rating")
    if len(ratings) > len(card.item_ids):
        raise RequestError(422, f"ratings: {len(ratings)} ratings, more than the "
                                f"{len(card.item_ids)} movies the model knows")
    lo, hi = card.rating_min, card.rating_max
    cols, vals, seen = [], [], set()
    for r in ratings:
        m, v = r.movie_id, r.rating
        if not (math.isfinite(v) and lo <= v <= hi):
            raise RequestError(422, f"ratings: movie {m} rated {v}, outside the rating range "
                                    f"{lo:g}..{hi:g}")
        if m in seen:
            raise RequestError(422, f"ratings: movie {m} is rated twice")
        seen.add(m)
        if m in s.movie_col:
            cols.append(s.movie_col[m])
            vals.append(v)
        else:
            job.ignored.append(m)
    if not cols:
        raise RequestError(422, "ratings: no rating of a movie the model knows (ignored: "
                                + ", ".join(map(str, job.ignored[:10]))
                                + (" ..." if len(job.ignored) > 10 else "")
                                + "); nothing to score the user from")
    order = np.argsort(cols)
    job.new_cols = np.asarray(cols, np.int32)[order]
    job.new_vals = np.asarray(vals, np.float32)[order]
    return job


def score_jobs(s: Served, jobs: list[Job]) -> list[dict]:
    """Answer a batch of jobs with one scoring call (`UserScores.block` over all their users)
    and one ranking (`ranked`) per distinct (n, pop_beta)."""
    card, D = s.card, s.data.X
    idx, val, ptr = [], [], [0]
    for j in jobs:  # the users' known ratings, in job order, cut from the CSR's arrays
        if j.row is not None:
            lo, hi = D.indptr[j.row], D.indptr[j.row + 1]
            idx.append(D.indices[lo:hi])
            val.append(D.data[lo:hi])
        else:
            idx.append(j.new_cols)
            val.append(j.new_vals)
        ptr.append(ptr[-1] + len(idx[-1]))
    seen = sp.csr_matrix((np.concatenate(val).astype(np.float32, copy=False),
                          np.concatenate(idx), np.asarray(ptr)),
                         shape=(len(jobs), len(card.item_ids)))
    X = implicit_matrix(seen, card.implicit or None)  # the model's input, as in training
    model_users = np.array([j.row if j.row is not None and j.row < s.n_model_users else -1
                            for j in jobs])
    block = UserScores(s.scorer, X, card.orientation, len(jobs), card.codes,
                       model_users).block(np.arange(len(jobs)))
    out: list[dict | None] = [None] * len(jobs)
    groups: dict = {}
    for i, j in enumerate(jobs):
        if j.kind == "recommend":
            groups.setdefault((j.n, j.pop_beta), []).append(i)
        else:
            out[i] = answer_predict(card, j, block[i], ptr[i + 1] - ptr[i])
    for (n, beta), rows in groups.items():
        sub = seen if len(rows) == len(jobs) else seen[rows]
        for i, recs in zip(rows, ranked(card, block[rows], sub,
                                        [jobs[i].user_id for i in rows], n, beta)):
            out[i] = answer_recommend(card, jobs[i], recs, ptr[i + 1] - ptr[i])
    return out


def answer_recommend(card: ModelCard, job: Job, recs: list[dict], n_ratings: int) -> dict:
    basis = "model" if n_ratings else "popularity"
    return {
        "user_id": job.user_id, "n_ratings": n_ratings, "basis": basis,
        "ranked_by": (ranked_by(card) if basis == "model" else
                      "popularity (the user has no ratings): most-rated movies"),
        "pop_beta": job.pop_beta,
        "items": [{"rank": r["rank"], "movie_id": r["movie_id"], "title": r["title"],
                   "predicted_rating": None if r["predicted_rating"] == "" else
                   r["predicted_rating"],
                   "score": None if r["score"] == "" else r["score"]} for r in recs],
        "ignored_movie_ids": job.ignored,
    }


def answer_predict(card: ModelCard, job: Job, output: np.ndarray, n_ratings: int) -> dict:
    """Predicted ratings at the asked movies: the output clipped to the rating range, the
    training mean where the movie has no training rating or the user no rating at all."""
    preds = []
    for col in job.movies:
        cold = n_ratings == 0 or card.item_train_count[col] == 0
        value = card.train_mean if cold else float(
            np.clip(output[col], card.rating_min, card.rating_max))
        preds.append({"movie_id": int(card.item_ids[col]),
                      "title": "" if card.titles is None else str(card.titles[col]),
                      "predicted_rating": round(float(value), 3),
                      "basis": "training mean" if cold else "model"})
    return {"user_id": job.user_id, "n_ratings": n_ratings, "predictions": preds,
            "ignored_movie_ids": job.ignored}


# -- batching ------------------------------------------------------------------------------------
class Batcher:
    """Scores queued jobs together in one worker thread.

    Whatever is queued when the worker is free goes into one call; if requests are still being
    read (`arriving`), it waits up to `window` seconds for them. At concurrency 1 nothing
    waits."""

    def __init__(self, work: Callable[[list[Job]], list[dict]], window: float = 0.002,
                 max_batch: int = 64):
        self.work, self.window, self.max_batch = work, window, max_batch
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="deepcf-score")
        self.queue: asyncio.Queue | None = None
        self.arriving = 0
        self.batches = self.jobs = 0  # counters, for /model and the bench
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, job: Job) -> dict:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((job, fut))
        return await fut

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.window
            while len(items) < self.max_batch:
                if not self.queue.empty():
                    items.append(self.queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if self.arriving <= 0 or left <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            self.batches += 1
            self.jobs += len(items)
            try:
                results = await loop.run_in_executor(self.executor, self.work,
                                                     [job for job, _ in items])
            except Exception as e:  # a bug, not a bad request: every job of the batch gets it
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), res in zip(items, results):
                if not fut.done():
                    fut.set_result(res)


# -- the app -------------------------------------------------------------------------------------
_STRICT = ConfigDict(extra="forbid", strict=True)


# ids are int64 in the data: larger integers are refused by the schema (422), not overflowed
Id = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class Rating(BaseModel):
    model_config = _STRICT
    movie_id: Id = Field(description="raw movie id, as in the ratings file")
    rating: float = Field(description="on the model's rating scale (GET /model)")


class RecommendRequest(BaseModel):
    model_config = _STRICT
    user: Id | None = Field(None, description="a user id of the served ratings")
    ratings: list[Rating] | None = Field(None, description="a new user's ratings")
    n: int = Field(10, description="movies to answer")
    pop_beta: float = Field(0.0, description="rank by score / popularity^pop_beta")


class PredictRequest(BaseModel):
    model_config = _STRICT
    user: Id | None = Field(None, description="a user id of the served ratings")
    ratings: list[Rating] | None = Field(None, description="a new user's ratings")
    movies: list[Id] = Field(description="movie ids to predict ratings for")


def _body(schema) -> dict:
    """The OpenAPI request body of an endpoint that validates its JSON itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": schema.model_json_schema()}}}}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(errors) -> tuple[int, str]:
    """(status, one line) of FastAPI's request validation errors."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        msg = str(first.get("msg", "")).removeprefix("Invalid JSON: ")
        return 400, f"malformed JSON: {msg}"
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc) or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, f"{where}: {first.get('msg')}{more}"


def create_app(served: Served, *, max_n: int = 1000, batch_window: float = 0.002,
               max_batch: int = 64):
    """The FastAPI app answering for `served`."""
    batcher = Batcher(lambda jobs: score_jobs(served, jobs), batch_window, max_batch)

    @asynccontextmanager
    async def lifespan(app):
        # what start-up loaded (numpy, scipy, torch through the data module: ~0.5M objects)
        # lives as long as the process: out of the collector's sight, so that no request waits
        # on a full collection of it (about a second on 2 busy cores)
        gc.collect()
        gc.freeze()
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="deepcf", lifespan=lifespan,
                  description="Recommendations and predicted ratings of a deepcf model")
    app.state.served, app.state.batcher = served, batcher

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _error(*_validation_message(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        return _error(exc.status, exc.message)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # a bug: logged with its traceback
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); see the service's log")

    async def answer(request: Request, kind: str, schema) -> JSONResponse:
        batcher.arriving += 1
        try:
            try:
                body = schema.model_validate_json(await request.body())
            except ValidationError as e:
                raise RequestError(*_validation_message(e.errors())) from None
            job = resolve(served, kind, body, max_n)
        finally:
            batcher.arriving -= 1
        request.state.what = (f"user {job.user_id}" if job.row is not None else
                              f"new user, {len(job.new_cols)} ratings")
        return JSONResponse(await batcher.submit(job))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/model")
    async def model():
        return {**served.info, "batches": batcher.batches, "requests_scored": batcher.jobs}

    @app.post("/recommend", openapi_extra=_body(RecommendRequest))
    async def recommend(request: Request):
        """Top-N unseen movies of a known user (`user`) or a new one (`ratings`)."""
        return await answer(request, "recommend", RecommendRequest)

    @app.post("/predict", openapi_extra=_body(PredictRequest))
    async def predict(request: Request):
        """Predicted ratings of `movies` for a known user or a new one (rating models)."""
        return await answer(request, "predict", PredictRequest)

    return app


class Guard:
    """ASGI middleware in front of the app: bearer token, content type, body size and read
    time, and one log line per request. The body is read here, whole and bounded, so the app
    never waits on a slow client and never sees more than `max_body` bytes."""

    def __init__(self, app, *, token: str | None = None, max_body: int = 1 << 20,
                 body_timeout: float = 10.0):
        self.app, self.token = app, token
        self.max_body, self.body_timeout = max_body, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status, error = [0], [""]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif status[0] >= 400 and message["type"] == "http.response.body":
                error[0] = message.get("body", b"")[:300].decode("utf-8", "replace")
            await send(message)

        try:
            problem = self.check(scope)
            if problem is None and scope["method"] == "POST":
                body, problem = await self.read_body(receive)
                if body is not None:
                    receive = _replay(body, receive)
            if problem is not None:
                if problem[0] == 0:  # the client went away
                    return
                await _error(*problem[:2], problem[2] if len(problem) > 2 else None)(
                    scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            what = (scope.get("state") or {}).get("what", "") or error[0]
            log.info("%s:%s %s %s %d %.1fms%s", client[0], client[1], scope["method"],
                     scope["path"], status[0], 1000 * (time.perf_counter() - t0),
                     f" {what}" if what else "")

    def check(self, scope) -> tuple | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        if self.token is not None and scope["path"] != "/health":
            given = headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                                     self.token.encode()):
                return (401, "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                        {"WWW-Authenticate": "Bearer"})
        if scope["method"] != "POST":
            return None
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return (415, f"Content-Type must be application/json, got "
                         f"{ctype or 'none'}")
        length = headers.get("content-length")
        if length is not None:
            try:
                if int(length) > self.max_body:
                    return 413, f"request body of {int(length)} bytes is over the limit of " \
                                f"{self.max_body}"
            except ValueError:
                return 400, f"Content-Length {length!r} is not a number"
        return None

    async def read_body(self, receive) -> tuple[bytes | None, tuple | None]:
        chunks, size = [], 0
        deadline = time.monotonic() + self.body_timeout
        while True:
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.0))
            except asyncio.TimeoutError:
                return None, (408, f"request body not received within {self.body_timeout:g} s")
            if message["type"] == "http.disconnect":
                return None, (0, "")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None, (413, f"request body over the limit of {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not body.strip():
            return None, (400, "empty request body: expected a JSON object")
        return body, None


def _replay(body: bytes, receive):
    """A receive that hands over the body read already, then the connection's own events."""
    sent = [False]

    async def replay():
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def asgi_app(served: Served, *, token: str | None = None, max_body: int = 1 << 20,
             body_timeout: float = 10.0, **app_options):
    """The whole ASGI application: the Guard in front of the FastAPI app."""
    return Guard(create_app(served, **app_options), token=token, max_body=max_body,
                 body_timeout=body_timeout)


def bind(host: str = "127.0.0.1", port: int = 8000):
    """A listening socket (port 0: a free one), so the port is known before serving."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only then, and
    # without it a keep-alive client waits out a delayed ACK (~40 ms) on every answer
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise DeepCFError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def server(app, sock=None, **uvicorn_options):
    """A uvicorn Server for `app` (run it with `server.run(sockets=[sock])`)."""
    import uvicorn

    options = dict(log_level="warning", access_log=False, timeout_keep_alive=5,
                   timeout_graceful_shutdown=5, lifespan="on")
    options.update(uvicorn_options)
    return uvicorn.Server(uvicorn.Config(app, **options))


def memory_note(s: Served) -> str:
    """What the start-up caches cost in memory, in words."""
    X = s.data.X
    data_mb = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 1e6
    note = f"ratings {data_mb:.1f} MB"
    c = s.card.codes
    if isinstance(c, ItemItem):
        k = len(c.items)
        note += f", item-item weights {c.nbytes / 1e6:.1f} MB ({k} x {k} movies, float32)"
    elif c is not None:
        note += (f", item codes {c.nbytes / 1e6:.1f} MB ({c.items.shape[0]} movies x {c.k} "
                 f"+ {c.n_users} users x {c.k}, float32)")
    return note
