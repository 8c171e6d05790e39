"""RecVAE (Shenbin, Alekseev, Tutubalina, Malykh, Nikolenko, "RecVAE: a New Variational
Autoencoder for Top-N Recommendations with Implicit Feedback", WSDM 2020), as a `RatingNet`.

Mult-VAE (deepcf.models.mult) with the paper's changes, after the authors' code
(github.com/ilya-shenbin/RecVAE):
- the encoder: the L2-normalised row, input dropout, then five dense layers of `hidden` units,
  each h_i = LayerNorm(swish(W_i h_{i-1} + b_i + h_1 + ... + h_{i-1})) (dense skip connections),
  then (mu, logvar) of the latent Gaussian; the decoder is one linear layer latent -> width;
- the composite prior p(z) = w_1 N(0, I) + w_2 q_old(z | x) + w_3 N(0, e^10 I), q_old the
  encoder as it was at the end of the previous encoder phase (`end_block("encoder")` copies it;
  a buffer-like frozen copy, never trained);
- the KL weight of a row is gamma * |x| (its number of interactions), not an annealed beta;
- training alternates encoder phases (input dropout on) and decoder phases (no input dropout),
  each updating only its block (`param_blocks`, `begin_block`): the objective
  deepcf.training.objectives.alternating does it.
`train_logits` gives the dense logits of the reparameterised draw and the penalty, the mean over
rows of gamma * |x| * (log q(z|x) - log p(z)) summed over the latent (one draw), so the loss of
objective=alternating is the paper's negative ELBO. At inference the code is mu; `forward(x)`
(ONNX, full ranking) gives the logits over every column: ranking scores, not ratings.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from deepcf.errors import ConfigError
from deepcf.models.contract import RatingNet, check_init, init_matrix
from deepcf.models.sparse_ops import Pattern, entry_rows

EPS = 1e-12
N_LAYERS = 5  # the paper's encoder depth
WIDE_LOGVAR = 10.0  # the prior's wide component: N(0, e^10 I)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) elementwise."""
    return -0.5 * (logvar + math.log(2 * math.pi) + (z - mu).pow(2) / logvar.exp())


