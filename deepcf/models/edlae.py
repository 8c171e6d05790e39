"""EDLAE / DLAE: the linear autoencoder trained with (emphasised) dropout, in closed form.

Steck, "Autoencoders that don't overfit towards the identity" (NeurIPS 2020). With X the binary
users x movies interactions and G = X^T X, the linear autoencoder x -> x B trained with input
dropout at rate p (the expected loss over the dropout draws) has the closed form

    Lambda = p / (1 - p) * diag(G) + lam * I
    DLAE:   B = (G + Lambda)^-1 G
    EDLAE:  B = I - P diagMat(1 / diag(P)),  P = (G + Lambda)^-1,  diag(B) = 0

EDLAE is the paper's full emphasis on the dropped-out entries, which amounts to the zero-diagonal
constraint (a movie never predicts itself): with p = 0 it is EASE (Steck 2019) with lam. Dropout
acts as a per-movie L2 penalty proportional to the movie's popularity: popular movies are
regularised harder, which is why it ranks better than EASE at equal lam.

As a `RatingNet` (deepcf.models.contract): the input is binarised (any rating is an interaction),
`forward(x) = (x != 0) @ B * s` with s = max(popularity, 1)^-pop_beta, the optional popularity
correction of deepcf.stats.popularity_weights (1 at pop_beta = 0). B and s are buffers set in
closed form (`objective=closed_form`: the batches' Gram matrices summed, then `solve`), saved
with the checkpoint, part of the ONNX graph. Nothing is learned by gradient.
The scores are ranking scores, not ratings: their held-out RMSE means nothing; rank with them
(`deepcf.evaluate --protocol topn`, `deepcf.recommend`).

`lam_unit`: "absolute" (lam as given) or "mean_diag" (lam times the mean of diag(G), the mean
number of interactions per movie), so that one setting carries to catalogues and data sets of
other sizes, whose Gram matrices have other scales (dropout's p/(1-p) diag(G) scales already).

`max_items`: model only the `max_items` movies with the most training interactions (0: all),
chosen from the training rows before the fit (`fit_data`); B is then max_items x max_items
and the other movies score the lowest float (never recommended before a modelled one). Above
F32_ABOVE modelled movies the solve runs in float32 with an in-place Cholesky inverse
(`edlae_weights_f32`: one movies x movies matrix held), which is what lets the closed form run
on a catalogue like The Movies Dataset's: 0.4 GB at 10,000 movies, where the whole 45,115 in
float64 would be 16 GB a copy. Validation and the carve score sparse rows (`rank_rows`: the sum
of B's rows at each user's interactions, never a dense users x movies product), and the export
caches B for serving (deepcf.serving.codes.ItemItem).

Chosen on the validation carve (`lam=auto`, `dropout=auto`, `emphasis=auto`, `pop_beta=auto`):
`selection_stages` states the grids, deepcf.training.objectives.closed_form.select_options scores
them. Stage 1: every (lam, dropout, emphasis) of the auto ones' grids (lam as multiples of mean
diag(G): `lam=auto` leaves `lam_unit=mean_diag`; emphasis true and false, EDLAE and DLAE), the
best carve NDCG@10 kept; stage 2: pop_beta over its grid at that B (no new solve), the best carve
NDCG@10 among the settings whose carve coverage@10 >= `coverage_floor` (0: no floor; `ease`: the
carve coverage@10 of stage 1's best EASE setting, dropout 0 with the zero diagonal, so that the
correction buys no NDCG with less coverage than EASE's; pop_beta 0 is "off"). The chosen
numbers replace "auto" in the config, so the checkpoint's net spec holds them and a re-fit (on
more rows) solves at them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from deepcf.errors import ConfigError
from deepcf.models.contract import RatingNet
from deepcf.models.sparse_ops import Pattern, entry_rows
from deepcf.stats import binary_gram, popularity_weights

AUTO = "auto"
F32_ABOVE = 4096  # more modelled movies than this: the float32 in-place solve
EASE_FLOOR = "ease"  # coverage_floor: the carve coverage@10 of EASE's choice
LAM_UNITS = ("absolute", "mean_diag")
# the carve's grids (lam: multiples of mean diag(G)); Steck 2020 tunes p in about 0.1..0.9
LAM_GRID = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
DROPOUT_GRID = [0.0, 0.33, 0.5, 0.7, 0.85, 0.92]
POP_BETA_GRID = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4]


def check_option(name: str, value, lo: float, hi: float | None = None) -> None:
    """A number in [lo, hi) (or >= lo), or "auto"; anything else is one line."""
    if value == AUTO:
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"model.net.{name}={value!r} must be a number or auto") from None
    if not (v >= lo and (hi is None or v < hi)):
        bound = f"in [{lo:g}, {hi:g})" if hi is not None else f">= {lo:g}"
        raise ConfigError(f"model.net.{name}={value} must be {bound} (or auto)")


def check_edlae(dropout: float, lam: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.net.dropout={dropout} must be in [0, 1)")
    if not lam >= 0.0:
        raise ConfigError(f"model.net.lam={lam} must be >= 0")


def _penalty(G: np.ndarray, dropout: float, lam: float) -> np.ndarray:
    """Lambda's diagonal, p / (1 - p) diag(G) + lam (float64)."""
    check_edlae(dropout, lam)
    reg = dropout / (1.0 - dropout) * np.diag(G).astype(np.float64) + lam
    if not (reg > 0).all():
        raise ConfigError(f"model.net.lam={lam}, model.net.dropout={dropout}: a movie with no "
                          f"interaction gets no penalty; use lam > 0")
    return reg


