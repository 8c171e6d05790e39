"""`make bench` end to end at a small scale (slow: every measurement is its own process)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_writes_every_section_at_tiny_scale(tmp_path, cache_dir):
    out = tmp_path / "BENCH.md"
    env_cmd = [sys.executable, "-m", "deepcf.bench", "--scale", "tiny", "--dense-batches", "1",
               "--sparse-batches", "2", "--workdir", str(tmp_path / "w"), "--out", str(out)]
    subprocess.run(env_cmd, check=True, capture_output=True, timeout=900)
    text = out.read_text()
    for section in ("## Training at tiny scale", "## Data at scale", "peak RSS",
                    "deepcf sparse step, LazyAdam"):
        assert section in text, section
    scoring = tmp_path / "scoring.md"
    subprocess.run([sys.executable, "-m", "deepcf.bench.scoring", "--users", "300", "--chunks",
                    "64", "--repeats", "1", "--threads", "1", "--cache-dir", str(cache_dir),
                    "--out", str(scoring)], check=True, capture_output=True, timeout=600)
    assert "onnxruntime" in scoring.read_text()
