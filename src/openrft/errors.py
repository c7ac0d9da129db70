"""The exceptions openrft raises on purpose.

Every error a user can cause derives from :class:`OpenRFTError`; the command line
turns these into a single clean line and an exit code instead of a traceback::

    OpenRFTError                  exit code 1
    ├── ConfigError               2   a job parameter is out of range or inconsistent
    ├── DataError                 3   a dataset file is unreadable or malformed
    ├── EvaluatorError            4   an evaluator cannot be loaded, or fails too often
    ├── ModelError                5   a base model / adapter cannot be found or loaded
    │   └── ExportError               an adapter cannot be exported in the format asked for
    ├── RolloutError              6   the rollout engine or an inference endpoint failed
    │   └── RolloutAborted            sampling stopped part-way for a cancel (not a failure)
    └── JobError                  7   a job id is unknown, or an operation is not allowed
        └── EarlyStopped              the job ended early on purpose (not a failure)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class OpenRFTError(Exception):
    """Base class of every error openrft raises for something the user can fix."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(OpenRFTError):
    """A job parameter is invalid (out of range, wrong type, incompatible with another)."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.field = field


class DataError(OpenRFTError):
    """A dataset is missing, unreadable, or has malformed rows."""

    exit_code = 3


class EvaluatorError(OpenRFTError):
    """An evaluator cannot be loaded, has the wrong signature, or fails too often."""

    exit_code = 4


class ModelError(OpenRFTError):
    """A base model, tokenizer or adapter cannot be found or loaded."""

    exit_code = 5


class ExportError(ModelError):
    """An adapter cannot be exported as asked (e.g. GGUF for an architecture it does not cover)."""


class RolloutError(OpenRFTError):
    """Sampling failed: the local engine or a remote inference endpoint."""

    exit_code = 6


class RolloutAborted(RolloutError):
    """Sampling stopped part-way because the job is being cancelled: nothing of the round is kept."""

    def __init__(self, message: str = "sampling stopped: the job is being cancelled"):
        super().__init__(message)


class JobError(OpenRFTError):
    """A job operation is impossible (unknown id, wrong state, ...)."""

    exit_code = 7


class DiskFullError(JobError):
    """A job or the job store could not be written for want of space: exit code 1, as the machine's
    problem rather than the job's (the README's exit codes)."""

    exit_code = 1


@contextmanager
def input_error(flag: str) -> Iterator[None]:
    """Report a problem with an input (a dataset, an evaluator) as a configuration error naming its flag,
    exit code 2, as a job's creation reports it."""
    try:
        yield
    except ConfigError:
        raise
    except OpenRFTError as exc:
        message = exc.message if exc.message.startswith("--") else f"{flag}: {exc.message}"
        raise ConfigError(message, field=flag[2:].replace("-", "_"), hint=exc.hint) from None


class EarlyStopped(JobError):
    """Training stopped early on purpose (e.g. every group had zero variance)."""
