"""Chunked scoring: predicted ratings for users straight from a users x movies CSR.

Only a chunk of rows is ever dense (chunk x width float32), never the whole matrix, so scoring
works at 270,896 x 45,115 within a few GB. The ONNX model is the scorer of record; the PyTorch
net scores through the same interface for parity checks and the benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from deepcf.data.orientation import rows_are_items
from deepcf.errors import DeepCFError
from deepcf.serving.codes import ItemCodes, ItemItem

# the names of the ONNX graph's input (dense rating rows) and output (predictions)
INPUT, OUTPUT = "ratings", "predictions"


def densify(X: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """Rows of X as a dense float32 block (unrated entries 0), the model's input."""
    return X[rows].toarray().astype(np.float32, copy=False)


def densify_flat(idx, val, off, n_rows: int, width: int) -> np.ndarray:
    """The dense block of a flat (column ids, ratings, offsets) batch, as RowBatches serves it."""
    idx, val, off = (np.asarray(a) for a in (idx, val, off))
    counts = np.diff(np.append(off, len(idx)))
    dense = np.zeros((n_rows, width), np.float32)
    dense[np.repeat(np.arange(n_rows), counts), idx] = val
    return dense


class OnnxScorer:
    """onnxruntime session over the exported dense forward; `scorer(block) -> predictions`."""

    def __init__(self, path, threads: int = 0):
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import (
            Fail,
            InvalidArgument,
            InvalidGraph,
            InvalidProtobuf,
            NoSuchFile,
        )

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads  # 0: onnxruntime's default, one per physical core
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=["CPUExecutionProvider"])
        except (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile) as e:
            raise DeepCFError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0]})"
                              ) from None
        width = self.session.get_inputs()[0].shape[1]
        if not isinstance(width, int):
            raise DeepCFError(f"{path}: input width is not fixed ({width!r}); not a deepcf model")
        self.width, self.path = width, str(path)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: block})[0]


class TorchScorer:
    """The PyTorch net's dense forward (eager), same interface as OnnxScorer."""

    def __init__(self, net):
        import torch

        self.torch, self.net = torch, net.eval()
        self.width = net.width

    def __call__(self, block: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.net(self.torch.from_numpy(block)).numpy()


class UserScores:
    """Predicted ratings of users (rows of X, users x movies) for every movie, in chunks.

    orientation="user": a user's row is the model input. orientation="item": the model's rows are
    movies and its columns users. With the model's cached item codes (`codes`,
    deepcf.serving.codes) a user's scores are their output row against every movie's code: a
    model user's own row, a new user's folded in from their ratings in X. `model_users`: the
    model's index of each row of X, -1 for a user it never saw (default: row i < the model's
    users is model user i, the row order of deepcf.serving.runs.Ratings). A user-row model's
    cached item-item weights (`codes` an ItemItem) score the users' sparse rows, no dense row
    through the graph. Without codes (a
    sidecar exported before them) a user's scores are one column of the output over all movie
    rows, so each call runs every movie through the model once, and only model users can be
    scored.
    """

    def __init__(self, scorer, X: sp.csr_matrix, orientation: str = "user", chunk: int = 1024,
                 codes=None, model_users: np.ndarray | None = None):
        self.scorer, self.X, self.orientation, self.chunk = scorer, X, orientation, chunk
        self.n_movies = X.shape[1]
        items = rows_are_items(orientation)
        # the cache of this orientation: item codes for movie rows, item-item weights for users
        self.codes = codes if isinstance(codes, ItemItem) != items else None
        self.XT = X.T.tocsr() if items and codes is None else None
        if isinstance(self.codes, ItemCodes) and model_users is None:
            rows = np.arange(X.shape[0])
            model_users = np.where(rows < self.codes.n_users, rows, -1)
        self.model_users = model_users

    def block(self, users: np.ndarray) -> np.ndarray:
        """(len(users), n_movies) float32 predictions, unclipped."""
        if isinstance(self.codes, ItemItem):
            return self.codes.scores(self.X[users])
        if self.codes is not None:
            users = np.asarray(users)
            return self.codes.scores(*self.codes.user_rows(self.X, users,
                                                           self.model_users[users]))
        if self.XT is None:  # rows are users: a user's row is the model input
            return self.scorer(densify(self.X, users))
        out = np.empty((len(users), self.n_movies), np.float32)
        for s in range(0, self.n_movies, self.chunk):
            movies = np.arange(s, min(s + self.chunk, self.n_movies))
            out[:, movies] = self.scorer(densify(self.XT, movies))[:, users].T
        return out

    def chunks(self, users: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(users of the chunk, their scores) for `users` in order."""
        step = self.chunk
        if self.XT is not None:  # each block costs a full pass over the movies
            step = max(self.chunk, (256 << 20) // (4 * max(self.n_movies, 1)))
        for s in range(0, len(users), step):
            part = users[s : s + step]
            yield part, self.block(part)


def top_k_unseen(scores: np.ndarray, seen: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns per row after setting each row's `seen` columns to -inf (in place).

    Returns (movie indices, scores), best first; where a row has fewer than k unseen movies the
    tail is index -1 with score -inf.
    """
    n, width = scores.shape
    seen = seen.tocsr()
    scores[np.repeat(np.arange(n), np.diff(seen.indptr)), seen.indices] = -np.inf
    k = min(k, width)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx, vals = np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)
    idx[np.isneginf(vals)] = -1
    return idx, vals


def top_k_unseen_fast(scores: np.ndarray, seen: sp.csr_matrix, k: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """`top_k_unseen` by torch.topk over the rows (threaded), for `recommend --all`: at 45,115
    movies numpy's row-by-row argpartition is most of the scoring time. The same picks and
    order, except that tied scores may come in another order (the study's protocols keep
    `top_k_unseen`, whose tie order their published figures were measured with)."""
    import torch

    n, width = scores.shape
    seen = seen.tocsr()
    scores[np.repeat(np.arange(n), np.diff(seen.indptr)), seen.indices] = -np.inf
    k = min(k, width)
    with torch.inference_mode():
        vals, idx = torch.topk(torch.from_numpy(scores), k, dim=1, sorted=True)
    idx, vals = idx.numpy(), vals.numpy()
    idx[np.isneginf(vals)] = -1
    return idx, vals


def popular_unseen(item_count: np.ndarray, seen: np.ndarray, k: int) -> np.ndarray:
    """The k movies with the most training ratings that are not in `seen` (movie indices)."""
    order = np.argsort(-item_count, kind="stable")
    if len(seen):
        order = order[~np.isin(order, seen)]
    return order[:k]