class Encoder(nn.Module):
    def __init__(self, width: int, hidden: int, latent: int, ln_eps: float):
        super().__init__()
        self.item_in = nn.Parameter(torch.empty(width, hidden))  # movie-major: (in, out)
        self.in_b = nn.Parameter(torch.zeros(hidden))
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(N_LAYERS - 1))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden, eps=ln_eps) for _ in range(N_LAYERS))
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)

    def stack(self, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) from the first layer's pre-activation."""
        hs = [self.norms[0](swish(first))]
        for layer, norm in zip(self.layers, self.norms[1:]):
            hs.append(norm(swish(layer(hs[-1]) + sum(hs))))
        return self.mu(hs[-1]), self.logvar(hs[-1])

    def dense(self, x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.dropout(F.normalize(x, dim=1, eps=EPS), p, self.training and p > 0)
        return self.stack(x @ self.item_in + self.in_b)

    def sparse(self, inputs: Pattern, values: torch.Tensor, p: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same from a batch's entries (the first product over the entries only)."""
        rows = entry_rows(inputs.off, len(inputs.idx))
        norm = torch.zeros(inputs.n_rows, dtype=values.dtype, device=values.device)
        norm = norm.index_add(0, rows, values * values).sqrt().clamp_min(EPS)
        v = F.dropout(values / norm[rows], p, self.training and p > 0)
        z = F.embedding_bag(inputs.idx, self.item_in, inputs.off, mode="sum",
                            per_sample_weights=v)
        return self.stack(z + self.in_b)


@dataclass
class RecVAEConfig:
    width: int
    hidden: int = 600
    latent: int = 200
    input_dropout: float = 0.5  # encoder phases only
    gamma: float = 0.005  # a row's KL weight: gamma * its number of interactions
    mixture: list[float] = field(default_factory=lambda: [0.15, 0.75, 0.1])  # N(0,I), old, wide
    ln_eps: float = 0.1  # the authors' LayerNorm epsilon


class RecVAE(RatingNet):
    Config = RecVAEConfig
    scores = "ranking"

    def __init__(self, config: RecVAEConfig):
        super().__init__(config)
        hidden = config.hidden
        if isinstance(hidden, (list, tuple)):  # the hidden=[n] of the other nets' configs
            if len(hidden) != 1:
                raise ConfigError(f"model.net.hidden={list(hidden)}: RecVAE's encoder layers "
                                  f"share one width; give one number")
            hidden = hidden[0]
        hidden, latent = int(hidden), int(config.latent)
        if hidden < 1 or latent < 1:
            raise ConfigError(f"model.net.hidden={config.hidden}, latent={config.latent} must "
                              f"be >= 1")
        if not 0.0 <= float(config.input_dropout) < 1.0:
            raise ConfigError(f"model.net.input_dropout={config.input_dropout} must be in "
                              f"[0, 1)")
        if not float(config.gamma) >= 0.0:
            raise ConfigError(f"model.net.gamma={config.gamma} must be >= 0")
        mix = [float(w) for w in config.mixture]
        if len(mix) != 3 or min(mix) <= 0 or abs(sum(mix) - 1.0) > 1e-6:
            raise ConfigError(f"model.net.mixture={config.mixture} must be 3 positive weights "
                              f"summing to 1 (standard, previous encoder, wide)")
        config.hidden, config.latent, config.mixture = hidden, latent, mix
        self.encoder = Encoder(self.width, hidden, latent, float(config.ln_eps))
        self.decoder = nn.Linear(latent, self.width)
        self.prior_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.dropout_on = True  # off in decoder phases (begin_block)
        self.init_weights("default")

    # -- the composite prior -------------------------------------------------------------------
    def log_prior(self, z: torch.Tensor, old_mu: torch.Tensor, old_logvar: torch.Tensor
                  ) -> torch.Tensor:
        zero = torch.zeros_like(z)
        parts = [log_normal(z, zero, zero), log_normal(z, old_mu, old_logvar),
                 log_normal(z, zero, zero + WIDE_LOGVAR)]
        w = self.config.mixture
        return torch.logsumexp(torch.stack([p + math.log(a) for p, a in zip(parts, w)], -1), -1)

    # -- alternating training (deepcf.training.objectives.alternating) -------------------------
    def param_blocks(self) -> dict[str, list[nn.Parameter]]:
        return {"encoder": list(self.encoder.parameters()),
                "decoder": list(self.decoder.parameters())}

    def begin_block(self, name: str) -> None:
        self.dropout_on = name == "encoder"

    @torch.no_grad()
    def end_block(self, name: str) -> None:
        if name == "encoder":  # the prior's q_old: the encoder after this phase
            self.prior_encoder.load_state_dict(self.encoder.state_dict())

    def l2_weights(self) -> list[torch.Tensor]:
        return [p for p in self.parameters() if p.dim() >= 2 and p.requires_grad]

    # -- the contract ----------------------------------------------------------------------------
    def train_logits(self, inputs: Pattern, values: torch.Tensor, step: int = 0):
        p = float(self.config.input_dropout) if self.dropout_on else 0.0
        mu, logvar = self.encoder.sparse(inputs, values, p)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        with torch.no_grad():
            self.prior_encoder.eval()
            old_mu, old_logvar = self.prior_encoder.sparse(inputs, values, 0.0)
        kl = (log_normal(z, mu, logvar) - self.log_prior(z, old_mu, old_logvar)).sum(1)
        counts = torch.zeros(inputs.n_rows, dtype=values.dtype, device=values.device)
        counts = counts.index_add(0, entry_rows(inputs.off, len(inputs.idx)),
                                  torch.ones_like(values))
        return self.decoder(z), (float(self.config.gamma) * counts * kl).mean()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense rows (batch, width) -> logits over every column at the code's mean."""
        mu, _ = self.encoder.dense(x, 0.0)
        return self.decoder(mu)

    @torch.no_grad()
    def init_weights(self, scheme: str = "default", bias: float | None = None,
                     nonlinearity: str = "relu") -> None:
        """`default`: PyTorch's nn.Linear init for every layer (the authors' code); the other
        schemes for the weights, biases `bias` (0). The prior's copy follows the encoder."""
        check_init(scheme)
        enc = self.encoder
        linear = [*enc.layers, enc.mu, enc.logvar, self.decoder]
        pairs = [(enc.item_in.t(), enc.in_b)] + [(m.weight, m.bias) for m in linear]
        for w, b in pairs:
            init_matrix(w, scheme, nonlinearity)
            fan_in = w.shape[1]
            if scheme == "default" and bias is None:
                nn.init.uniform_(b, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
            else:
                nn.init.constant_(b, 0.0 if bias is None else bias)
        self.end_block("encoder")
