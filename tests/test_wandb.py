"""W&B for sweeps, offline (no API key here): a 2-job multirun lands in one group, job type
train, with the resolved config, per-epoch val curves, the final metrics in the summary, the
loss-curve image and the ONNX model + sidecar as an artifact; `deepcf.evaluate RUN --wandb` is
a run of its own in the same group (job type eval); `deepcf.report` draws the sweep. Checked on
what W&B wrote into the run dirs (the record log `wandb sync` would upload)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import wandb

from tests.helpers import wandb_offline_run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir):
    tmp = tmp_path_factory.mktemp("wandb-sweep")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp), WANDB_SILENT="true")  # no API key, no ~/.netrc: offline by default
    out = tmp / "sweep"
    r = subprocess.run([sys.executable, "-m", "deepcf.train", "-m", "data=synthetic",
                        "model.net.hidden=[16]", "trainer.max_epochs=2", "logger=many",
                        "logger.wandb.log_model_artifact=true", "seed=1,2",
                        f"hydra.sweep.dir={out}", f"paths.cache_dir={cache_dir}",
                        "trainer.accelerator=cpu"],
                       cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_a_sweep_is_one_group_with_curves_summary_image_and_artifact(sweep):
    runs = [wandb_offline_run(sweep / j)["runs"] for j in ("0", "1")]
    assert [len(r) for r in runs] == [1, 1]
    (a,), (b,) = runs
    assert a["group"] == b["group"] == "sweep" and a["id"] != b["id"]
    assert a["job_type"] == b["job_type"] == "train"
    for job, w in (("0", a), ("1", b)):
        run = sweep / job
        m = json.loads((run / "metrics.json").read_text())
        # the resolved config
        assert w["config"]["seed"] == m["seed"] and w["config"]["model"]["net"]["hidden"] == [16]
        # per-epoch val curve: what the CSV log holds
        csv = pd.read_csv(run / "csv" / "metrics.csv")
        want = csv["val/rmse"].dropna().tolist()
        got = [h["val/rmse"] for h in w["history"] if "val/rmse" in h]
        assert len(got) == 2 and got == pytest.approx(want)
        # the final metrics in the summary
        for key in ("test/rmse", "test/mae", "val/rmse_best"):
            assert w["summary"][key] == pytest.approx(m[key])
        assert w["summary"]["status"] == "ok"
        # the loss-curve image
        images = [f for f in w["files"] if f.startswith("media/images/loss_curve")]
        assert len(images) == 1 and (w["dir"] / "files" / images[0]).is_file()
        assert w["summary"]["loss_curve/_type"] == "image-file"
        # the model as an artifact: one name, so the sweep's runs are its versions
        (art,) = w["artifacts"]
        assert art["name"] == "deepcf-custom" and art["type"] == "model"
        assert art["files"] == {"model.onnx": (run / "model.onnx").stat().st_size,
                                "model.deepcf.npz": (run / "model.deepcf.npz").stat().st_size}
        assert art["metadata"]["test/rmse"] == pytest.approx(m["test/rmse"])
        assert json.loads((run / "wandb.json").read_text())["id"] == w["id"]


def test_no_artifact_unless_asked(make_cfg, monkeypatch, tmp_path):
    from deepcf.training.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    train(make_cfg("data=synthetic", "data.source.scale=tiny", "model.net.hidden=[8]",
                   "trainer.max_epochs=1", "logger=wandb"))
    wandb.teardown()  # in this process: W&B's service writes the run log after finish()
    (w,) = wandb_offline_run(tmp_path / "run")["runs"]
    assert w["artifacts"] == [] and w["job_type"] == "train" and not w["group"]  # no multirun
    assert "test/rmse" in w["summary"]


def test_evaluate_logs_its_own_run_in_the_training_runs_group(sweep, monkeypatch, capsys):
    from deepcf.evaluate import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(sweep.parent / "wandb-data"))
    run = sweep / "0"
    train_id = json.loads((run / "wandb.json").read_text())["id"]
    r = main([str(run), "--wandb"])
    wandb.teardown()  # in this process: W&B's service writes the run log after finish()
    assert "wandb: eval run" in capsys.readouterr().out
    runs = wandb_offline_run(run)["runs"]
    (ev,) = [w for w in runs if w["job_type"] == "eval"]
    assert ev["group"] == "sweep" and ev["config"]["train_run_id"] == train_id
    assert ev["summary"]["test/rmse"] == pytest.approx(r["rating"]["rmse"])
    assert ev["summary"]["test/recall@10"] == pytest.approx(r["ranking"]["recall@10"])


def test_evaluate_wandb_needs_a_run_dir(capsys):
    from deepcf.evaluate import main

    with pytest.raises(SystemExit) as e:
        main(["--model", "m.onnx", "--input", "a.npz", "--target", "b.npz", "--wandb"])
    assert e.value.code == 2 and "--wandb needs a RUN_DIR" in capsys.readouterr().err


def test_report_on_the_sweep(sweep, tmp_path):
    from deepcf.report import main

    files = main([str(sweep), "--out", str(tmp_path)])
    assert files["curves"].stat().st_size > 0 and files["bars"].stat().st_size > 0
    rows = [x for x in files["table"].read_text().splitlines() if x.startswith("| `")]
    assert len(rows) == 1 and rows[0].rstrip().endswith("| 1/2 |")  # one config, two seeds
