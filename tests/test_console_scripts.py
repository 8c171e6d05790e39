"""Console scripts installed by `pip install` next to the `python -m deepcf.<command>` forms."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"deepcf-train", "deepcf-evaluate", "deepcf-recommend", "deepcf-export",
           "deepcf-report", "deepcf-serve"}


def test_every_console_script_resolves_to_a_callable():
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(declared) == SCRIPTS
    installed = {ep.name: ep for ep in entry_points(group="console_scripts")
                 if ep.name in SCRIPTS}
    assert {n: ep.value for n, ep in installed.items()} == declared  # reinstalled: make install
    for ep in installed.values():
        assert callable(ep.load())


def test_train_script_checks_overrides_first():
    # the same function as `python -m deepcf.train`: one line for a wrong key, before Hydra
    from deepcf.train import run

    assert entry_points(group="console_scripts")["deepcf-train"].load() is run


def test_a_script_runs_with_one_line_errors(tmp_path):
    exe = Path(sys.executable).parent / "deepcf-report"
    r = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("deepcf.report: error: ") and "\n" not in r.stderr.strip()


def test_a_reader_that_stops_early_ends_the_command_quietly():
    # `deepcf.report ... | head`: the closed pipe is the reader's choice, not an error to show
    prog = ("import sys\nfrom deepcf.errors import console_script\n"
            "def main(argv):\n    for i in range(200000):\n        print('row', i)\n"
            "sys.exit(console_script(main)())\n")
    r = subprocess.run(f'"{sys.executable}" -c "$PROG" | head -2; echo "status ${{PIPESTATUS[0]}}"',
                       shell=True, executable="/bin/bash", capture_output=True, text=True,
                       timeout=120, env={"PROG": prog, "PYTHONPATH": str(ROOT)})
    assert r.stdout.splitlines() == ["row 0", "row 1", "status 141"]
    assert r.stderr == ""
