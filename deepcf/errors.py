"""Errors that reach the user as one clear line (principle 5: errors at the door)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager


class DeepCFError(Exception):
    """A problem with the user's input (file, config, model/data mismatch).

    The message is complete on its own: it names the file, line or key. The command-line entry
    points print it as one line and exit with status 2 instead of showing a traceback.
    """


class DataError(DeepCFError):
    """A ratings or titles file that cannot be used as it is."""


class OutputError(DeepCFError):
    """A file a command may not write (it exists, it is an input) or could not write (a full
    disk, a denied folder)."""


class ConfigError(DeepCFError):
    """A config value that cannot work."""


class CheckpointError(DeepCFError):
    """A file that is not a deepcf checkpoint, or a checkpoint that does not fit the data."""


class UnknownUserError(DeepCFError):
    """A user id that neither the model nor the ratings know."""


class UnknownMovieError(DataError):
    """A movie id the model never saw in training."""


class ModelDataMismatch(DeepCFError):
    """An ONNX model, its sidecar and the ratings disagree on the movies (or users)."""


class DivergedModel(DeepCFError):
    """A model whose outputs are not finite (training diverged): nothing to export or serve."""


class ExportParityError(DeepCFError):
    """onnxruntime's outputs differ from PyTorch's by more than the allowed tolerance."""


@contextmanager
def one_line_errors(prog: str = "deepcf"):
    """Turn DeepCFError into `prog: error: message` on stderr and exit status 2."""
    try:
        yield
    except DeepCFError as e:
        msg = " ".join(str(e).split())
        print(f"{prog}: error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None


class RunLocked(DeepCFError):
    """A run dir that another deepcf process is writing (training or resuming)."""


class TargetNotAllowed(ConfigError):
    """A `_target_` in a run dir's config that deepcf will not instantiate without permission."""


class TrainingDiverged(Exception):
    """A run whose final metrics are not finite (exit status 3, see EXIT_DIVERGED)."""


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) during training; the message says how to resume (exit status 130)."""


# exit statuses of the commands (docs/runs-and-failures.md)
EXIT_BAD_INPUT = 2  # a DeepCFError: bad file, config, checkpoint; one line on stderr
EXIT_DIVERGED = 3  # training diverged: metrics.json has "status": "diverged"
EXIT_INTERRUPTED = 130  # Ctrl-C: the last checkpoint is kept, one line says how to resume
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away (`... | head`)


def console_script(main):
    """The console-script entry (pyproject [project.scripts]) of a command whose `main(argv)`
    returns its result: the arguments from sys.argv, exit status 0 once `main` returns (its
    errors exit by themselves: 2 for bad input)."""

    def run() -> int:
        try:
            main(sys.argv[1:])
            sys.stdout.flush()
        except BrokenPipeError:  # `deepcf.report ... | head`: stop quietly, as a Unix tool does;
            # stdout goes to devnull so that the interpreter's final flush cannot fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        return 0

    return run
