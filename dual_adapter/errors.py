"""Errors raised by the library.

Every error a user can cause (bad input, missing files, mismatched weights) is a
:class:`DualAdapterError` whose message names the input and what was expected, so
that ComfyUI shows a readable message instead of a stack trace from deep inside torch.
"""


class DualAdapterError(ValueError):
    """A user-facing error: the message names the offending input and what was expected."""


class InterruptedByUser(RuntimeError):
    """Raised by a progress callback to stop long work (training, sampling) cleanly.

    Trainers catch it, write their last checkpoint, and re-raise it.
    """


class TrainingDiverged(DualAdapterError):
    """Training produced a non-finite loss or non-finite weights, or weights far outside the run's history
    (:class:`dual_adapter.training.SanityCheck`). Nothing of it is written: the last checkpoint on disk (a
    sane one) is kept."""


class DiskFull(DualAdapterError):
    """A write failed because the disk (or the user's quota) is full. ``path`` is the file that could not be
    written; atomic writes leave the previous version of it intact."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path
