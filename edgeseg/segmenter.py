"""Model -> class map: preprocess, invoke, postprocess, for float32/float16/int8/uint8 models.

The model's own tensors say what to do: input size and dtype, quantisation scale and zero point,
and whether the output is per-class scores (N channels) or a class map (ArgMax inside the model).
Labels and the input spec come from the metadata embedded by `convert`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from edgeseg.backend import Runtime, make_interpreter
from edgeseg.bundled import BUNDLED_MODELS, resolve_model
from edgeseg.errors import ModelError
from edgeseg.labels import ADE20K, LabelSet, builtin_for
from edgeseg.metadata import MetadataError, ModelMetadata, read_metadata
from edgeseg.preprocess import InputSpec, cv_lut, normalize, prepare_pixels

TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8 of every .tflite


class Device(str, Enum):
    """Where inference runs: the Edge TPU when a *_edgetpu model and its library are there (auto)."""

    auto = "auto"
    cpu = "cpu"
    edgetpu = "edgetpu"


DEVICES = tuple(device.value for device in Device)


@dataclass(frozen=True)
class SegmenterOptions:
    """How to run a model.

    Attributes:
        model: path of the .tflite file, or the name of a bundled model (``camvid_lite``,
            ``camvid_lite_fast``: `edgeseg.bundled.BUNDLED_MODELS`).
        threads: CPU threads for inference. None: one to start with; `edgeseg.pipeline.run` then
            times one against all cores (up to 4) on the stream and keeps the faster.
        device: ``auto`` (Edge TPU for ``*_edgetpu.tflite``), ``cpu`` or ``edgetpu``.
        tta: test-time augmentation: also run the mirrored frame and average the two outputs
            (mirrored back). Half the inference rate, about one mIoU point more on unseen drives
            (configs/lodo/README.md); needs a model that outputs class scores.
    """

    model: Path
    threads: int | None = None
    device: str = "auto"
    tta: bool = False


@dataclass(frozen=True)
class TensorInfo:
    """What the runtime needs to know of an input or output tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale > 0 and self.dtype in ("int8", "uint8", "int16")


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model's signature, metadata and provenance."""

    path: str
    size_bytes: int
    runtime: str
    runtime_version: str
    edgetpu: bool
    input: TensorInfo
    output: TensorInfo
    output_kind: str
    labels: LabelSet
    spec: InputSpec
    metadata_embedded: bool
    provenance: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "path": self.path, "size_bytes": self.size_bytes, "runtime": f"{self.runtime} {self.runtime_version}",
            "edgetpu": self.edgetpu, "input": self.input.__dict__, "output": self.output.__dict__,
            "output_kind": self.output_kind, "input_spec": self.spec.to_dict(),
            "labels": {"name": self.labels.name, "num_classes": self.labels.num_classes,
                       "names": list(self.labels.names)},
            "metadata_embedded": self.metadata_embedded, "provenance": self.provenance,
        }


