"""The ONE place that imports a TFLite interpreter.

Order of preference: ``ai_edge_litert`` (LiteRT, the maintained successor of tflite-runtime)
-> ``tflite_runtime`` (older Raspberry Pi / Coral images) -> ``tensorflow.lite`` (a training
machine). Edge TPU models run through the libedgetpu delegate.
"""

from __future__ import annotations

import ctypes
import importlib
import platform
from dataclasses import dataclass
from typing import Any

from edgeseg.errors import BackendError, ModelError
from edgeseg.quiet import native_output_hidden

# Module paths tried in order; each must provide Interpreter and load_delegate.
INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")

# OS -> shared library of the Edge TPU runtime (as pycoral names them).
EDGETPU_LIBRARIES = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


@dataclass(frozen=True)
class Runtime:
    """An importable interpreter implementation."""

    name: str
    version: str
    interpreter_class: Any
    load_delegate: Any


def find_runtime(preferred: str | None = None) -> Runtime:
    """Import the first available interpreter module (or exactly `preferred`).

    Raises:
        BackendError: none of them is installed.
    """
    candidates = (preferred,) if preferred else INTERPRETER_MODULES
    for module_name in candidates:
        try:
            module = importlib.import_module(module_name.split(".")[0] if module_name == "tensorflow.lite" else module_name)
        except ImportError:
            continue
        if module_name == "tensorflow.lite":  # tf.lite is a lazily attached attribute, not a plain module
            interpreter_class, load_delegate = module.lite.Interpreter, module.lite.experimental.load_delegate
            version = module.__version__
        else:
            interpreter_class, load_delegate = module.Interpreter, module.load_delegate
            version = _package_version(module_name.split(".")[0].replace("_", "-"))
        return Runtime(module_name.split(".")[0], version, interpreter_class, load_delegate)
    raise BackendError(
        "no TFLite interpreter is installed; run `pip install ai-edge-litert`"
        " (or `pip install edgeseg[edge]`)"
    )


def _package_version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def edgetpu_delegate(runtime: Runtime) -> Any:
    """Load the Edge TPU delegate for this OS.

    Raises:
        BackendError: libedgetpu is not installed (the message says how to install it).
    """
    library = EDGETPU_LIBRARIES.get(platform.system())
    if library is None:
        raise BackendError(f"the Edge TPU is not supported on {platform.system()}; use --device cpu")
    try:
        # Checked with ctypes first: LiteRT's Delegate.__del__ raises (and prints "Exception ignored
        # ... AttributeError") after a failed load_delegate, so a missing library never reaches it.
        ctypes.CDLL(library)
        return runtime.load_delegate(library)
    except (ValueError, OSError, RuntimeError) as exc:
        raise BackendError(
            f"Edge TPU requested but {library} could not be loaded ({str(exc).splitlines()[0][:80]});"
            " install libedgetpu1-std from the Coral apt repository and plug the device in, or use --device cpu"
        ) from exc


def make_interpreter(model_content: bytes, threads: int | None = None, edgetpu: bool = False,
                     runtime: Runtime | None = None) -> tuple[Any, Runtime]:
    """Build and allocate an interpreter for a model given as bytes.

    Args:
        model_content: the .tflite file's bytes (anything appended after the flatbuffer is ignored).
        threads: CPU threads for XNNPACK; None lets the runtime choose.
        edgetpu: run through the Edge TPU delegate.
        runtime: a specific runtime (tests use this to try every installed one).

    Raises:
        BackendError: no interpreter, or the Edge TPU delegate is missing.
        ModelError: the interpreter rejects the model.
    """
    runtime = runtime or find_runtime()
    delegates = [edgetpu_delegate(runtime)] if edgetpu else None
    try:
        with native_output_hidden():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            interpreter = runtime.interpreter_class(
                model_content=model_content, num_threads=threads, experimental_delegates=delegates
            )
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else exc.__class__.__name__
        raise ModelError(f"the interpreter could not load the model ({reason}); re-export it with"
                         " `python -m convert`") from exc
    return interpreter, runtime


def make_plain_interpreter(model_content: bytes, runtime: Runtime | None = None) -> Any:
    """An allocated interpreter on the builtin kernels only, without XNNPACK or any delegate.

    For inspecting a graph (op list, tensor shapes after an invoke): a delegate replaces the ops
    it takes with one DELEGATE node and never writes resolved shapes back to its tensors.
    """
    runtime = runtime or find_runtime()
    module = importlib.import_module(runtime.interpreter_class.__module__)
    resolver = getattr(module, "OpResolverType", None)
    options = {"experimental_op_resolver_type": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES} if resolver else {}
    interpreter = runtime.interpreter_class(model_content=model_content, **options)
    interpreter.allocate_tensors()
    return interpreter


def op_details(interpreter: Any) -> list[dict]:
    """Every op of an interpreter's graph: ``op_name``, ``inputs`` and ``outputs`` tensor indices.

    Through the interpreters' private `_get_ops_details`, the only API that lists ops (all three
    runtimes have it); this is the one place that calls it.
    """
    return interpreter._get_ops_details()  # noqa: SLF001
