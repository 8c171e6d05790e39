"""The README and docs/ against the repository: a short README, links a fresh clone can follow,
well-formed transcript blocks, training commands that compose with today's config keys, and a
project that speaks about itself."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from deepcf.study.transcripts import check_blocks
from deepcf.training.config import check_overrides

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#+ (.+)$", re.M)
FENCE = re.compile(r"```bash\n(.*?)```", re.S)


def _git(*args: str) -> str | None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_readme_is_short_and_the_docs_pages_exist():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 320
    for page in ("models", "experiments", "data", "scale-out", "serving", "full-scale",
                 "runs-and-failures", "extending"):
        assert (ROOT / "docs" / f"{page}.md").is_file(), page


def test_links_point_to_files_a_fresh_clone_has():
    tracked = _git("ls-files")
    tracked = set(tracked.splitlines()) if tracked is not None else None
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)} -> {target}"
            assert file.is_file(), where
            rel = file.relative_to(ROOT).as_posix()
            if tracked is not None and page.relative_to(ROOT).as_posix() in tracked:
                assert rel in tracked, f"{where}: not tracked by git"
            if anchor:
                anchors = {_slug(h) for h in HEADING.findall(file.read_text())}
                assert anchor in anchors, f"{where}: no such heading"


def test_transcript_blocks_are_closed():
    for page in PAGES:
        check_blocks(page.read_text(), page)


def _train_commands(text: str):
    """The `python -m deepcf.train ...` lines of the bash blocks, continuation lines joined."""
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:3] == ["python", "-m", "deepcf.train"]:
                yield [w for w in words[3:] if w != "-m"]


def test_every_documented_training_command_composes():
    found = 0
    for page in PAGES:
        for args in _train_commands(page.read_text()):
            found += 1
            try:
                check_overrides(args)
            except Exception as e:  # one line naming the key: say which page holds it
                pytest.fail(f"{page.relative_to(ROOT)}: python -m deepcf.train "
                            f"{' '.join(args)}: {e}")
    assert found >= 30


def test_the_project_speaks_about_itself():
    pattern = "issue" + r" [0-9]|earlier " + "session"  # not spelled out: this file would match
    out = _git("grep", "-niE", pattern)
    if out is None and _git("status") is None:
        pytest.skip("not a git checkout")
    assert not out, out
