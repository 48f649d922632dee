"""The model being converted: a Keras 3 `.keras` file or a SavedModel folder."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from edgeseg.errors import UsageError
from edgeseg.extras import load_keras_model
from edgeseg.labels import LabelSet, builtin_for, read_labels_json


class ConvertError(UsageError, ValueError):
    """Bad input to the converter; the message says how to fix it."""


def as_float32(model: keras.Model) -> keras.Model:
    """A float32 copy (same weights) of a model trained with mixed precision, else `model` itself.

    `--mixed-precision` training keeps float32 weights but computes in float16; exporting that
    graph would put float16 casts into every TFLite model. The exports are built from float32,
    exactly like a model trained without it.
    """
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        return model

    def clone(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


@dataclass
class SourceModel:
    """A loaded model plus what the converter needs to know about it."""

    path: Path
    sha256: str
    height: int
    width: int
    num_classes: int
    predict: Callable[[np.ndarray], np.ndarray]  # float32 (N, H, W, 3) -> logits (N, H, W, C)
    keras_model: keras.Model | None
    saved_model_dir: Path | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


def load_source(path: Path) -> SourceModel:
    """Load a `.keras` file or a SavedModel folder with a static ``(1|None, H, W, 3)`` input.

    Raises:
        ConvertError: missing file, not a Keras model / SavedModel, dynamic spatial shape.
    """
    path = Path(path)
    if not path.exists():
        raise ConvertError(f"model {path} does not exist; pass RUN/best.keras from `python -m train`")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ConvertError(f"{path} is a folder without saved_model.pb; pass a .keras file or a SavedModel folder")
        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures.get("serving_default")
        if signature is None:
            raise ConvertError(f"SavedModel {path} has no serving_default signature; re-export it with model.export()")
        spec = list(signature.structured_input_signature[1].values())[0]
        height, width = _static_hw(path, tuple(spec.shape))
        input_name = list(signature.structured_input_signature[1])[0]

        def predict(batch: np.ndarray) -> np.ndarray:
            outputs = signature(**{input_name: tf.constant(batch)})
            return list(outputs.values())[0].numpy()

        num_classes = int(predict(np.zeros((1, height, width, 3), np.float32)).shape[-1])
        return SourceModel(path, _sha256(path), height, width, num_classes, predict, None, path)
    if path.suffix not in (".keras", ".h5"):
        raise ConvertError(f"{path} is not a Keras model (.keras) or SavedModel folder; pass RUN/best.keras")
    try:
        model = as_float32(load_keras_model(path))
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        raise ConvertError(f"{path} could not be loaded as a Keras model ({exc.__class__.__name__});"
                           " pass a .keras file saved by `python -m train`") from exc
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConvertError(f"{path} has {len(model.inputs)} inputs and {len(model.outputs)} outputs;"
                           " a segmentation model needs one image input and one output")
    height, width = _static_hw(path, tuple(model.inputs[0].shape))
    out_shape = tuple(model.outputs[0].shape)
    if len(out_shape) != 4:
        raise ConvertError(f"{path} outputs shape {out_shape}; expected (N, H, W, classes) logits")

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model(batch, training=False))

    return SourceModel(path, _sha256(path), height, width, int(out_shape[-1]), predict, model)


def _static_hw(path: Path, shape: tuple) -> tuple[int, int]:
    if len(shape) != 4 or shape[-1] != 3:
        raise ConvertError(f"{path} input shape {shape} is not an image (N, H, W, 3)")
    if shape[1] is None or shape[2] is None:
        raise ConvertError(f"{path} has a dynamic spatial input shape {shape}; rebuild it with a fixed"
                           " size, e.g. keras.Input((192, 256, 3)) - TFLite and the Edge TPU need static shapes")
    return int(shape[1]), int(shape[2])


def labels_for(source: SourceModel, eval_root: Path | None) -> LabelSet:
    """Labels of the model: ``labels.json`` written by `train` beside the checkpoint, else the
    evaluation dataset's ``classes.csv``, else a builtin set with the same class count."""
    from edgeseg.dataset import resolve_labels

    run_labels = source.path.parent / "labels.json"
    if run_labels.is_file():
        labels = read_labels_json(run_labels)
    elif eval_root is not None:
        labels = resolve_labels(eval_root)
    else:
        labels = builtin_for(source.num_classes)
    if labels.num_classes != source.num_classes:
        labels = builtin_for(source.num_classes)
    return labels
