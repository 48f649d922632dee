"""The one way edgeseg, train, convert and benchmarks write a file, so nothing is ever lost.

A file is written under a unique hidden temporary name beside its target, flushed to disk
(fsync), then renamed over the target with `os.replace`, which is atomic on one filesystem. Until
that rename the old file is untouched; on any failure (full disk, Ctrl-C, a crash in the writer)
the temporary file is removed. Two runs writing the same target each get their own temporary
name, and the last one to finish wins whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgeseg.errors import OutputError

# errno values that mean "no room": a full disk, a quota, or a file-size limit.
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


UMASK = _umask()  # read once: os.umask can only be read by setting it


def temp_path(target: Path) -> Path:
    """A new, unique, empty hidden file beside `target` with the same suffix (writers such as
    Keras and OpenCV choose the format by it). Its permissions are those `target` has, or for a new
    file what open() would give (0666 less the umask), not mkstemp's private 0600: a model or video
    written here must stay readable by the service user that runs it."""
    target = Path(target)
    handle, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".partial{target.suffix}", dir=target.parent)
    try:
        mode = target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~UMASK
        os.fchmod(handle, mode)
    finally:
        os.close(handle)
    return Path(name)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def commit(tmp: Path, target: Path) -> None:
    """fsync `tmp`, rename it over `target`, fsync the folder (so the rename itself survives power loss)."""
    fsync_file(tmp)
    os.replace(tmp, target)
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder; the rename is done
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path to write `target` through; commit it when the block ends normally.

    Raises:
        OutputError: the folder cannot be written or the disk is full (the message names the disk);
            the old `target`, if any, is kept and the temporary file removed.
    """
    target = Path(target)
    check_target(target)
    try:
        tmp = temp_path(target)
    except OSError as exc:
        raise output_error(target, exc) from exc
    try:
        yield tmp
        commit(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(target, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def check_target(target: Path) -> None:
    """Raise OutputError unless `target` could be written: its folder exists (or is created) and is
    writable, and `target` is not a folder."""
    target = Path(target)
    if target.is_dir():
        raise OutputError(f"output {target} is a folder; pass a file name such as {target / 'out'}{target.suffix}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output folder {target.parent} cannot be created ({exc.strerror}); choose another output") from exc
    if not os.access(target.parent, os.W_OK):
        raise OutputError(f"output folder {target.parent} is not writable; choose another output")


def output_error(target: Path, exc: OSError) -> OutputError:
    """The one-line error for a failed write of `target`, naming the disk when it is full."""
    if exc.errno in NO_SPACE:
        return OutputError(disk_full_message(target))
    return OutputError(f"cannot write {target} ({exc.strerror or exc}); choose another output")


def disk_full_message(target: Path) -> str:
    folder = Path(target).parent
    try:
        free = shutil.disk_usage(folder).free
        room = f"{free / 2**20:.1f} MiB free"
    except OSError:
        room = "no room"
    return (f"cannot write {target}: the disk holding {mount_point(folder)} is full ({room});"
            " free some space or choose an output on another disk (any older file there was kept)")


def mount_point(folder: Path) -> Path:
    path = Path(folder).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path