def edlae_weights(G: np.ndarray, dropout: float, lam: float, emphasis: bool = True
                  ) -> np.ndarray:
    """The (width x width) weights B of EDLAE (`emphasis`, zero diagonal) or DLAE from the Gram
    matrix G of the binary inputs; see the module docstring. Float64 up to F32_ABOVE movies,
    above that `edlae_weights_f32` on a float32 copy of G."""
    if G.shape[0] > F32_ABOVE:
        return edlae_weights_f32(np.array(G, dtype=np.float32), dropout, lam, emphasis)
    G = np.asarray(G, dtype=np.float64)
    reg = _penalty(G, dropout, lam)
    A = G.copy()
    A[np.diag_indices_from(A)] += reg
    if not emphasis:  # (G + Lambda)^-1 G = I - (G + Lambda)^-1 Lambda
        return np.linalg.solve(A, G)
    P = np.linalg.inv(A)
    B = -P / np.diag(P)[None, :]
    B[np.diag_indices_from(B)] = 0.0
    return B


def edlae_weights_f32(G: np.ndarray, dropout: float, lam: float, emphasis: bool = True
                      ) -> np.ndarray:
    """`edlae_weights` in float32 and in place: G (float32, C order) is overwritten by the
    Cholesky factor, then by P = (G + Lambda)^-1, then by B, which is returned. One movies x
    movies matrix is held (LAPACK spotrf / spotri on the lower triangle), so 10,000 movies take
    0.4 GB. The binary Gram's entries are counts, exact in float32 below 2^24 users."""
    # start-up: scipy.linalg's LAPACK wrappers are only needed by this solve
    from scipy.linalg import lapack

    reg = _penalty(G, dropout, lam)
    G[np.diag_indices_from(G)] += reg.astype(np.float32)
    c, info = lapack.spotrf(G, lower=1, overwrite_a=1, clean=0)
    if info != 0:
        raise ConfigError(f"EDLAE: the Cholesky factorisation of G + Lambda failed (LAPACK "
                          f"info {info}); raise model.net.lam")
    P, info = lapack.spotri(c, lower=1, overwrite_c=1)
    if info != 0:
        raise ConfigError(f"EDLAE: the inverse of G + Lambda failed (LAPACK info {info})")
    del c, G
    n, b = P.shape[0], 2048  # spotri leaves the lower triangle: mirror it, block by block
    for s0 in range(0, n, b):
        e = min(s0 + b, n)
        low = np.tril(P[s0:e, s0:e])
        P[s0:e, s0:e] = low + np.tril(low, -1).T
        P[s0:e, e:] = P[e:, s0:e].T
    if not emphasis:  # DLAE: (G + Lambda)^-1 G = I - P Lambda
        P *= -reg.astype(np.float32)[None, :]
        P[np.diag_indices_from(P)] += 1.0
        return P
    d = np.diag(P).copy()
    P /= -d[None, :]
    P[np.diag_indices_from(P)] = 0.0
    return P


