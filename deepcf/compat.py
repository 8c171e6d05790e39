"""Config keys and groups that moved: the old spelling is one line naming the new place.

The only compatibility code of the package: command-line overrides are checked against these
tables before Hydra composes (`check_moved`), and a run dir whose config uses an old spelling is
refused in one line (`check_run_config`), never half-read.
"""

from __future__ import annotations

from deepcf.errors import ConfigError

# old key -> its new place (a value keeps its meaning there)
MOVED = {
    # the data source's own options
    **{f"data.{k}": f"data.source.{k}" for k in (
        "path", "titles_path", "test_path", "rating_min", "rating_max", "scale", "n_users",
        "n_items", "n_ratings")},
    "data.generator_seed": "data.source.seed",
    # the split protocol and the data loader
    "data.val_fraction": "data.protocol.val_fraction",
    "data.test_fraction": "data.protocol.test_fraction",
    "data.split_seed": "data.protocol.seed",
    "data.num_workers": "data.loader.num_workers",
    "data.pin_memory": "data.loader.pin_memory",
    # the masked-MSE objective's options
    "model.train_path": "model.objective.train_path",
    "model.sparse_grad": "model.objective.sparse_grad",
}
# old key or group -> what to write instead (a value changes its form)
REPLACED = {
    "loss": "objective=masked_mse or objective=multinomial (the loss group is now the "
            "objective group)",
    "model.loss": "objective=masked_mse or objective=multinomial (the objective group)",
    "model.refeed": "objective=refeed",
    "model.eval_topn": "model.metrics=[ndcg@10] (the ranking metrics val/test log)",
}
# the module's own keys under `model`; any other model.KEY is a net option: model.net.KEY
MODULE_KEYS = ("net", "objective", "optimizer", "scheduler", "init", "noise", "l2", "metrics")


def moved_message(key: str, value=None) -> str | None:
    """What to write instead of the override `key` (=`value`), or None if it did not move."""
    if key in MOVED:
        return f"{key} is now {MOVED[key]} (e.g. {MOVED[key]}=...)"
    if key in REPLACED:
        return f"{key} is gone: use {REPLACED[key]}"
    if key == "callbacks" and value == "ranking":
        return ("callbacks=ranking is gone: the monitor follows the model's output kind "
                "(a ranking model checkpoints and early-stops on val/ndcg@10 by itself)")
    if key == "data.source" and isinstance(value, str):
        return (f"data.source={value} is no longer a name: choose the data with data=ml100k, "
                f"data=ratings_csv or data=synthetic")
    if key == "model.net" and isinstance(value, str):
        return f"model.net={value}: the net's class is now model.net._target_={value}"
    parts = key.split(".")
    if len(parts) >= 2 and parts[0] == "model" and parts[1] not in MODULE_KEYS \
            and not parts[1].startswith("_"):
        new = "model.net." + ".".join(parts[1:])
        return f"{key} is now {new} (the net's options live under model.net)"
    return None


def check_moved(key: str, value=None) -> None:
    message = moved_message(key, value)
    if message is not None:
        raise ConfigError(message)


def check_run_config(cfg: dict, source: str) -> None:
    """A run dir's resolved config written with keys that have moved since: one line."""
    for section in ("data", "model"):
        node = cfg.get(section)
        if not isinstance(node, dict):
            continue
        if section == "model" and "net" not in node or isinstance(node.get("net"), str):
            raise ConfigError(f"{source}: written by an earlier deepcf (its model section has "
                              f"no model.net node); train the run again")
        for k, v in node.items():
            message = moved_message(f"{section}.{k}", v)
            if message is not None:
                raise ConfigError(f"{source}: written by an earlier deepcf ({message}); "
                                  f"train the run again")
