"""The conversion run: load, calibrate, export each mode with metadata, verify, report."""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import tensorflow as tf

import edgeseg
from edgeseg import atomic
from edgeseg.dataset import list_pairs
from edgeseg.metadata import ModelMetadata, attach_metadata
from edgeseg.preprocess import InputSpec
from edgeseg.sinks import check_writable_dir
from edgeseg.sources import spaced_frames

from . import export
from .calibration import calibration_images, representative_dataset
from .report import write_report
from .source import ConvertError, SourceModel, labels_for, load_source
from .verify import agreement_on_frames, host_argmax_ms, keras_classes, layer_errors, top_classes, verify


@dataclass(frozen=True)
class ConvertOptions:
    """Resolved options of one conversion (see `python -m convert --help`)."""

    model: Path
    modes: tuple[str, ...]
    eval_data: Path
    out_dir: Path
    name: str
    calib_data: Path | None = None
    calib_split: str = "training"
    eval_split: str = "validation"
    num_calib: int = 200
    num_eval: int = 0
    io_type: str = "int8"
    argmax: bool = False
    edgetpu: bool = False
    min_agreement: float = 0.97
    max_miou_drop: float = 0.02
    fallback: str = "none"
    seed: int = 0
    check_videos: tuple[Path, ...] = ()
    check_frames: int = 24


def _check(verification: dict, options: ConvertOptions) -> tuple[bool, str]:
    if verification["agreement"] < options.min_agreement:
        reason = f"agreement {100 * verification['agreement']:.2f}% < {100 * options.min_agreement:.1f}%"
        ceiling = verification.get("grid_ceiling")
        if ceiling is not None and ceiling < options.min_agreement:
            reason += (f" (the Keras logits themselves, rounded to the output's step {verification['output_step']:.3g},"
                       f" keep only {100 * ceiling:.2f}%: {100 * verification['below_step_share']:.1f}% of pixels are"
                       " closer to the runner-up class than one step, so no calibration can pass; use --fallback"
                       " float-head or int16x8, or retrain a more decisive network, e.g. unet with batch_norm: true)")
        return False, reason
    unseen = verification.get("agreement_unseen")
    if unseen is not None and unseen < options.min_agreement:
        return False, (f"agreement on {verification['unseen_frames']} unseen clip frames {100 * unseen:.2f}%"
                       f" < {100 * options.min_agreement:.1f}%")
    if verification["miou_drop"] > options.max_miou_drop:
        return False, (f"mIoU drop {100 * verification['miou_drop']:.2f} points > {100 * options.max_miou_drop:.1f}")
    return True, ""


@dataclass
class _Job:
    """One conversion: the source model, the evaluation pairs, labels, input spec, calibration
    images and provenance every exported model carries."""

    options: ConvertOptions
    source: SourceModel
    pairs: object
    labels: object
    spec: InputSpec
    calib_paths: list[str]
    provenance: dict
    unseen_frames: list = field(default_factory=list)  # BGR frames of the --check-video clips
    unseen_keras: list = field(default_factory=list)  # the Keras model's class map of each
    unseen_shares: dict = field(default_factory=dict)  # per clip: the Keras model's top classes by pixel share

    def representative(self):
        return representative_dataset(self.calib_paths, self.spec)

    def metadata(self, mode: str) -> ModelMetadata:
        options = self.options
        calibration = ({"calibration": f"{len(self.calib_paths)} images of {options.calib_data}/{options.calib_split}"
                        f" (seed {options.seed})"} if export.MODES[mode].calibrated else {})
        return ModelMetadata(
            labels=self.labels, input=self.spec, output="class_map" if options.argmax else "logits",
            provenance={**self.provenance, "quantization": mode,
                        "io_type": options.io_type if export.MODES[mode].integer_io else "float32", **calibration},
        )

    def export_one(self, mode: str, suffix: str) -> dict:
        """Convert, verify under a temporary name, and only then take the final name: a failed
        conversion never replaces a deployed model (it lands in *.failed.tflite)."""
        options = self.options
        data = export.convert(self.source, mode, options.io_type, self.representative, options.argmax,
                              options.edgetpu)
        final = options.out_dir / f"{options.name}_{suffix}.tflite"
        candidate = atomic.temp_path(final)
        try:
            candidate.write_bytes(attach_metadata(data, self.metadata(mode)))
            verification = verify(self.source, candidate, self.pairs, self.labels, self.spec, name=final.name)
            if self.unseen_frames:
                verification["agreement_unseen"] = agreement_on_frames(candidate, self.unseen_frames,
                                                                       self.unseen_keras)
                verification["unseen_frames"] = len(self.unseen_frames)
            passed, reason = _check(verification, options)
            path = final if passed else final.with_name(final.stem + ".failed.tflite")
            atomic.commit(candidate, path)
        except OSError as exc:
            raise atomic.output_error(final, exc) from exc
        finally:
            candidate.unlink(missing_ok=True)
        unseen = verification.get("agreement_unseen")
        print(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB, agreement {100 * verification['agreement']:.2f}%"
              + (f" ({100 * unseen:.2f}% on unseen clip frames)," if unseen is not None else ",") +
              f" mIoU {verification['miou_keras']:.4f} -> {verification['miou_tflite']:.4f}"
              f" ({'pass' if passed else 'FAIL: ' + reason})")
        return {"mode": mode, "path": str(path), "size_bytes": path.stat().st_size, "passed": passed,
                "reason": reason, "verification": verification}

    def worst_layers(self, mode: str) -> list[dict]:
        options = self.options
        return layer_errors(lambda: export.make_converter(self.source, export.MODES[mode], options.io_type,
                                                          self.representative, False, options.edgetpu),
                            self.representative)