def top_items(train_rows, k: int) -> np.ndarray:
    """The k columns of a rows x movies CSR with the most stored entries (ties: the lower
    index), ascending; all of them when k is 0 or at least the width."""
    X = sp.csr_matrix(train_rows)
    counts = np.bincount(X.indices[X.data != 0], minlength=X.shape[1])
    if not 0 < k < X.shape[1]:
        return np.arange(X.shape[1])
    return np.sort(np.argsort(-counts, kind="stable")[:k])


def widen(s: torch.Tensor, items: torch.Tensor, width: int) -> torch.Tensor:
    """(rows, modelled movies) scores -> (rows, width): the other movies the lowest float."""
    out = s.new_full((s.shape[0], width), torch.finfo(s.dtype).min)
    return out.index_copy(1, items, s)


def item_item_scores(idx: torch.Tensor, val: torch.Tensor, off: torch.Tensor,
                     items: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                     width: int) -> torch.Tensor:
    """(rows, width) scores of flat rows (column ids, values, row offsets) under a linear
    item-item model over the movies `items` (ascending): the sum of `weight`'s rows at each
    row's interactions (nonzero values) with those movies, an embedding bag, times `scale`;
    the other movies score the lowest float. No dense rows x width product is made."""
    pos = torch.full((width,), -1, dtype=torch.long, device=items.device)
    pos[items] = torch.arange(len(items), device=items.device)  # each movie's row of weight
    at = pos[idx]
    keep = (val != 0) & (at >= 0)
    rows = entry_rows(off, len(idx))[keep]
    counts = torch.zeros(len(off), dtype=torch.long, device=idx.device).index_add_(
        0, rows, torch.ones_like(rows))
    s = F.embedding_bag(at[keep], weight, torch.cumsum(counts, 0) - counts, mode="sum") * scale
    return s if len(items) == width else widen(s, items, width)


@dataclass
class EDLAEConfig:
    width: int
    dropout: float | str = 0.33  # p, the input dropout rate of the expectation; or auto
    lam: float | str = 100.0  # the L2 on B on top of dropout's (lam * I), in lam_unit; or auto
    emphasis: bool | str = True  # EDLAE (zero diagonal); false: DLAE; or auto
    pop_beta: float | str = 0.0  # scores * max(popularity, 1)^-pop_beta; or auto
    lam_unit: str = "absolute"  # or mean_diag: lam times the mean of diag(G)
    # pop_beta=auto: the carve coverage@10 a choice must reach, or "ease": that of EASE's
    # carve choice (dropout 0, zero diagonal, the best lam of the first stage)
    coverage_floor: float | str = 0.0
    lam_grid: list[float] = field(default_factory=lambda: list(LAM_GRID))
    dropout_grid: list[float] = field(default_factory=lambda: list(DROPOUT_GRID))
    pop_beta_grid: list[float] = field(default_factory=lambda: list(POP_BETA_GRID))
    # model only the max_items movies with the most training interactions (0: every movie)
    max_items: int = 0


