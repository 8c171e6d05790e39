"""Progress that fits the terminal: Rich's bar when the trainer shows a bar (a terminal), else
one line per epoch (CI, SLURM logs), never a flood of bar redraws."""

from __future__ import annotations

import re

import pytest
from pytorch_lightning.callbacks import RichProgressBar

from deepcf.training.callbacks import EpochLines, epoch_line, progress
from deepcf.training.train import train


def test_a_terminal_gets_rich_and_a_log_gets_lines():
    assert isinstance(progress(enabled=True), RichProgressBar)
    assert isinstance(progress(enabled=False), EpochLines)


def test_the_line_format():
    line = epoch_line(2, 20, {"train/loss": 0.81234, "val/rmse": 0.98765}, 4.06)
    assert line == "epoch 3/20  train/loss 0.8123  val/rmse 0.9877  (4.1 s)"
    assert epoch_line(0, -1, {}, 0.0) == "epoch 1  (0.0 s)"


@pytest.mark.parametrize("every", [1, 2])
def test_a_non_interactive_run_prints_one_line_per_epoch(make_cfg, capfd, every):
    m = train(make_cfg("data=synthetic", "data.source.scale=tiny", "model.net.hidden=[16]",
                       "trainer.max_epochs=3", "logger=none", "callbacks.onnx_export=null",
                       "callbacks.early_stopping=null", f"trainer.check_val_every_n_epoch={every}"))
    out = capfd.readouterr()
    lines = [x for x in out.out.splitlines() if x.startswith("epoch ")]
    assert len(lines) == m["epochs"] == 3
    for i, x in enumerate(lines, 1):
        # an epoch without a validation shows none (not the last one's value again)
        val = r"  val/rmse \d+\.\d{4}" if i % every == 0 else ""
        assert re.fullmatch(rf"epoch {i}/3  train/loss \d+\.\d{{4}}{val}  \(\d+\.\d s\)", x), x
    assert "\r" not in out.out + out.err  # no bar redraws
