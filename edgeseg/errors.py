"""Errors raised by edgeseg library code.

Library code raises these; only the command-line layer turns them into a one-line message and
a non-zero exit code. Every message says what is wrong *and* how to fix it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM (systemd, docker stop), raised in the main thread by
    `signals_interrupt`; `signal_name` says which. A KeyboardInterrupt, so code that handles
    Ctrl-C handles both."""

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `Interrupted` once in the main thread; a second
    signal while the first is being handled (outputs being finished) is ignored, so finishing a
    recording cannot itself be cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum, _frame):
        if raised:
            return
        raised.append(signum)
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