class EDLAE(RatingNet):
    Config = EDLAEConfig
    scores = "ranking"

    def __init__(self, config: EDLAEConfig):
        super().__init__(config)
        check_option("dropout", config.dropout, 0.0, 1.0)
        check_option("lam", config.lam, 0.0)
        check_option("pop_beta", config.pop_beta, 0.0)
        if config.lam_unit not in LAM_UNITS:
            raise ConfigError(f"model.net.lam_unit={config.lam_unit!r} is not one of "
                              f"{', '.join(LAM_UNITS)}")
        if config.emphasis not in (True, False, AUTO):
            raise ConfigError(f"model.net.emphasis={config.emphasis!r} must be true, false or "
                              f"auto")
        if config.coverage_floor != EASE_FLOOR:
            try:
                ok = 0.0 <= float(config.coverage_floor) <= 1.0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(f"model.net.coverage_floor={config.coverage_floor!r} must be "
                                  f"in [0, 1] or {EASE_FLOOR}")
        for name, lo, hi in (("lam_grid", 0.0, None), ("dropout_grid", 0.0, 1.0),
                             ("pop_beta_grid", 0.0, None)):
            values = list(getattr(config, name))
            if not values:
                raise ConfigError(f"model.net.{name}=[]: give at least one value")
            for v in values:
                check_option(name, v, lo, hi)
        if isinstance(config.max_items, bool) or not isinstance(config.max_items, int) \
                or config.max_items < 0:
            raise ConfigError(f"model.net.max_items={config.max_items!r} must be a whole number "
                              f">= 0 (0: every movie)")
        k = config.max_items if 0 < config.max_items < self.width else self.width
        self.pruned = k < self.width
        # the modelled movies (ascending columns; set from the training rows by fit_data)
        self.register_buffer("items", torch.arange(k))
        self.register_buffer("weight", torch.zeros(k, k))
        self.register_buffer("col_scale", torch.ones(k))
        self._chosen: dict = {}  # the options set_options fixed (chosen on the carve)
        self._solved: tuple | None = None  # what the weights were solved for (pop_beta
        # alone changes nothing of B: the carve's pop_beta stage solves once)

    def selection_stages(self) -> list[tuple[dict[str, list], float]]:
        """The options left to the validation carve, as stages of (option -> grid, the carve
        coverage@10 floor of the stage); see the module docstring."""
        c, stages = self.config, []
        first = {name: list(getattr(c, f"{name}_grid")) for name in ("lam", "dropout")
                 if getattr(c, name) == AUTO}
        if c.emphasis == AUTO:
            first["emphasis"] = [True, False]
        if first:
            stages.append((first, 0.0))
        if c.pop_beta == AUTO:
            floor = (self.ease_floor if c.coverage_floor == EASE_FLOOR
                     else float(c.coverage_floor))
            stages.append(({"pop_beta": list(c.pop_beta_grid)}, floor))
        return stages

    def ease_floor(self, tried: list[tuple[dict, float, float]]) -> float:
        """coverage_floor=ease: the carve coverage@10 of the best carve NDCG@10 among the
        earlier stages' EASE settings (dropout 0 with the zero diagonal); `tried`: (setting,
        carve NDCG@10, carve coverage@10) of every setting scored so far."""
        c = self.config
        ease = [(ndcg, cov) for setting, ndcg, cov in tried
                if setting.get("dropout", c.dropout) == 0.0
                and setting.get("emphasis", c.emphasis) is True]
        if not ease:
            raise ConfigError("model.net.coverage_floor=ease: the carve's first stage tried no "
                              "EASE setting (dropout=auto with 0 in model.net.dropout_grid, "
                              "emphasis true or auto)")
        return float(max(ease)[1])

    def set_options(self, **values) -> None:
        """Fix options chosen on the carve (they replace "auto" in the config and the spec)."""
        for name, value in values.items():
            if name == "emphasis":
                self.config.emphasis = self._chosen["emphasis"] = bool(value)
                continue
            if name == "lam":
                self.config.lam_unit = "mean_diag" if self.config.lam == AUTO else \
                    self.config.lam_unit
            setattr(self.config, name, float(value))
            self._chosen[name] = float(value)
        if "lam" in self._chosen:
            self._chosen["lam_unit"] = self.config.lam_unit

    def chosen_options(self) -> dict:
        """The options chosen on the carve, as net config values: a refit on train + carve
        takes them as given (deepcf.training.train.refit)."""
        return dict(self._chosen)

    @property
    def needs_train_rows(self) -> bool:
        return self.pruned  # which movies to model

    def fit_data(self, train_rows) -> None:
        """The modelled movies: the max_items with the most training interactions."""
        if self.pruned:
            self.items.copy_(torch.from_numpy(top_items(train_rows, len(self.items))))

    def closed_form_stats(self, rows: Pattern, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch's binary Gram matrix X_b^T X_b over the modelled movies (they add up to
        X^T X): float64, or float32 (exact counts, half the memory) above F32_ABOVE movies."""
        if rows.width != self.width:
            raise ConfigError(f"EDLAE of width {self.width} fitted on rows of width "
                              f"{rows.width}")
        X = sp.csr_matrix((values.detach().cpu().numpy(), rows.idx.cpu().numpy(),
                           rows.crow.cpu().numpy()), shape=(rows.n_rows, self.width))
        if self.pruned:
            X = X[:, self.items.cpu().numpy()]
        dtype = np.float32 if len(self.items) > F32_ABOVE else np.float64
        return {"gram": torch.from_numpy(binary_gram(X, dtype)).to(values.device)}

    def absolute_lam(self, G: np.ndarray) -> float:
        """lam in the units of G (lam_unit=mean_diag: times the mean of diag(G))."""
        lam = float(self.config.lam)
        return lam * float(np.diag(G).mean()) if self.config.lam_unit == "mean_diag" else lam

    @torch.no_grad()
    def solve(self, stats: dict[str, torch.Tensor]) -> None:
        c = self.config
        if AUTO in (c.lam, c.dropout):
            raise ConfigError("model.net.lam/dropout=auto: EDLAE chooses them on the validation "
                              "carve, which this fit has not been given (objective=closed_form "
                              "does it in deepcf.train); give numbers")
        G = stats["gram"].detach().cpu().numpy()
        key = (float(c.dropout), self.absolute_lam(G), bool(c.emphasis), G.shape, float(G.sum()),
               float(np.trace(G)))
        if self._solved != key:  # else the weights are those of this G and setting already
            B = edlae_weights(G, float(c.dropout), self.absolute_lam(G), bool(c.emphasis))
            self.weight.copy_(torch.from_numpy(B))
            del B
            self._solved = key
        beta = 0.0 if c.pop_beta == AUTO else float(c.pop_beta)  # auto: off until chosen
        self.col_scale.copy_(torch.from_numpy(popularity_weights(np.diag(G), beta)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pruned:
            return ((x != 0).to(self.weight.dtype) @ self.weight) * self.col_scale
        s = ((x.index_select(1, self.items) != 0).to(self.weight.dtype) @ self.weight) \
            * self.col_scale
        return widen(s, self.items, self.width)

    def rank_rows(self, idx: torch.Tensor, val: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
        """forward's scores from flat rows (`item_item_scores`: B's rows summed at each row's
        interactions with the modelled movies)."""
        return item_item_scores(idx, val, off, self.items, self.weight, self.col_scale,
                                self.width)

    def item_weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(modelled movies, B, column scale) as float32 / int64 arrays: the scores are
        (x[:, movies] != 0) @ B * scale, what the export caches for serving
        (deepcf.serving.codes.ItemItem)."""
        return (self.items.cpu().numpy().astype(np.int64),
                np.ascontiguousarray(self.weight.cpu().float().numpy()),
                self.col_scale.cpu().float().numpy())
