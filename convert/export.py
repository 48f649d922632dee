"""TFLite export, one row per quantisation mode (adding a mode is adding a row)."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from edgeseg.quiet import native_output_hidden

from .source import ConvertError, SourceModel


@dataclass(frozen=True)
class Mode:
    """How one quantisation mode configures the converter."""

    name: str
    optimize: bool
    supported_types: tuple = ()
    ops: tuple = (tf.lite.OpsSet.TFLITE_BUILTINS,)
    calibrated: bool = False
    integer_io: bool = False
    float_head: bool = False


MODES: dict[str, Mode] = {
    "float32": Mode("float32", optimize=False),
    "float16": Mode("float16", optimize=True, supported_types=(tf.float16,)),
    "int8": Mode("int8", optimize=True, ops=(tf.lite.OpsSet.TFLITE_BUILTINS_INT8,), calibrated=True, integer_io=True),
    # Fallback when int8 loses too much: 16-bit activations, 8-bit weights (CPU only, not Edge TPU).
    "int16x8": Mode("int16x8", optimize=True,
                    ops=(tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,),
                    calibrated=True),
    # Fallback: int8 everywhere except the ops from the last convolution to the output, which stay
    # float (float I/O). For networks whose logits are too close between classes for an int8 grid.
    "float-head": Mode("float-head", optimize=True, calibrated=True, float_head=True),
}

IO_TYPES = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}


# Graph rewrites applied on the way to TFLite (the Keras model itself is never changed).

class ClassMap(keras.layers.Layer):
    """ArgMax over classes -> uint8 class map, as the builtin TFLite ARG_MAX op.

    `keras.ops.argmax` lowers to extra bitwise ops on the TF backend that TFLite has no builtin
    kernel for, so the TF op is used directly.
    """

    def call(self, logits):
        return tf.cast(tf.math.argmax(logits, axis=-1, output_type=tf.int32), tf.uint8)


class ResizeNearest(keras.layers.Layer):
    """UpSampling2D(interpolation="nearest") as one RESIZE_NEAREST_NEIGHBOR op with static shapes.

    Keras 3 lowers UpSampling2D to EXPAND_DIMS/TILE/SHAPE/STRIDED_SLICE/RESHAPE with shapes only
    known at run time; the Edge TPU compiler maps neither TILE nor SHAPE nor dynamic shapes, so
    everything after the first upsampling would fall back to the CPU. Same values, exactly.
    """

    def __init__(self, size=(2, 2), **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(size)

    def call(self, x):
        height, width = x.shape[1] * self.size[0], x.shape[2] * self.size[1]
        return tf.image.resize(x, (height, width), method="nearest")


def with_static_upsampling(model: keras.Model) -> keras.Model:
    """A copy of `model` (same weights) whose nearest UpSampling2D layers are `ResizeNearest`."""

    def is_nearest(layer) -> bool:
        return isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation == "nearest"

    if not any(is_nearest(layer) for layer in model.layers):
        return model

    def clone(layer):
        if is_nearest(layer):
            return ResizeNearest(layer.size, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _dilated(model: keras.Model) -> bool:
    return any(max(getattr(layer, "dilation_rate", (1,))) > 1 for layer in model.layers)


def with_batch_of_one(model: keras.Model) -> keras.Model:
    """A copy of `model` (same weights) whose input batch is fixed at 1.

    With a free batch dimension the converter lowers a dilated convolution to SPACE_TO_BATCH_ND ->
    DEPTHWISE_CONV_2D -> BATCH_TO_SPACE_ND, which the Edge TPU does not map and which keeps the
    following BatchNorm from folding (an extra MUL); with a static batch it emits one convolution
    with its dilation factor. The runtime feeds one frame at a time either way."""
    image = keras.Input(batch_shape=(1, *model.input_shape[1:]), name=model.layers[0].name)
    copy = keras.models.clone_model(model, input_tensors=image)
    copy.set_weights(model.get_weights())
    return copy


def tflite_converter(source: SourceModel, argmax: bool = False, static_shapes: bool = False) -> tf.lite.TFLiteConverter:
    """A fresh TFLite converter for `source`; with `argmax`, the model ends in ArgMax -> uint8 class
    map; with `static_shapes` (Edge TPU), nearest upsampling becomes RESIZE_NEAREST_NEIGHBOR."""
    if source.keras_model is None:
        if argmax:
            raise ConvertError("--argmax needs a .keras model (a SavedModel's graph cannot be extended here)")
        return tf.lite.TFLiteConverter.from_saved_model(str(source.saved_model_dir))
    model = with_static_upsampling(source.keras_model) if static_shapes else source.keras_model
    if _dilated(model):
        model = with_batch_of_one(model)
    if argmax:
        classes = ClassMap(name="class_map")(model.outputs[0])
        model = keras.Model(model.inputs, classes, name=f"{model.name}_argmax")
    return tf.lite.TFLiteConverter.from_keras_model(model)


def make_converter(source: SourceModel, mode: Mode, io_type: str, representative, argmax: bool,
                   edgetpu: bool = False):
    converter = tflite_converter(source, argmax=argmax, static_shapes=edgetpu)
    if mode.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode.supported_types:
        converter.target_spec.supported_types = list(mode.supported_types)
    converter.target_spec.supported_ops = list(mode.ops)
    if mode.calibrated:
        converter.representative_dataset = representative
    if mode.integer_io:
        converter.inference_input_type = IO_TYPES[io_type]
        if not argmax:  # an ArgMax output is already an integer class map
            converter.inference_output_type = IO_TYPES[io_type]
    return converter


def convert(source: SourceModel, mode_name: str, io_type: str = "int8", representative=None,
            argmax: bool = False, edgetpu: bool = False) -> bytes:
    """Convert `source` in one mode and return the flatbuffer.

    Raises:
        ConvertError: the converter rejected the model (message names the mode).
    """
    mode = MODES[mode_name]
    converter = make_converter(source, mode, io_type, representative, argmax, edgetpu)
    try:
        # Keras prints every traced tensor spec; the converter's C++ prints "fully_quantize" and
        # "Statistics for quantized inputs" warnings on success
        with contextlib.redirect_stdout(io.StringIO()), native_output_hidden(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode.float_head:
                return _convert_float_head(converter, representative)
            return converter.convert()
    except ConvertError:
        raise
    except Exception as exc:  # noqa: BLE001 - the converter raises assorted types
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise ConvertError(f"TFLite conversion to {mode_name} failed: {lines[-1][:200] if lines else exc}") from exc


def head_ops(model: bytes) -> list[str]:
    """Output tensor names of the ops from the model's last CONV_2D to its output, in model order.

    Walks back from the (single) output through each op's first input until a convolution.
    """
    from edgeseg.backend import make_plain_interpreter, op_details

    interpreter = make_plain_interpreter(model)
    ops = op_details(interpreter)
    producer = {tensor: op for op in ops for tensor in op["outputs"]}
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    tensor = interpreter.get_output_details()[0]["index"]
    chain: list[str] = []
    while tensor in producer:
        op = producer[tensor]
        chain.append(names[op["outputs"][0]])
        if op["op_name"] == "CONV_2D" or len(op["inputs"]) == 0:
            return chain[::-1]
        tensor = op["inputs"][0]
    raise ConvertError("float-head fallback: no convolution found before the model output; use --fallback int16x8")


def _convert_float_head(converter, representative) -> bytes:
    """Calibrate once, then quantise with the head ops denylisted (TF's selective quantisation,
    through the public QuantizationDebugger; the first pass only finds the head's op names)."""
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative)
    float_head = head_ops(debugger.calibrated_model)
    debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=float_head)
    return debugger.get_nondebug_quantized_model()


