"""`python -m deepcf.train experiment=scheduler_lr`: train one run (or `-m` a sweep).

The command line of deepcf.training.train: overrides are checked before Hydra runs (one line
naming a wrong key), and a DeepCFError ends the run with one line and exit status 2.

Exit statuses: 0 every run ok; 2 bad input or config (one line); 3 a run diverged (its
metrics.json has "status": "diverged"; in a `-m` sweep every job still runs and the sweep exits 3
at the end if any job diverged); 130 Ctrl-C (the last checkpoint is kept and one line says how
to resume); 1 an unexpected error (a traceback: a bug to report).

`ckpt_path=last | RUN_DIR | RUN/checkpoints/NAME.ckpt` resumes that run in its own run dir.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from deepcf.errors import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    ConfigError,
    TrainingInterrupted,
    one_line_errors,
)
from deepcf.training.config import CONF_DIR, check_overrides
from deepcf.training.rundir import is_rank_zero, refuse_finished, resolve_resume

PROG = "deepcf.train"
DIVERGED: list[str] = []  # run dirs of the jobs of this process whose training diverged


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    with one_line_errors(PROG):
        # start-up: torch and Lightning load only after the overrides are checked
        from deepcf.training.train import train

        try:
            metrics = train(cfg)
        except TrainingInterrupted as e:
            print(f"{PROG}: interrupted: {e}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_INTERRUPTED) from None
        if metrics.get("status") == "diverged":
            DIVERGED.append(str(metrics.get("run_dir")))
        value = metrics.get(metrics.get("optimized_metric") or "")
        return None if value is None else float(value)


def resume_args(argv: list[str], cfg) -> list[str]:
    """With ckpt_path=..., the Hydra overrides that make the run dir the resumed run's own
    (its original .hydra/ is kept: the resume's goes to .hydra/resume-<time>)."""
    if cfg is None or not cfg.get("ckpt_path") or not is_rank_zero():
        return []  # DDP ranks > 0 get the run dir from Lightning
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError("ckpt_path cannot be used with -m (resume one run at a time)")
    _, run_dir = resolve_resume(cfg.ckpt_path, cfg.paths.log_dir, cfg.task_name)
    quote = '"' if "'" in str(run_dir) else "'"  # a path with spaces is one override value
    return [f"hydra.run.dir={quote}{run_dir}{quote}",
            "hydra.output_subdir=.hydra/resume-${now:%Y-%m-%d}_${now:%H-%M-%S}"]


def check_run_dir(argv: list[str], cfg) -> None:
    """`hydra.run.dir=<a dir holding a run>` for a new run: refused in one line before Hydra
    writes its .hydra/ files there (a resume names its run with ckpt_path= instead)."""
    if cfg is None or cfg.get("ckpt_path") or any(a in ("-m", "--multirun") for a in argv):
        return
    for a in argv:
        # DDP ranks > 0 are started by Lightning with rank 0's run dir: not a new run
        if a.startswith("hydra.run.dir=") and is_rank_zero():
            refuse_finished(a.split("=", 1)[1].strip("'\""))


def check_launcher(argv: list[str]) -> None:
    """submitit's SLURM executor needs SLURM's commands: without them, one line, not its
    traceback after the sweep has started."""
    import shutil

    multirun = any(a in ("-m", "--multirun") for a in argv)
    if multirun and "hydra/launcher=submitit_slurm" in argv and shutil.which("srun") is None:
        raise ConfigError("hydra/launcher=submitit_slurm: SLURM's srun/sbatch are not on this "
                          "machine's PATH; submit from a SLURM login node, or run the sweep "
                          "here with hydra/launcher=submitit_local")


def check_search_space(argv: list[str]) -> None:
    """hparams_search=optuna_* searches the experiment's own space
    (conf/search_space/<search>/<experiment>.yaml): without one, every trial would train the
    same model; one line saying what to add instead."""
    from pathlib import Path


    choice = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if "=" in a}
    search = choice.get("hparams_search", "")
    swept = any(v.startswith(("interval(", "choice(", "range(", "tag(")) or "," in v
                for k, v in choice.items() if not k.startswith("hydra"))
    if not search.startswith("optuna") or swept:
        return
    experiment = choice.get("experiment", "None")
    space = Path(CONF_DIR) / "search_space" / search / f"{experiment}.yaml"
    if not space.is_file():
        spaces = sorted(p.stem for p in space.parent.glob("*.yaml"))
        raise ConfigError(f"hparams_search={search} has no search space for experiment="
                          f"{experiment}: add {space.relative_to(Path(CONF_DIR).parent)} "
                          f"(spaces: {', '.join(spaces) or 'none'}) or give one on the command "
                          f"line, e.g. 'model.net.dropout=interval(0, 0.8)'")


def run() -> int:
    argv = sys.argv[1:]
    with one_line_errors(PROG):
        cfg = check_overrides(argv)
        check_run_dir(argv, cfg)
        check_launcher(argv)
        check_search_space(argv)
        sys.argv += resume_args(argv, cfg)
    try:
        main()
    except KeyboardInterrupt:  # outside fit/test (loading data, exporting)
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if DIVERGED:
        print(f"{PROG}: {len(DIVERGED)} run(s) diverged (metrics.json status \"diverged\", "
              f"exit status {EXIT_DIVERGED}): {', '.join(DIVERGED)}", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


if __name__ == "__main__":
    sys.exit(run())