def read_model_bytes(path: Path) -> bytes:
    """Read a .tflite file, rejecting missing, empty and non-TFLite files with a clear message."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model {path} does not exist; pass the path of a .tflite file (see `python -m convert`)"
                         f" or a bundled model's name ({', '.join(BUNDLED_MODELS)})")
    if path.is_dir():
        raise ModelError(f"model {path} is a folder; pass a .tflite file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"model {path} cannot be read ({exc.strerror}); check its permissions") from exc
    if not data:
        raise ModelError(f"model {path} is empty (0 bytes); export it again with `python -m convert`")
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise ModelError(f"model {path} is not a TFLite flatbuffer; convert Keras models with `python -m convert`")
    return data


def _tensor_info(detail: dict) -> TensorInfo:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorInfo(
        name=str(detail["name"]), shape=tuple(int(v) for v in detail["shape"]),
        dtype=np.dtype(detail["dtype"]).name, scale=float(scale), zero_point=int(zero_point),
    )


class Segmenter:
    """Runs one TFLite segmentation model on BGR frames.

    Example:
        >>> seg = Segmenter(SegmenterOptions(Path("models/camvid_lite_int8.tflite")))
        >>> class_map = seg.segment(frame_bgr)          # (h, w) uint8 at model resolution
    """

    def __init__(self, options: SegmenterOptions, runtime: Runtime | None = None) -> None:
        if options.device not in DEVICES:
            raise ModelError(f"device {options.device!r} unknown; use one of {', '.join(DEVICES)}")
        options = replace(options, model=resolve_model(options.model))
        self.options = options
        content = read_model_bytes(options.model)
        edgetpu = options.device == "edgetpu" or (options.device == "auto" and options.model.name.endswith("_edgetpu.tflite"))
        self._interpreter, runtime = make_interpreter(content, options.threads, edgetpu, runtime)
        self._content, self._runtime = content, runtime
        self.threads = options.threads  # None: the runtime's default (one thread)
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        name = options.model.name
        if len(inputs) != 1:
            raise ModelError(f"model {name} has {len(inputs)} inputs; edgeseg needs one image input (1, H, W, 3)")
        if len(outputs) != 1:
            raise ModelError(f"model {name} has {len(outputs)} outputs; edgeseg needs one segmentation output")
        self._in, self._out = inputs[0], outputs[0]
        in_info, out_info = _tensor_info(self._in), _tensor_info(self._out)
        if len(in_info.shape) != 4 or in_info.shape[0] != 1 or in_info.shape[3] != 3:
            raise ModelError(f"model {name} input has shape {list(in_info.shape)}; edgeseg needs an image input"
                             " (1, H, W, 3) - is this a segmentation model?")
        if in_info.dtype not in ("float32", "float16", "int8", "uint8"):
            raise ModelError(f"model {name} input is {in_info.dtype}; edgeseg reads float32, float16, int8 or uint8 images")
        if len(out_info.shape) == 4 and out_info.shape[3] > 1:
            kind, channels = "scores", out_info.shape[3]
        elif len(out_info.shape) == 3 or (len(out_info.shape) == 4 and out_info.shape[3] == 1):
            kind, channels = "class_map", 0
        else:
            raise ModelError(f"model {name} output has shape {list(out_info.shape)}; edgeseg needs (1, H, W, classes)"
                             " scores or a (1, H, W) class map")
        if options.tta and kind == "class_map":
            raise ModelError(f"--tta averages class scores, but model {name} outputs an ArgMax class map;"
                             " run it without --tta or export it without --argmax")

        self.warnings: list[str] = []  # problems the model still runs with (the CLI prints them)
        metadata = self._read_metadata(content, name, in_info.shape[1], in_info.shape[2], channels)
        if metadata is not None:
            labels, spec = metadata.labels, metadata.input
        else:
            labels = builtin_for(channels) if channels else ADE20K
            spec = InputSpec(height=in_info.shape[1], width=in_info.shape[2])
        if channels and channels != labels.num_classes:
            raise ModelError(f"model {name} outputs {channels} classes but its labels list {labels.num_classes}")
        self.info = ModelInfo(
            path=str(options.model), size_bytes=len(content), runtime=runtime.name, runtime_version=runtime.version,
            edgetpu=edgetpu, input=in_info, output=out_info, output_kind=kind, labels=labels, spec=spec,
            metadata_embedded=metadata is not None, provenance=metadata.provenance if metadata else {},
        )
        self.labels, self.spec = labels, spec
        self.palette_bgr = labels.palette_bgr()
        self._set_input_conversion(in_info)
        self.last_inference_ms = 0.0

    def _read_metadata(self, content: bytes, name: str, height: int, width: int, channels: int) -> ModelMetadata | None:
        """The embedded metadata when it fits the model; None (with a warning) when it is damaged."""
        try:
            metadata = read_metadata(content)
            if metadata is not None:
                if (metadata.input.height, metadata.input.width) != (height, width):
                    raise MetadataError(f"it says {metadata.input.height}x{metadata.input.width} but the input is"
                                        f" {height}x{width}")
                if channels and channels != metadata.labels.num_classes:
                    raise MetadataError(f"it lists {metadata.labels.num_classes} labels for {channels} outputs")
            return metadata
        except MetadataError as exc:
            self.warnings.append(f"model {name}: its embedded metadata is damaged ({exc}); running with generic"
                                 " labels and input settings - re-export it with `python -m convert`")
            return None

    def _set_input_conversion(self, in_info: "TensorInfo") -> None:
        """How `prepare` turns uint8 pixels into the input's dtype."""
        self._in_dtype = np.dtype(in_info.dtype)
        self._lut = quantize_lut(self.spec, in_info) if in_info.quantized else None
        # OpenCV's LUT does the per-pixel lookup faster than numpy indexing; it takes 8-bit tables.
        self._lut_cv = None
        if self._lut is not None and self._lut.dtype in (np.int8, np.uint8):
            self._lut_cv = cv_lut(self._lut)
        # The usual quantisation (pixels / 255, scale 1/255, zero point -128 or 0) maps each byte to
        # itself plus a constant modulo 256: one 8-bit add (or nothing) does the lookup's work.
        self._byte_offset = byte_offset(self._lut) if self._lut is not None else None

    def prepare(self, frame_bgr: np.ndarray) -> np.ndarray:
        """Frame -> model input tensor ``(1, H, W, 3)`` in the input's own dtype.

        Safe to call from another thread than `invoke` (the pipeline prepares frames on its
        reader thread so this host work overlaps inference).
        """
        pixels = prepare_pixels(frame_bgr, self.spec, bgr=True)
        if self._byte_offset is not None:
            if self._byte_offset:
                pixels = np.add(pixels, np.uint8(self._byte_offset))  # wraps modulo 256
            tensor = pixels.view(self._in_dtype)
        elif self._lut_cv is not None:
            tensor = cv2.LUT(pixels, self._lut_cv)  # one table lookup per pixel: normalise + quantise
        elif self._lut is not None:
            tensor = np.stack([self._lut[:, c][pixels[..., c]] for c in range(3)], axis=-1)
        else:
            tensor = normalize(pixels, self.spec).astype(self._in_dtype, copy=False)
        return tensor[np.newaxis]

    @property
    def interpreter(self):
        """The underlying interpreter (benchmarks time `invoke` on it alone)."""
        return self._interpreter

    def set_threads(self, threads: int | None) -> None:
        """Rebuild the interpreter on `threads` CPU threads (LiteRT fixes the count at creation;
        None: the runtime's default, one). Call it from the thread that invokes."""
        if (threads or 1) != (self.threads or 1):
            self._interpreter, _ = make_interpreter(self._content, threads, self.info.edgetpu, self._runtime)
        self.threads = threads

    @property
    def input_index(self) -> int:
        return int(self._in["index"])

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        """Run the model on a prepared input; returns a copy of its raw output for one frame
        (``(h, w, C)`` scores or ``(h, w)`` classes). Sets `last_inference_ms`.

        With ``tta`` the mirrored input runs too and the raw output is the sum of both (the
        mirrored one mirrored back): int16 for 8-bit scores (exact, no rounding), int32 for int16
        scores, the float32 mean for float scores. `scores` and `classes` read it as one output.
        """
        started = time.perf_counter()
        if not self.options.tta:
            raw = self._run(tensor)
        else:
            raw, mirrored = with_mirror(self._run, tensor)
            if raw.dtype in (np.int8, np.uint8):
                raw = np.add(raw, mirrored, dtype=np.int16)
            elif raw.dtype == np.int16:
                raw = np.add(raw, mirrored, dtype=np.int32)
            else:
                raw = np.add(raw, mirrored, dtype=np.float32)
                raw *= 0.5
        self.last_inference_ms = (time.perf_counter() - started) * 1000.0
        return raw

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._in["index"], tensor)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._out["index"])[0]

    def infer(self, frame_bgr: np.ndarray) -> np.ndarray:
        """`prepare` then `invoke`: BGR frame -> raw model output."""
        return self.invoke(self.prepare(frame_bgr))

    def scores(self, raw: np.ndarray) -> np.ndarray:
        """Raw scores -> float32 (dequantised with the output's scale and zero point)."""
        info = self.info.output
        if info.quantized:
            terms = 2 if self.options.tta else 1  # a tta output is the sum of two quantised outputs
            return (raw.astype(np.float32) - terms * info.zero_point) * (info.scale / terms)
        return raw.astype(np.float32, copy=False)

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """Raw scores -> ``(h, w, C)`` float32 class probabilities (each pixel sums to 1): the softmax of
        the scores, or the scores themselves where the model already ends in a softmax. Not for a model
        that outputs an ArgMax class map (it keeps no scores)."""
        if self.info.output_kind == "class_map":
            raise ModelError(f"model {Path(self.info.path).name} outputs an ArgMax class map, so it has no class"
                             " probabilities; export it without --argmax")
        return to_probabilities(self.scores(raw))

    def classes(self, raw: np.ndarray) -> np.ndarray:
        """Raw output -> ``(h, w)`` uint8 class map.

        Argmax runs on the raw dtype: with a positive scale, dequantising is monotonic, so the
        argmax of int8 scores equals the argmax of the real values (no float copy per frame).
        """
        if self.info.output_kind == "class_map":
            return raw.reshape(raw.shape[0], raw.shape[1]).astype(np.uint8, copy=False)
        if self.info.output.quantized or raw.dtype != np.float16:
            return argmax_channels(raw)
        return np.argmax(raw.astype(np.float32), axis=-1).astype(np.uint8)

    def segment(self, frame_bgr: np.ndarray) -> np.ndarray:
        """BGR frame -> ``(h, w)`` uint8 class map at the model's output resolution."""
        return self.classes(self.infer(frame_bgr))


