"""One-line answers when an optional part is run without its dependencies installed."""

from __future__ import annotations

import importlib.util

from edgeseg.errors import UsageError

# What each tool imports beyond the edge runtime, and the extra that installs it.
TRAINING_MODULES = {"tensorflow": "tensorflow", "keras": "keras", "yaml": "pyyaml", "matplotlib": "matplotlib",
                    "requests": "requests"}


class MissingExtra(UsageError):
    """An optional part run without its dependencies."""


def require(tool: str, modules: dict[str, str] = TRAINING_MODULES, extra: str = "train") -> None:
    """Raise MissingExtra naming what to install when any of `modules` cannot be imported."""
    missing = sorted(package for module, package in modules.items() if importlib.util.find_spec(module) is None)
    if missing:
        raise MissingExtra(f"{tool} needs {', '.join(missing)}, which this install lacks; install them with"
                           f" pip install 'edgeseg[{extra}]' (on a GPU box, not on the Pi)")


def exit_unless_installed(tool: str) -> None:
    """For a command line: one error line and the exit code when `tool`'s extra is missing."""
    try:
        require(tool)
    except MissingExtra as exc:
        import typer

        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(exc.exit_code) from None


def import_training_objects() -> None:
    """Import train's custom Keras objects (loss, metrics, RectifiedAdam) so its checkpoints load:
    the `train` package in a checkout, `edgeseg.train` in an installed wheel."""
    for package in ("train", "edgeseg.train"):
        try:
            importlib.import_module(f"{package}.losses")
            importlib.import_module(f"{package}.optim")
            return
        except ModuleNotFoundError as exc:
            if exc.name not in (package, package.split(".")[0], f"{package}.losses"):
                raise
    raise MissingExtra("the training code is not importable; run from a checkout or install edgeseg[train]")


def load_keras_model(path):
    """The one way a training checkpoint is loaded (init_from, delivery, convert, benchmarks): train's
    custom objects registered, no optimizer or loss restored (`compile=False`)."""
    import keras

    import_training_objects()
    return keras.models.load_model(path, compile=False)
