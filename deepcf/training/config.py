"""Config plumbing shared by the commands: where the configs live, the one place that composes
them (`compose`), instantiation with one-line errors naming the key, and the up-front check of
command-line overrides (principle 5)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

import deepcf.training.resolvers  # noqa: F401  (registers the config resolvers)
from deepcf.compat import check_moved
from deepcf.errors import ConfigError, DeepCFError

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
            first = cfg if first is None else first
            missing = [k for k in _missing_keys(cfg) if not k.startswith("hydra.")]
            if missing:
                raise ConfigError(f"missing value for {', '.join(missing)} "
                                  f"(set it on the command line: {missing[0]}=...)")
        if first is not None and "hydra" in first:
            with open_dict(first):
                del first["hydra"]
        return first
    except ConfigError:
        raise
    except Exception as e:  # Hydra raises several types; all mean "this override is wrong"
        raise ConfigError(str(e).split("Config search path")[0]) from None