def to_probabilities(scores: np.ndarray) -> np.ndarray:
    """``(h, w, C)`` float32 scores -> probabilities over the last axis. Scores that already are
    probabilities (every value in [0, 1], every pixel summing to 1 within the rounding of an int8
    softmax output, 1/256 per class) are returned as they are; anything else is taken as logits."""
    scores = scores.astype(np.float32, copy=False)
    tolerance = scores.shape[-1] / 256.0 + 1e-3
    if scores.min() >= 0.0 and scores.max() <= 1.0 and np.abs(scores.sum(axis=-1) - 1.0).max() <= tolerance:
        return scores / scores.sum(axis=-1, keepdims=True)
    return softmax(scores)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of logits (last axis), numerically stable."""
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    exp /= exp.sum(axis=-1, keepdims=True)
    return exp


def with_mirror(predict: Callable[[np.ndarray], np.ndarray], tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`predict` (a ``(1, H, W, 3)`` tensor -> its ``(h, w, C)`` output) on the tensor and on its
    mirror image, the second output mirrored back so both line up pixel for pixel (--tta)."""
    return predict(tensor), predict(np.ascontiguousarray(tensor[:, :, ::-1]))[:, ::-1]


KEY_BITS = 4  # 8-bit scores of up to 2**KEY_BITS classes take the packed-key argmax