def _prepare(options: ConvertOptions) -> _Job:
    """Check and load everything before any .tflite is written."""
    check_writable_dir(options.out_dir)  # OutputError: an EdgesegError like every other
    source = load_source(options.model)
    pairs = list_pairs(options.eval_data, options.eval_split, options.num_eval)
    calib_paths: list[str] = []
    if any(export.MODES[m].calibrated for m in options.modes):
        if options.calib_data is None:
            raise ConvertError("int8 needs real calibration images: pass --calib-data DIR (e.g. the training set)")
        exclude = {str(Path(p).resolve()) for p in pairs.images}
        calib_paths = calibration_images(options.calib_data, options.calib_split, options.num_calib, options.seed,
                                         exclude)
    provenance = {
        "source_model": source.path.name, "source_sha256": source.sha256,
        "converter": f"tensorflow {tf.__version__}, edgeseg {edgeseg.__version__}",
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    spec = InputSpec(height=source.height, width=source.width)
    labels = labels_for(source, options.eval_data)
    clips = {Path(clip).name: spaced_frames(clip, options.check_frames) for clip in options.check_videos}
    maps = {name: keras_classes(source, frames, spec) for name, frames in clips.items()}
    return _Job(options, source, pairs, labels, spec, calib_paths, provenance,
                [frame for frames in clips.values() for frame in frames],
                [classes for per_clip in maps.values() for classes in per_clip],
                {name: top_classes(per_clip, labels.names) for name, per_clip in maps.items()})


def run(options: ConvertOptions) -> dict:
    """Convert and verify; returns the report (``passed`` False when a model failed its thresholds).

    Raises:
        ConvertError / EdgesegError: bad input, before any .tflite is written.
    """
    job = _prepare(options)
    report: dict = {
        "name": options.name,
        "source": {"path": str(job.source.path), "sha256": job.source.sha256, "height": job.source.height,
                   "width": job.source.width, "num_classes": job.source.num_classes},
        "calibration": {"folder": str(options.calib_data), "split": options.calib_split,
                        "count": len(job.calib_paths), "seed": options.seed} if job.calib_paths else {},
        "evaluation": {"folder": str(options.eval_data), "split": options.eval_split, "images": len(job.pairs)},
        "unseen_clips": {"videos": [str(v) for v in options.check_videos], "frames": options.check_frames,
                         "keras_class_shares": job.unseen_shares} if options.check_videos else {},
        "thresholds": {"min_agreement": options.min_agreement, "max_miou_drop": options.max_miou_drop},
        "models": [],
    }
    for mode in options.modes:
        row = job.export_one(mode, mode)
        if not row["passed"] and export.MODES[mode].calibrated:
            row["worst_layers"] = job.worst_layers(mode)
        report["models"].append(row)
        if not row["passed"] and mode == "int8" and options.fallback != "none":
            report["models"].append(job.export_one(options.fallback, options.fallback.replace("-", "_")))
    if options.argmax:
        report["argmax"] = _argmax_effect(job.source, options, job.representative)
    if options.edgetpu:
        report["edgetpu"] = _edgetpu(report, options, job.labels, job.spec, job.provenance)
    json_path, md_path = write_report(report, options.out_dir, options.name)
    report["report_md"] = str(md_path)
    report["passed"] = _all_passed(report["models"], options.fallback)
    print(f"report: {json_path}, {md_path}")
    return report


def _all_passed(rows: list[dict], fallback: str) -> bool:
    """Every requested model passed, except that a failed int8 is made good by a passing fallback."""
    fallback_passed = any(r["passed"] for r in rows if r["mode"] == fallback)
    return all(r["passed"] or (r["mode"] == "int8" and fallback_passed) for r in rows if r["mode"] != fallback)


def _argmax_effect(source: SourceModel, options: ConvertOptions, representative) -> dict:
    """Invoke time with ArgMax in the graph vs without (+ the host argmax it replaces)."""
    mode = "int8" if "int8" in options.modes else options.modes[0]
    with tempfile.TemporaryDirectory() as tmp:
        scores_path, argmax_path = Path(tmp) / "scores.tflite", Path(tmp) / "argmax.tflite"
        scores_path.write_bytes(export.convert(source, mode, options.io_type, representative, False, options.edgetpu))
        argmax_path.write_bytes(export.convert(source, mode, options.io_type, representative, True, options.edgetpu))
        invoke_scores, host = host_argmax_ms(scores_path)
        invoke_argmax, _ = host_argmax_ms(argmax_path)
    return {"mode": mode, "invoke_ms_scores": invoke_scores, "host_argmax_ms": host,
            "invoke_ms_with_argmax": invoke_argmax}


def _edgetpu(report: dict, options: ConvertOptions, labels, spec, provenance) -> str:
    int8 = next((r for r in report["models"] if r["mode"] == "int8" and r["passed"]), None)
    if int8 is None:
        return "no passing int8 model to compile"
    outside = export.ops_outside_edgetpu(Path(int8["path"]).read_bytes())
    ops = ("every op is one the Edge TPU compiler maps" if not outside else "ops the Edge TPU compiler leaves on the"
           " CPU: " + ", ".join(f"{name} x{count}" for name, count in sorted(outside.items())))
    compiled, command = export.compile_edgetpu(Path(int8["path"]), options.out_dir)
    if compiled is None:
        message = f"{ops}; edgetpu_compiler is not installed here; on a machine that has it run: {command}"
        print(message)
        return message
    from edgeseg.metadata import read_metadata

    metadata = read_metadata(Path(int8["path"]).read_bytes())
    atomic.write_bytes(compiled, attach_metadata(compiled.read_bytes(), metadata))
    return f"{ops}; compiled {compiled.name} (metadata re-attached)"
