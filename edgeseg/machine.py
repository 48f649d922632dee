"""The host's CPU as benchmarks and training throughput record it: model name and the SIMD
extensions that decide int8 against float speed (no figure is comparable without them)."""

from __future__ import annotations

import platform
import re
from pathlib import Path

__all__ = ["SIMD_FLAGS", "cpu_features", "cpu_model", "read_quietly"]


def read_quietly(path: str) -> str | None:
    """A small system file's text, stripped; None where it cannot be read."""
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def cpu_model(info: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo, or from `info`, a text in its format (ARM boards: their
    model or hardware line)."""
    info = (read_quietly("/proc/cpuinfo") or "") if info is None else info
    for key in ("model name", "Model", "Hardware", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", info, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


# Instruction-set extensions that decide int8 vs float speed: VNNI / dot-product instructions make
# int8 convolutions several times faster than float; without them int8 may be no faster.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve")


def cpu_features(info: str | None = None) -> list[str]:
    """The SIMD_FLAGS this CPU reports in /proc/cpuinfo, or in `info` (x86 'flags', ARM 'Features')."""
    info = (read_quietly("/proc/cpuinfo") or "") if info is None else info
    match = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", info, re.MULTILINE)
    present = set(match.group(1).split()) if match else set()
    return [flag for flag in SIMD_FLAGS if flag in present]