# TFLite builtin ops the Edge TPU compiler can map (coral.ai/docs/edgetpu/models-intro, "Supported
# operations"); anything else, and everything after it, runs on the CPU.
EDGETPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS", "FULLY_CONNECTED",
    "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD",
    "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE", "STRIDED_SLICE",
    "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})


def ops_outside_edgetpu(model: bytes) -> dict[str, int]:
    """Op types of `model` the Edge TPU compiler does not map, with their counts."""
    from edgeseg.backend import make_plain_interpreter, op_details

    ops = op_details(make_plain_interpreter(model))
    return dict(Counter(op["op_name"] for op in ops if op["op_name"] not in EDGETPU_OPS))


def compile_edgetpu(model_path: Path, out_dir: Path) -> tuple[Path | None, str]:
    """Run edgetpu_compiler when installed; otherwise return the exact command to run elsewhere."""
    command = ["edgetpu_compiler", "--out_dir", str(out_dir), "--show_operations", str(model_path)]
    if shutil.which("edgetpu_compiler") is None:
        return None, " ".join(command)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConvertError(f"edgetpu_compiler failed: {(result.stderr or result.stdout).strip().splitlines()[-1]}")
    compiled = out_dir / (model_path.stem + "_edgetpu.tflite")
    return compiled, " ".join(command)
