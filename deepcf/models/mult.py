"""Mult-DAE and Mult-VAE (Liang, Krishnan, Hoffman, Jebara 2018, "Variational Autoencoders for
Collaborative Filtering"), as `RatingNet`s (deepcf.models.contract).

Both read a row of interactions x (users as rows, implicit data), L2-normalise it, apply input
dropout (training only, inverted: kept entries scaled by 1/(1-p)) and encode it with tanh layers
width -> hidden... -> latent (hidden [600], latent 200 as published); the decoder mirrors it,
latent -> ...hidden (tanh) -> width, and gives logits over every column. They are trained with
the multinomial log-likelihood (`objective=multinomial`,
deepcf.training.objectives.multinomial); their outputs rank movies, they are not ratings.

- Mult-DAE: the code is tanh(W2 h + b2), a point.
- Mult-VAE: the encoder's last layer gives (mu, logvar) of a diagonal Gaussian; in training the
  code is the reparameterised draw mu + exp(logvar / 2) * eps, eps ~ N(0, I), and the net adds
  beta * KL(q(z|x) || N(0, I)) (per row, averaged over the batch) to the loss, with beta annealed
  linearly from 0 to `anneal_cap` over `anneal_steps` optimizer steps (Liang's "total anneal
  steps"; 0 means the cap from the start). At inference the code is the mean, mu.

The first layer's weight is movie-major, (width, hidden), so the training step encodes the
batch's entries with `F.embedding_bag` (cost follows the interactions); the decoder's output is
dense over every column per batch by nature (the softmax needs all of it). `forward(x)` is the
dense computation (ONNX, full ranking). Default init, as in Liang's code: Xavier-uniform
weights, biases N(0, 0.001^2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from deepcf.errors import ConfigError
from deepcf.models.contract import RatingNet, check_init, init_matrix
from deepcf.models.sparse_ops import Pattern, entry_rows

EPS = 1e-12  # F.normalize's: a row of zeros stays zeros


@dataclass
class MultDAEConfig:
    width: int
    hidden: list[int] = field(default_factory=lambda: [600])  # encoder widths (decoder mirrors)
    latent: int = 200
    input_dropout: float = 0.5


@dataclass
class MultVAEConfig(MultDAEConfig):
    anneal_cap: float = 0.2  # the largest beta on the KL term
    anneal_steps: int = 20000  # optimizer steps over which beta grows from 0 to the cap


class MultDAE(RatingNet):
    Config = MultDAEConfig
    variational = False

    def __init__(self, config: MultDAEConfig):
        super().__init__(config)
        hidden = config.hidden if isinstance(config.hidden, (list, tuple)) else [config.hidden]
        hidden = [int(h) for h in hidden]
        latent, p = int(config.latent), float(config.input_dropout)
        if not hidden or min(hidden) < 1:
            raise ConfigError(f"model.net.hidden={config.hidden} must be a non-empty list of "
                              f"positive sizes")
        if latent < 1:
            raise ConfigError(f"model.net.latent={latent} must be >= 1")
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"model.net.input_dropout={p} must be in [0, 1)")
        config.hidden, config.latent, config.input_dropout = hidden, latent, p
        code = 2 * latent if self.variational else latent
        # (in, out): movie-major, the first layer is a sum over a row's entries
        self.item_in = nn.Parameter(torch.empty(self.width, hidden[0]))
        self.in_b = nn.Parameter(torch.empty(hidden[0]))
        self.enc_mid = nn.ModuleList(nn.Linear(a, b) for a, b in zip(hidden, hidden[1:]))
        self.enc = nn.Linear(hidden[-1], code)
        self.dec = nn.Linear(latent, hidden[-1])
        self.dec_mid = nn.ModuleList(nn.Linear(b, a) for a, b in
                                     reversed(list(zip(hidden, hidden[1:]))))
        self.out = nn.Linear(hidden[0], self.width)
        self.init_weights("default")

    # -- pieces ------------------------------------------------------------------------------
    def _first(self, x: torch.Tensor) -> torch.Tensor:
        """Dense rows -> the first hidden layer (normalise, input dropout, tanh)."""
        x = F.normalize(x, dim=1, eps=EPS)
        x = F.dropout(x, self.config.input_dropout, self.training)
        return self._mid(torch.tanh(x @ self.item_in + self.in_b), self.enc_mid)

    def _first_sparse(self, inputs: Pattern, values: torch.Tensor) -> torch.Tensor:
        """The same from a batch's entries: the row norms and the product over entries only."""
        rows = entry_rows(inputs.off, len(inputs.idx))
        norm = torch.zeros(inputs.n_rows, dtype=values.dtype, device=values.device)
        norm = norm.index_add(0, rows, values * values).sqrt().clamp_min(EPS)
        v = F.dropout(values / norm[rows], self.config.input_dropout, self.training)
        z = F.embedding_bag(inputs.idx, self.item_in, inputs.off, mode="sum",
                            per_sample_weights=v)
        return self._mid(torch.tanh(z + self.in_b), self.enc_mid)

    @staticmethod
    def _mid(h: torch.Tensor, layers) -> torch.Tensor:
        for layer in layers:
            h = torch.tanh(layer(h))
        return h

    def _code(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(code, KL of each row or None) from the first hidden layer."""
        return torch.tanh(self.enc(h)), None

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self._mid(torch.tanh(self.dec(z)), self.dec_mid))

    def beta(self, step: int) -> float:
        return 0.0

    # -- the contract ------------------------------------------------------------------------
    def train_logits(self, inputs: Pattern, values: torch.Tensor, step: int = 0):
        z, kl = self._code(self._first_sparse(inputs, values))
        logits = self._decode(z)
        return logits, (None if kl is None else self.beta(step) * kl.mean())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense rows (batch, width) -> logits over every column (ranking scores)."""
        return self._decode(self._code(self._first(x))[0])

    @torch.no_grad()
    def init_weights(self, scheme: str = "default", bias: float | None = None,
                     nonlinearity: str = "relu") -> None:
        """`default`: Liang's init (Xavier-uniform weights, biases N(0, 0.001^2)); the other
        schemes as nn.Linear(in, out) would be initialised under them, biases `bias` (0)."""
        check_init(scheme)
        linear = [*self.enc_mid, self.enc, self.dec, *self.dec_mid, self.out]
        layers = [(self.item_in.t(), self.in_b)] + [(m.weight, m.bias) for m in linear]
        for w, b in layers:
            if scheme == "default":
                nn.init.xavier_uniform_(w)
            else:
                init_matrix(w, scheme, nonlinearity)
            if scheme == "default" and bias is None:
                nn.init.normal_(b, 0.0, 0.001)
            else:
                nn.init.constant_(b, 0.0 if bias is None else bias)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) of each row: 0.5 sum(exp(logvar) + mu^2 - 1 - logvar)."""
    return 0.5 * (logvar.exp() + mu * mu - 1.0 - logvar).sum(1)


class MultVAE(MultDAE):
    Config = MultVAEConfig
    variational = True

    def __init__(self, config: MultVAEConfig):
        cap, steps = float(config.anneal_cap), int(config.anneal_steps)
        if not cap >= 0:
            raise ConfigError(f"model.net.anneal_cap={config.anneal_cap} must be >= 0")
        if steps < 0:
            raise ConfigError(f"model.net.anneal_steps={config.anneal_steps} must be >= 0")
        config.anneal_cap, config.anneal_steps = cap, steps
        super().__init__(config)

    def beta(self, step: int) -> float:
        """The KL weight at optimizer step `step`: min(cap, step / anneal_steps)."""
        cap, n = self.config.anneal_cap, self.config.anneal_steps
        return cap if n == 0 else min(cap, step / n)

    def _code(self, h: torch.Tensor):
        mu, logvar = self.enc(h).chunk(2, dim=1)
        if not self.training:
            return mu, None
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return z, gaussian_kl(mu, logvar)
