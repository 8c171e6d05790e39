"""The model families `make bench` times side by side: one entry each, in `FAMILIES`.

A family is the `python -m deepcf.train` overrides that compose its config (the same config a
user trains), the synthetic scale it is timed at, and how many optimizer steps to time. The bench
builds the data module and the model from that config (deepcf.bench.runs, kind `family`), times
`steps` training steps on the data module's real batches after a warm-up (the loop Lightning
runs: zero_grad, training_step, backward, step) and reads the process's peak RSS. A new family
adds one `register(Family(...))` here. Not timed here: EDLAE (closed form, no optimizer steps: its
cost is one width x width solve, docs/models.md "Ranking: EDLAE") and `objective=refeed` (two
manual optimizer steps per batch inside training_step, not the loop above).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str                    # the table's label
    overrides: tuple[str, ...]   # deepcf.train overrides composing the family's config
    scale: str = "movies_small"  # deepcf.data.synthetic.SCALES
    steps: int = 20              # timed optimizer steps (after 2 warm-up steps)
    # a dense width x width weight: rows of the same name at several scales give its memory
    # per weight and the width at which it stops fitting in this machine's RAM
    dense_square: bool = False
    note: str = ""


FAMILIES: list[Family] = []


def register(family: Family) -> Family:
    if any(f.name == family.name and f.scale == family.scale for f in FAMILIES):
        raise ValueError(f"bench family {family.name!r} at {family.scale} is registered twice")
    FAMILIES.append(family)
    return family


register(Family("autoencoder (default, sparse path, Adam)", ()))
register(Family("autoencoder + bias residual", ("model.net.residual=bias",)))
register(Family("I-AutoRec (item rows, full-batch Rprop)", ("experiment=i_autorec",), steps=5,
                note="one step = one epoch (every movie in one batch)"))
register(Family("I-AutoRec + bias residual", ("experiment=i_autorec", "model.net.residual=bias"),
                steps=5, note="one step = one epoch"))
register(Family("linear net (dense W)", ("model=linear", "init=default"), scale="ml100k",
                dense_square=True))
register(Family("linear net (dense W)", ("model=linear", "init=default"), dense_square=True))
register(Family("Mult-DAE (multinomial: dense softmax over every movie)", ("experiment=mult_dae",)))
register(Family("Mult-VAE (multinomial, Gaussian code)", ("experiment=mult_vae",)))
register(Family("I-AutoRec + residual target", ("experiment=i_autorec_target",), steps=5,
                note="one step = one epoch"))
register(Family("GLocal-K local kernel (item rows, full-batch Rprop)", ("experiment=glocal_k",),
                steps=5, note="one step = one epoch; W * K formed once per step"))
