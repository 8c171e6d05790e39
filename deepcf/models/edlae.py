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

from deepcf.errors import ConfigError
from deepcf.models.contract import RatingNet
from deepcf.models.sparse_ops import Pattern
from deepcf.stats import binary_gram, popularity_weights

AUTO = "auto"
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


def edlae_weights(G: np.ndarray, dropout: float, lam: float, emphasis: bool = True
                  ) -> np.ndarray:
    """The (width x width) weights B of EDLAE (`emphasis`, zero diagonal) or DLAE from the Gram
    matrix G of the binary inputs; see the module docstring."""
    check_edlae(dropout, lam)
    G = np.asarray(G, dtype=np.float64)
    reg = dropout / (1.0 - dropout) * np.diag(G) + lam
    if not (reg > 0).all():
        raise ConfigError(f"model.net.lam={lam}, model.net.dropout={dropout}: a movie with no "
                          f"interaction gets no penalty; use lam > 0")
    A = G.copy()
    A[np.diag_indices_from(A)] += reg
    if not emphasis:  # (G + Lambda)^-1 G = I - (G + Lambda)^-1 Lambda
        return np.linalg.solve(A, G)
    P = np.linalg.inv(A)
    B = -P / np.diag(P)[None, :]
    B[np.diag_indices_from(B)] = 0.0
    return B


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
        self.register_buffer("weight", torch.zeros(self.width, self.width))
        self.register_buffer("col_scale", torch.ones(self.width))
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

    def closed_form_stats(self, rows: Pattern, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch's binary Gram matrix X_b^T X_b (float64; they add up to X^T X)."""
        if rows.width != self.width:
            raise ConfigError(f"EDLAE of width {self.width} fitted on rows of width "
                              f"{rows.width}")
        X = sp.csr_matrix((values.detach().cpu().numpy(), rows.idx.cpu().numpy(),
                           rows.crow.cpu().numpy()), shape=(rows.n_rows, self.width))
        return {"gram": torch.from_numpy(binary_gram(X)).to(values.device)}

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
        G = stats["gram"].detach().cpu().double().numpy()
        key = (float(c.dropout), self.absolute_lam(G), bool(c.emphasis), G.shape, float(G.sum()),
               float(np.trace(G)))
        if self._solved != key:  # else the weights are those of this G and setting already
            B = edlae_weights(G, float(c.dropout), self.absolute_lam(G), bool(c.emphasis))
            self.weight.copy_(torch.from_numpy(B))
            self._solved = key
        beta = 0.0 if c.pop_beta == AUTO else float(c.pop_beta)  # auto: off until chosen
        self.col_scale.copy_(torch.from_numpy(popularity_weights(np.diag(G), beta)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x != 0).to(self.weight.dtype) @ self.weight) * self.col_scale
