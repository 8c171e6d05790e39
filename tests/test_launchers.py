"""Cluster launchers: `hydra/launcher=submitit_slurm` composes to the SLURM submission deepcf
means (checked on the sbatch script submitit writes, without submitting: no SLURM here), and
`hydra/launcher=submitit_local` runs a sweep's jobs in parallel processes, one output each."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from deepcf.errors import ConfigError
from deepcf.training.config import check_overrides, compose


class Submitted(Exception):
    pass


def sbatch_script(tmp_path, monkeypatch, *overrides: str) -> str:
    """The sbatch script hydra-submitit-launcher would submit for a 2-job sweep."""
    import submitit.slurm.slurm as slurm
    from hydra.utils import instantiate

    cfg = compose(["hydra/launcher=submitit_slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.job.name = "train"
    HydraConfig().set_config(cfg)
    seen = []

    def submit(self, command):  # what sbatch would receive; nothing is submitted
        seen.append(self._make_submission_file_text(command, "uid"))
        raise Submitted

    monkeypatch.setattr(slurm.SlurmExecutor, "__init__", _no_srun_check(slurm.SlurmExecutor))
    monkeypatch.setattr(slurm.SlurmExecutor, "_submit_command", submit)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    with pytest.raises(Submitted):
        launcher.launch([["seed=1"], ["seed=2"]], initial_job_idx=0)
    return seen[0]


def _no_srun_check(cls):
    init = cls.__init__

    def patched(self, *args, **kwargs):
        import shutil

        real = shutil.which
        shutil.which = lambda name, *a, **k: f"/usr/bin/{name}" if name == "srun" else real(name)
        try:
            init(self, *args, **kwargs)
        finally:
            shutil.which = real

    return patched


def test_a_multi_node_ddp_job_gets_one_task_per_gpu(tmp_path, monkeypatch):
    s = sbatch_script(tmp_path, monkeypatch, "trainer=ddp", "trainer.devices=4",
                      "trainer.num_nodes=2", "hydra.launcher.partition=gpu",
                      "hydra.launcher.timeout_min=90")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --time=90", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=32GB", "#SBATCH --array=0-1%2", "#SBATCH --job-name=deepcf-train"):
        assert line in s.splitlines(), (line, s)
    assert "srun" in s and "submitit.core._submit" in s


def test_a_cpu_job_asks_for_no_gpu(tmp_path, monkeypatch):
    s = sbatch_script(tmp_path, monkeypatch, "trainer=ddp_cpu")
    assert "#SBATCH --ntasks-per-node=2" in s and "#SBATCH --nodes=1" in s
    assert "gpus" not in s and "--partition" not in s  # the cluster's default partition


def test_launcher_overrides_are_checked_up_front():
    assert check_overrides(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"])
    with pytest.raises(ConfigError, match="submitit_slrm"):
        check_overrides(["hydra/launcher=submitit_slrm"])
    with pytest.raises(ConfigError, match="partitio"):
        check_overrides(["hydra/launcher=submitit_slurm", "hydra.launcher.partitio=gpu"])


def test_submitit_local_runs_two_jobs_in_parallel(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "deepcf.train", "-m", "hydra/launcher=submitit_local",
                        "data=synthetic", "trainer.max_epochs=1", "model.net.hidden=[16]",
                        "logger=csv", "seed=1,2", f"hydra.sweep.dir={sweep}",
                        f"paths.cache_dir={cache_dir}", "trainer.accelerator=cpu"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [p.name for p in runs] == ["0", "1"]
    assert sorted(json.loads((p / "metrics.json").read_text())["seed"] for p in runs) == [1, 2]
    assert all((p / "model.onnx").is_file() for p in runs)
    # two submitit jobs (two processes), each with its own log
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and len({p.parent for p in logs}) == 2
