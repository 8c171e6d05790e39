"""Config plumbing shared by the commands: where the configs live, the one place that composes
them (`compose`), instantiation with one-line errors naming the key, and the up-front check of
command-line overrides (principle 5)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

import deepcf.training.resolvers  # noqa: F401  (registers the config resolvers)
from deepcf.compat import check_moved
from deepcf.errors import ConfigError, DeepCFError
from deepcf.files import check_first_line

CONF_DIR = str(Path(__file__).resolve().parent.parent.parent / "conf")


def build(conf: DictConfig, key: str, **kwargs):
    """hydra.utils.instantiate, with failures reported as one line naming the config key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf.errors import OmegaConfBaseException

    try:
        return instantiate(conf, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, DeepCFError):
            raise cause from None
        raise ConfigError(f"{key}: {cause if cause is not None else e}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None


def build_all(group: DictConfig | None, key: str) -> list:
    out = []
    for name, conf in (group or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            out.append(build(conf, f"{key}.{name}"))
        elif conf is not None:
            raise ConfigError(f"{key}.{name}: expected a config with _target_, got {conf!r}")
    return out


_HYDRA_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--version",
                "-p", "--package", "--shell-completion", "-sc", "--config-path", "-cp",
                "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun")


def _missing_keys(node, prefix: str = "") -> list[str]:
    """Keys left at ??? (without resolving interpolations, which need a running Hydra)."""
    out = []
    for key in node.keys() if isinstance(node, DictConfig) else []:
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            out.append(full)
        else:
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                out += _missing_keys(child, f"{full}.")
    return out


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# (key, test, what it must be): the values whose wrong type or range would otherwise fail deep
# inside Lightning, torch or the split with a traceback; checked before anything runs
VALUE_RULES = [
    ("trainer.max_epochs", lambda v: v is None or (_int(v) and (v >= 1 or v == -1)),
     "an integer >= 1 (or -1: no limit)"),
    ("trainer.min_epochs", lambda v: v is None or (_int(v) and v >= 0), "an integer >= 0"),
    ("trainer.max_steps", lambda v: v is None or (_int(v) and (v >= 1 or v == -1)),
     "an integer >= 1 (or -1: no limit)"),
    ("trainer.check_val_every_n_epoch", lambda v: v is None or (_int(v) and v >= 1),
     "an integer >= 1"),
    ("trainer.log_every_n_steps", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("trainer.num_nodes", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("model.optimizer.lr", lambda v: _num(v) and 0 < v < float("inf"),
     "a number > 0 (e.g. 0.001)"),
    ("model.optimizer.weight_decay", lambda v: _num(v) and v >= 0, "a number >= 0"),
    ("model.l2", lambda v: _num(v) and v >= 0, "a number >= 0"),
    ("seed", lambda v: v is None or (_int(v) and 0 <= v < 2**32), "an integer in [0, 2^32)"),
    ("data.batch_size", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("data.eval_batch_size", lambda v: v is None or (_int(v) and v >= 1), "an integer >= 1"),
    ("data.protocol.val_fraction", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("data.protocol.test_fraction", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("data.source.rating_min", lambda v: v is None or _num(v), "a number"),
    ("data.source.rating_max", lambda v: v is None or _num(v), "a number"),
]


def check_values(cfg: DictConfig) -> None:
    """One line for a value of the wrong type or out of range (VALUE_RULES); a key the config
    does not have, or an interpolation (resolved when the run starts), is left alone."""
    for key, ok, what in VALUE_RULES:
        *parents, last = key.split(".")
        node = cfg
        for p in parents:
            node = node._get_node(p) if isinstance(node, DictConfig) and p in node else None
            if node is None:
                break
        if not isinstance(node, DictConfig) or last not in node:
            continue
        if OmegaConf.is_interpolation(node, last) or OmegaConf.is_missing(node, last):
            continue
        value = node._get_node(last)._value()
        if not ok(value):
            raise ConfigError(f"{key}={value!r}: must be {what}")


INPUT_KEYS = ("path", "titles_path", "test_path")  # the files a data source reads


def check_special_inputs(cfg: DictConfig) -> None:
    """A data file that exists but is not a regular file (/dev/zero, a FIFO), or whose first
    line is over the line bound (no newline in its first MiB), is refused here, before torch
    loads: one line within the command's first seconds (a missing file is reported where the
    source reads it)."""
    source = cfg.get("data", {}).get("source") if isinstance(cfg.get("data"), DictConfig) \
        else None
    if not isinstance(source, DictConfig):
        return
    for key in INPUT_KEYS:
        if key not in source or OmegaConf.is_interpolation(source, key) \
                or OmegaConf.is_missing(source, key):
            continue
        value = source._get_node(key)._value()
        if isinstance(value, str) and value and os.path.exists(os.path.expanduser(value)):
            check_first_line(os.path.expanduser(value), "data file")


def _space_hint(args: list[str]) -> None:
    """A value with spaces that the shell split into two arguments (`data.source.path=/my
    dir/r.csv` unquoted): one line saying how to quote it, instead of Hydra's parse error."""
    for prev, a in zip(args, args[1:]):
        if "=" in prev and "=" not in a and not a.startswith("-"):
            key, _, value = prev.partition("=")
            raise ConfigError(f"{prev} {a}: {a!r} is not an override; if it is the rest of "
                              f"{key}'s value (a path with spaces), quote the whole override: "
                              f"'{key}={value} {a}'")


def compose(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """The train config of `python -m deepcf.train <overrides>`, composed without running: the
    one place deepcf initialises Hydra's config dir (tests, the study and the bench use it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return hydra_compose(config_name="train", overrides=list(overrides),
                                 return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()


def check_overrides(args: list[str]) -> DictConfig | None:
    """Compose the config up front so that a wrong key, an unknown choice or a missing
    mandatory value is one line naming it, not Hydra's multi-line report. Each value of a swept
    override is checked with the first value of the others. Returns the config composed with
    the first value of each override (None for Hydra's own modes)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.split("=")[0] in _HYDRA_FLAGS for a in args):
        return None  # Hydra's own modes (help, --cfg, ...) report for themselves
    try:
        parsed, values, hydra_groups = [], [], []
        for o in OverridesParser.create().parse_overrides(
                [a for a in args if not a.startswith("-")]):
            if o.key_or_group.startswith(("hydra/", "hydra.launcher.", "hydra.searchpath")):
                # the launcher and its keys are checked too; a search path adds config groups
                # of the user's own (objective=huber from myconf/objective/huber.yaml)
                hydra_groups.append(o.input_line)
                continue
            if o.key_or_group.startswith("hydra"):
                continue
            check_moved(o.key_or_group, o.value())
            try:
                v = list(o.sweep_string_iterator()) if o.is_sweep_override() else \
                    [o.get_value_element_as_str()]
            except Exception:  # glob() and interval() need Hydra's loader or a sweeper plugin
                continue
            parsed.append(o)
            values.append(v)
        base = [f"{o.get_key_element()}={v[0]}" for o, v in zip(parsed, values)]
        variants = [base] + [base[:i] + [f"{o.get_key_element()}={x}"] + base[i + 1:]
                             for i, (o, v) in enumerate(zip(parsed, values)) for x in v[1:]]
        first = None
        for overrides in variants[:64]:
            cfg = compose([*hydra_groups, *overrides], return_hydra_config=bool(hydra_groups))
            check_values(cfg)
            check_special_inputs(cfg)
            first = cfg if first is None else first
            missing = [k for k in _missing_keys(cfg) if not k.startswith("hydra.")]
            if missing:
                raise ConfigError(f"missing value for {', '.join(missing)} "
                                  f"(set it on the command line: {missing[0]}=...)")
        if first is not None and "hydra" in first:
            with open_dict(first):
                del first["hydra"]
        return first
    except DeepCFError:
        raise
    except Exception as e:  # Hydra raises several types; all mean "this override is wrong"
        _space_hint([a for a in args if not a.startswith("-")])
        raise ConfigError(str(e).split("Config search path")[0]) from None


