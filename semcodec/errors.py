"""The one exception family of semcodec.

Every failure a user can cause (a bad file, a truncated stream, a missing
model) raises a subclass of :class:`SemcodecError` whose message is a complete
sentence a user understands. The CLI prints that message on one line and exits
with a non-zero status; it never shows a traceback for these.
"""

from __future__ import annotations


class SemcodecError(Exception):
    """Base class of every error semcodec raises on purpose."""

    #: Exit status the CLI uses for this kind of error.
    exit_code = 1


class InvalidInputError(SemcodecError, ValueError):
    """An argument or input file is not acceptable (not an image, bad option value, ...)."""

    exit_code = 2


class StreamError(SemcodecError):
    """A semcodec stream cannot be decoded."""

    exit_code = 3


class TruncatedStreamError(StreamError):
    """The stream ends before the data its header or chunks announce."""


class CorruptStreamError(StreamError):
    """The stream is damaged: bad magic, checksum mismatch, impossible field values, trailing bytes."""


class UnsupportedVersionError(StreamError):
    """The stream was written with a format version this reader does not implement."""


class MissingLayerError(StreamError):
    """The stream lacks the layer the caller asked for (e.g. tokens from a pixels-only stream)."""


class ModelError(SemcodecError):
    """A model, checkpoint or calibration is missing, malformed or does not match."""

    exit_code = 4


class ModelMismatchError(ModelError):
    """The stream needs a model (or checkpoint, calibration) other than the one available."""


class ModelNotAvailableError(ModelError):
    """A model's weights or calibration cannot be found on this machine."""


class RateControlError(SemcodecError):
    """A requested rate target lies outside what the codec can reach."""

    exit_code = 5


class TargetAboveReachError(RateControlError):
    """A size target above the largest stream a rate knob reaches; ``largest`` holds that stream."""

    def __init__(self, message: str, largest: bytes = b""):
        super().__init__(message)
        self.largest = largest


class TrainingDivergedError(SemcodecError):
    """Training kept producing non-finite losses or gradients; the last checkpoint is left untouched."""


class OutputClosedError(SemcodecError):
    """The reader of the standard output (``… -o - | head -c 10``) closed the pipe before the output was written."""

    exit_code = 141     # 128 + SIGPIPE: the status a shell reports for a writer stopped by a closed pipe
