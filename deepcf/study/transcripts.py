"""Command-written transcripts in markdown:
`python -m deepcf.study.transcripts README.md docs/*.md`.

Every block

    <!-- transcript: COMMAND -->
    ...anything...
    <!-- /transcript -->

is replaced by a fenced block holding `$ COMMAND` and what the command printed (`--match TEXT`:
only the blocks whose command contains TEXT), run now with bash in the repository root. Files
are taken in the order given and each file's blocks in file order, so a later command can use
what an earlier one made (`make train` in README.md, then `make evaluate` in docs/serving.md).
Absolute paths under the repository are shown relative to it. A file is written after each of
its blocks, so a command that fails stops the run with its own block (and those after it)
untouched. So every measured number in the transcripts of README.md and docs/ is one a command
printed, and `make readme` prints them again.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from deepcf.errors import DeepCFError, one_line_errors

BLOCK = re.compile(r"<!-- transcript: (?P<cmd>.+?) -->\n.*?<!-- /transcript -->", re.S)
OPENING = re.compile(r"<!-- transcript: ")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run(cmd: str, root: Path, timeout: int) -> str:
    """What `cmd` prints (stdout and stderr, in order), paths under `root` made relative."""
    print(f"+ {cmd}", flush=True)
    # a command run from `make readme` is not a sub-make: no "Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    p = subprocess.run(["bash", "-c", cmd], cwd=root, stdout=subprocess.PIPE, env=env,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout)
    out = ANSI.sub("", p.stdout).replace(f"{root.resolve()}/", "")
    if p.returncode != 0:
        raise DeepCFError(f"`{cmd}` exited with {p.returncode}: "
                          f"{(out.strip().splitlines() or ['no output'])[-1]}")
    return out.rstrip()


def _block(cmd: str, output: str) -> str:
    return f"<!-- transcript: {cmd} -->\n```\n$ {cmd}\n{output}\n```\n<!-- /transcript -->"


def rewrite(text: str, root: Path, timeout: int = 900, save=None, match: str | None = None) -> str:
    """`text` with every transcript block run again (only those whose command contains `match`,
    when given); `save(text)` after each block."""
    pos = 0
    while (m := BLOCK.search(text, pos)) is not None:
        if match is not None and match not in m.group("cmd"):
            pos = m.end()
            continue
        new = _block(m.group("cmd"), run(m.group("cmd"), root, timeout))
        text = text[: m.start()] + new + text[m.end():]
        pos = m.start() + len(new)
        if save is not None:
            save(text)
    return text


def check_blocks(text: str, path: Path) -> None:
    """Every `<!-- transcript: COMMAND -->` is closed by `<!-- /transcript -->` before the next
    one opens; else one line naming the unclosed block (the pattern alone would run it with the
    next block's output swallowed, or skip it without a word)."""
    starts = set()
    for m in BLOCK.finditer(text):
        if OPENING.search(text, m.start() + 1, m.end()):
            break
        starts.add(m.start())
    for m in OPENING.finditer(text):
        if m.start() not in starts:
            line = text.count("\n", 0, m.start()) + 1
            raise DeepCFError(f"{path}:{line}: a transcript block without its closing "
                              f"'<!-- /transcript -->' before the next block or the end")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m deepcf.study.transcripts",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path,
                   help="markdown files to rewrite in place, in this order")
    p.add_argument("--root", type=Path, default=Path.cwd(), help="where commands run")
    p.add_argument("--timeout", type=int, default=900, help="seconds per command")
    p.add_argument("--match", help="re-run only the blocks whose command contains this text "
                                   "(a new block, or one whose output a change affects)")
    args = p.parse_args(argv)
    with one_line_errors("deepcf.study.transcripts"):
        # every file and the match are checked before the first command runs: a typo in the
        # last name must not cost the runs before it
        missing = [str(f) for f in args.files if not f.is_file()]
        if missing:
            raise DeepCFError(f"{missing[0]}: no such file")
        texts = {f: f.read_text() for f in args.files}
        for f, text in texts.items():
            check_blocks(text, f)
        counts = {f: sum(args.match is None or args.match in c for c in BLOCK.findall(text))
                  for f, text in texts.items()}
        if args.match is not None and not any(counts.values()):
            raise DeepCFError(f"--match {args.match!r}: no transcript command in "
                              f"{', '.join(map(str, args.files))} contains it")
        for f, text in texts.items():
            if counts[f]:
                rewrite(text, args.root, args.timeout, save=f.write_text, match=args.match)
            print(f"{f}: {counts[f]} transcript(s) written", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
