"""Keep library chatter (LiteRT's "Created TensorFlow Lite XNNPACK delegate", the TFLite
converter's C++ prints, OpenCV's backend warnings) off the console unless --verbose is given:
stdout is for results, stderr for one-line status and errors."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

VERBOSE_ENV = "EDGESEG_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_verbose(on: bool) -> None:
    """Called by the command lines' --verbose."""
    os.environ[VERBOSE_ENV] = "1" if on else ""
    if not on:
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # read when OpenCV loads
        if "cv2" in sys.modules:  # already loaded (the command lines import it before --verbose is
            # parsed): its backends' warnings ("write FFmpeg: Failed to write frame" on every frame
            # once a disk fills) go through this level
            import cv2

            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        # OpenCV's FFmpeg backend reads this when it opens its first file: -8 (AV_LOG_QUIET) keeps
        # FFmpeg's decoder complaints ("error while decoding MB ...", "moov atom not found") off the
        # console; the source reports a damaged file in its own one-line error.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


@contextlib.contextmanager
def native_output_hidden() -> Iterator[None]:
    """Hide what C/C++ code writes to file descriptors 1 and 2 inside the block (Python-level
    exceptions still propagate; their messages are ours to print). A no-op with --verbose."""
    if verbose():
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
