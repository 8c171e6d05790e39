"""The peers of `make accuracy`: well-kept libraries that researchers compare with, fitted on the
same splits as deepcf's rows (the optional extra `pip install deepcf[peers]`).

- rating protocol: Surprise (`scikit-surprise`) SVD, SVD++ and KNNBaseline, fitted on the
  training ratings; a test rating is Surprise's own estimate (`algo.predict`), and the
  protocol's declared fallback replaces it where the user or the movie is cold, as in every
  other rating row;
- top-N protocol: `implicit`'s ALS (Hu, Koren & Volinsky 2008) and BPR (Rendle et al. 2009) on
  the binary interactions; a user's scores are their factors against every movie's.

Each fit function reads its library at call time: where it is not installed, the row is a
measured failure naming the extra, and the other rows still run. A row's label says the
library and its installed version (`library`, from importlib.metadata).
"""

from __future__ import annotations

from importlib import metadata

import numpy as np
import scipy.sparse as sp

from deepcf.errors import ConfigError
from deepcf.study.fits import _Fitted

SURPRISE, IMPLICIT = "scikit-surprise", "implicit"


def version(dist: str) -> str | None:
    """The installed version of distribution `dist`, None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def library(dist: str) -> str:
    """`dist` and its installed version, as a row's label shows it."""
    v = version(dist)
    return f"{dist} {v}" if v else f"{dist}, not installed"


def _need(dist: str, module: str):
    """The library's module, or one line saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{dist} is not importable ({e}): pip install 'deepcf[peers]'"
                          ) from None


# -- Surprise: the rating protocol -------------------------------------------------------------
SURPRISE_ALGOS = {"svd": "SVD", "svdpp": "SVDpp", "knn_baseline": "KNNBaseline"}


def _trainset(train: sp.csr_matrix, rating_min: float, rating_max: float):
    surprise = _need(SURPRISE, "surprise")
    import pandas as pd

    X = train.tocoo()
    df = pd.DataFrame({"user": X.row.astype(np.int64), "item": X.col.astype(np.int64),
                       "rating": X.data.astype(np.float64)})
    reader = surprise.Reader(rating_scale=(float(rating_min), float(rating_max)))
    return surprise, surprise.Dataset.load_from_df(df, reader).build_full_trainset()


def surprise_fit(algo: str):
    """The rating fit function of Surprise's `algo` ("svd", "svdpp", "knn_baseline"); params
    are the algorithm's keyword arguments (KNNBaseline: `k`, and `sim`/`user_based` for its
    sim_options); SVD and SVD++ are seeded by the split seed."""
    if algo not in SURPRISE_ALGOS:
        raise ConfigError(f"Surprise algorithm {algo!r} is not one of "
                          f"{', '.join(SURPRISE_ALGOS)}")

    def fit(train, val, params, task):
        surprise, trainset = _trainset(train, task.rating_min, task.rating_max)
        params = dict(params)
        cls = getattr(surprise, SURPRISE_ALGOS[algo])
        if algo == "knn_baseline":
            sim = {"name": params.pop("sim", "pearson_baseline"),
                   "user_based": bool(params.pop("user_based", True))}
            model = cls(sim_options=sim, verbose=False, **params)
        else:
            model = cls(random_state=int(task.seed), **params)
        model.fit(trainset)

        def predict(rows, cols):
            # clip=False: the protocol clips every row's predictions the same way
            return np.fromiter((model.predict(int(u), int(i), clip=False).est
                                for u, i in zip(rows, cols)), np.float64, count=len(rows))

        return _Fitted(predict)

    return fit


# -- implicit: the top-N protocol --------------------------------------------------------------
IMPLICIT_ALGOS = {"als": ("implicit.als", "AlternatingLeastSquares"),
                  "bpr": ("implicit.bpr", "BayesianPersonalizedRanking")}


def implicit_fit(algo: str):
    """The top-N fit function of implicit's `algo` ("als", "bpr") on the binary interactions;
    params are the model's keyword arguments; seeded by the split seed, on the CPU, one thread
    and BLAS at one thread (implicit's own advice for ALS)."""
    if algo not in IMPLICIT_ALGOS:
        raise ConfigError(f"implicit algorithm {algo!r} is not one of "
                          f"{', '.join(IMPLICIT_ALGOS)}")

    def fit(train, val, params, task):
        module, name = IMPLICIT_ALGOS[algo]
        cls = getattr(_need(IMPLICIT, module), name)
        from threadpoolctl import threadpool_limits

        X = sp.csr_matrix(train, dtype=np.float32, copy=True)
        X.eliminate_zeros()
        X.data[:] = 1.0
        # one thread: implicit's multi-threaded updates (BPR's Hogwild SGD) are not
        # reproducible from the seed
        params = {"num_threads": 1, **params}
        with threadpool_limits(1, "blas"):
            model = cls(random_state=int(task.seed), use_gpu=False, **params)
            model.fit(X, show_progress=False)
        U = np.asarray(model.user_factors, np.float64)
        V = np.asarray(model.item_factors, np.float64)
        return _Fitted(lambda users: U[users] @ V.T)

    return fit
