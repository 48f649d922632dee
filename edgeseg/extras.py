"""One-line answers when an optional part is run without its dependencies installed."""

from __future__ import annotations

import importlib.util

from edgeseg.errors import EdgesegError

# What each tool imports beyond the edge runtime, and the extra that installs it.
TRAINING_MODULES = {"tensorflow": "tensorflow", "keras": "keras", "yaml": "pyyaml", "matplotlib": "matplotlib",
                    "requests": "requests"}


class MissingExtra(EdgesegError):
    exit_code = 2


def require(tool: str, modules: dict[str, str] = TRAINING_MODULES, extra: str = "train") -> None:
    """Raise MissingExtra naming what to install when any of `modules` cannot be imported."""
    missing = sorted(package for module, package in modules.items() if importlib.util.find_spec(module) is None)
    if missing:
        raise MissingExtra(f"{tool} needs {', '.join(missing)}, which this install lacks; install them with"
                           f" pip install 'edgeseg[{extra}]' (on a GPU box, not on the Pi)")
