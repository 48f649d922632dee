"""Operation count of a TFLite graph and this machine's measured peak, for a roofline figure.

The peak is measured once per run with a large 3x3 convolution (the op that dominates a U-Net)
in float32 and int8, from the probe models in `benchmarks/probes/` (built by
`python -m benchmarks.roofline` on a machine with TensorFlow; committed so a Pi needs none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.backend import make_interpreter, make_plain_interpreter, op_details

from .timing import time_calls

PROBES = Path(__file__).parent / "probes"
PROBE_SHAPE = (1, 112, 112, 128)  # input of the probe convolution; 128 -> 128 channels, 3x3
PROBE_FILES = {"float32": PROBES / "conv3x3_float32.tflite", "int8": PROBES / "conv3x3_int8.tflite"}


def graph_ops(interpreter) -> int:
    """2 x multiply-accumulates of the convolutions and fully connected layers of a graph."""
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    total = 0
    for op in op_details(interpreter):
        name = op["op_name"]
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"):
            continue
        inputs = [i for i in op["inputs"] if i >= 0]
        out = tensors[op["outputs"][0]]["shape"]
        if name == "TRANSPOSE_CONV":
            weights, source = tensors[inputs[1]]["shape"], tensors[inputs[2]]["shape"]
            total += int(np.prod(source[:3])) * int(np.prod(weights))
            continue
        weights = tensors[inputs[1]]["shape"]
        if name == "CONV_2D":
            total += int(np.prod(out[:3])) * int(np.prod(weights))
        elif name == "DEPTHWISE_CONV_2D":
            total += int(np.prod(out)) * int(weights[1] * weights[2])
        else:
            total += int(np.prod(out[:-1])) * int(np.prod(weights))
    return 2 * total


def model_ops(model_content: bytes) -> int:
    """`graph_ops` of a model with every tensor shape resolved.

    Keras 3 exports UpSampling2D as SHAPE/TILE/RESHAPE, so the tensors after it carry placeholder
    static shapes (a 16x16 map reads as 1x16) until an invoke resolves them, and the XNNPACK
    delegate never writes resolved shapes back. So count after one invoke on the builtin kernels,
    without delegates; models that cannot run that way (Edge TPU custom ops) are counted as stored.
    """
    interpreter = make_plain_interpreter(model_content)
    try:
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()
    except (RuntimeError, ValueError):
        pass
    return graph_ops(interpreter)


def measure_peak(threads: int | None, runs: int = 30) -> dict[str, float]:
    """GOP/s of the probe convolution per dtype (the practical peak of this CPU and runtime).

    From the fastest of `runs` invokes: on a shared machine interference only ever slows a run
    down, so the best run is the closest to what the hardware can do (a median drifted by 2x).
    """
    peaks = {}
    for dtype, path in PROBE_FILES.items():
        if not path.is_file():
            continue
        interpreter, _ = make_interpreter(path.read_bytes(), threads)
        detail = interpreter.get_input_details()[0]
        rng = np.random.default_rng(0)
        data = rng.integers(-100, 100, detail["shape"]).astype(detail["dtype"])
        interpreter.set_tensor(detail["index"], data)
        times_ms = time_calls(interpreter.invoke, runs, warmup=3)
        peaks[dtype] = graph_ops(interpreter) / (float(np.min(times_ms)) / 1000) / 1e9
    return peaks


def build_probes() -> None:
    """Write the probe models (needs TensorFlow)."""
    import tensorflow as tf

    PROBES.mkdir(exist_ok=True)
    inputs = tf.keras.Input(PROBE_SHAPE[1:], batch_size=1)
    outputs = tf.keras.layers.Conv2D(PROBE_SHAPE[-1], 3, padding="same")(inputs)
    model = tf.keras.Model(inputs, outputs)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    PROBE_FILES["float32"].write_bytes(converter.convert())
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    rng = np.random.default_rng(0)
    converter.representative_dataset = lambda: ([rng.normal(size=PROBE_SHAPE).astype(np.float32)] for _ in range(8))
    PROBE_FILES["int8"].write_bytes(converter.convert())


if __name__ == "__main__":  # python -m benchmarks.roofline
    build_probes()
    print({k: f"{v.stat().st_size / 1e6:.2f} MB" for k, v in PROBE_FILES.items()})
