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


@pytest.mark.slow
def test_bench_families_alone_at_tiny_scale(tmp_path):
    from deepcf.bench.families import FAMILIES

    out = tmp_path / "FAMILIES.md"
    subprocess.run([sys.executable, "-m", "deepcf.bench", "--only", "families", "--family-scale",
                    "tiny", "--family-steps", "1", "--workdir", str(tmp_path / "w"), "--out",
                    str(out)], check=True, capture_output=True, timeout=900)
    text = out.read_text()
    assert "## Model families side by side" in text
    for f in FAMILIES:
        assert f"| {f.name} | `{' '.join(f.overrides) or '(defaults)'}` | `tiny`" in text


def test_families_are_registered_once_and_compose():
    from deepcf.bench.families import FAMILIES, Family, register
    from deepcf.training.config import compose

    with pytest.raises(ValueError, match="twice"):
        register(FAMILIES[0])
    assert all(isinstance(f, Family) for f in FAMILIES)
    for f in FAMILIES:
        compose([*f.overrides, "data=synthetic", f"data.source.scale={f.scale}"])


def test_a_dense_square_net_stops_fitting_where_its_memory_line_meets_ram(monkeypatch):
    import deepcf.bench.__main__ as bench
    from deepcf.bench.families import Family

    f = Family("sq", (), dense_square=True)
    # 1 GB base + 20 bytes per weight: 16 GB of RAM hold a width of sqrt(15e9 / 20)
    rows = [(f, s, {"n_items": w, "peak_rss_gb": 1 + 20e-9 * w**2})
            for s, w in (("a", 1000), ("b", 10_000))]
    monkeypatch.setattr(bench, "_ram_gb", lambda: 16.0)
    text = " ".join(bench.square_fit(rows, {}))
    assert "20 bytes per weight" in text and "1.00 GB base" in text
    assert f"about {(15e9 / 20) ** 0.5:,.0f} movies" in text


@pytest.mark.slow
def test_bench_serving_at_a_few_requests(tmp_path, cache_dir):
    # the rows=users model (EDLAE, onnxruntime) on ML-100K: training is a closed form
    out = tmp_path / "serving.md"
    subprocess.run([sys.executable, "-m", "deepcf.bench.serving", "--only", "2", "--requests",
                    "30", "--seconds", "5", "--workdir", str(tmp_path / "w"), "--cache-dir",
                    str(cache_dir), "--out", str(out)], check=True, capture_output=True,
                   timeout=900)
    text = out.read_text()
    assert "| EDLAE (rows = users, onnxruntime) | ML-100K | known user | 32 |" in text
    assert "`recommend()` once loaded" in text