def argmax_channels(raw: np.ndarray) -> np.ndarray:
    """``np.argmax(raw, axis=-1)`` as uint8 (first index on ties), faster for integer scores of
    few classes.

    numpy reduces a short last axis one pixel at a time. For int8/uint8 scores of at most 16
    classes each score becomes an int16 key ``score * 16 + (15 - class)``, laid out class-major,
    and one elementwise max over the classes finds value and (lowest) class at once. int16 scores
    (the sums `Segmenter.invoke` makes with tta) take int32 keys.
    """
    channels = raw.shape[-1]
    if raw.dtype not in (np.int8, np.uint8, np.int16) or channels > 1 << KEY_BITS:
        return np.argmax(raw, axis=-1).astype(np.uint8)
    keys = np.empty((channels, *raw.shape[:-1]), np.int16 if raw.itemsize == 1 else np.int32)
    np.copyto(keys, np.moveaxis(raw, -1, 0))
    keys <<= KEY_BITS
    lowest_first = (1 << KEY_BITS) - 1 - np.arange(channels, dtype=np.int16)
    keys |= lowest_first.reshape(-1, *[1] * (raw.ndim - 1))
    best = keys.max(axis=0)
    best &= (1 << KEY_BITS) - 1
    return ((1 << KEY_BITS) - 1 - best).astype(np.uint8)


def byte_offset(lut: np.ndarray) -> int | None:
    """The constant ``k`` with ``lut[v] == (v + k) mod 256`` (as bytes) for every pixel value and
    channel of an 8-bit table, or None when the table is not such a shift."""
    if lut.dtype not in (np.int8, np.uint8):
        return None
    as_bytes = lut.view(np.uint8)
    offset = int(as_bytes[0, 0])
    shifted = ((np.arange(256) + offset) % 256).astype(np.uint8)
    return offset if bool((as_bytes == shifted[:, np.newaxis]).all()) else None


def quantize_lut(spec: InputSpec, info: TensorInfo) -> np.ndarray:
    """``(256, 3)`` table: uint8 pixel -> quantised model input per channel, exactly what
    normalise-then-quantise gives, clipped to the dtype's range before the cast."""
    pixels = np.arange(256, dtype=np.float32)[:, np.newaxis].repeat(3, axis=1)
    real = normalize(pixels, spec)
    limits = np.iinfo(np.dtype(info.dtype))
    return np.clip(np.round(real / info.scale + info.zero_point), limits.min, limits.max).astype(info.dtype)


def upscale(class_map: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Class map -> frame size with NEAREST neighbour (interpolating labels would invent classes)."""
    if class_map.shape == tuple(size_hw):
        return class_map
    return cv2.resize(class_map, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)
