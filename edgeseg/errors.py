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


class UsageError(EdgesegError):
    """Options, a config file or a cluster description that cannot work as given."""

    exit_code = 2


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


_RECEIVED: list[list[int]] = []  # per active `signals_interrupt` block: the signals it received


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `Interrupted` once in the main thread; a second
    signal while the first is being handled (outputs being finished) is ignored, so finishing a
    recording cannot itself be cut short.

    CPython drops an exception raised by a signal handler while a ``__del__`` method or a weakref
    callback runs ("Exception ignored in ..."): TensorFlow and Keras run such finalisers all the time.
    Long loops therefore call `raise_if_interrupted` at safe points (every training step, every
    frame), which raises the received signal again if its first raise was lost that way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def handler(signum, _frame):
        if raised:
            return
        raised.append(signum)
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    _RECEIVED.append(raised)
    try:
        yield
    finally:
        _RECEIVED.remove(raised)
        for sig, old in previous.items():
            signal.signal(sig, old)


def raise_if_interrupted() -> None:
    """Raise `Interrupted` if the innermost `signals_interrupt` block has received SIGINT or SIGTERM.

    Where the handler's own raise reached the caller, this point is never reached; where CPython lost
    it (the signal came during a finaliser), this delivers it. Outside a block it does nothing."""
    if _RECEIVED and _RECEIVED[-1] and threading.current_thread() is threading.main_thread():
        raise Interrupted(signal.Signals(_RECEIVED[-1][0]).name)


def fail(message: str, code: int = 2) -> None:
    """One error line on stderr and exit with `code`: the ending every command line shares."""
    import typer

    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def reports_errors(command):
    """Decorator for the commands of all four command lines: an EdgesegError becomes one line and
    its exit code, SIGINT/SIGTERM become `Interrupted` (live recordings are kept: `pipeline.run`)
    and end with one line and 130/143; no traceback."""
    import functools

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with signals_interrupt():
                return command(*args, **kwargs)
        except EdgesegError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt as exc:
            name = getattr(exc, "signal_name", "SIGINT")
            fail(f"interrupted by {name}; nothing was kept of this run's output (a video file is only written"
                 " whole: use --max-frames or --duration for part of one)", 143 if name == "SIGTERM" else 130)

    return wrapper
