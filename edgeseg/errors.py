"""Errors raised by edgeseg library code.

Library code raises these; only the command-line layer turns them into a one-line message and
a non-zero exit code. Every message says what is wrong *and* how to fix it.
"""

from __future__ import annotations


class EdgesegError(Exception):
    """Base class of every error edgeseg reports to users."""

    exit_code: int = 1


class ModelError(EdgesegError):
    """The model file is missing, unreadable, not TFLite, or has an unsupported signature."""

    exit_code = 2


class InputError(EdgesegError):
    """An image, video, folder or camera that cannot be read."""

    exit_code = 3


class OutputError(EdgesegError):
    """An output path that cannot be written."""

    exit_code = 4


class BackendError(EdgesegError):
    """No interpreter, or a delegate (Edge TPU) that cannot be loaded."""

    exit_code = 5


class StreamError(InputError):
    """A source stopped mid-stream; `frames_done` frames were processed and saved."""

    def __init__(self, message: str, frames_done: int = 0) -> None:
        super().__init__(message)
        self.frames_done = frames_done
