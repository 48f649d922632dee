"""`edgeseg`: real-time semantic segmentation of cameras, videos and images with TFLite models.

    edgeseg demo                                   # bundled CamVid model on a real street clip
    edgeseg camera --model models/camvid_lite_int8.tflite
    edgeseg video clip.mp4 --model M --output out.mp4
    edgeseg image photo.jpg --model M --output out/
    edgeseg eval --model M --data ../shared/data/camvid --json
    edgeseg info M
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer

from edgeseg.bundled import BUNDLED_MODEL, DEMO_CLIP
from edgeseg.cliapp import make_app, run_app
from edgeseg.errors import InputError, reports_errors
from edgeseg.segmenter import Device

app = make_app("Real-time semantic segmentation with TFLite models (no TensorFlow needed).", no_args_is_help=True)


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", help="Also show the libraries' own messages"
                                          " (LiteRT, OpenCV).")) -> None:
    from edgeseg.quiet import set_verbose

    set_verbose(verbose)


def _error(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)


ModelOpt = typer.Option(BUNDLED_MODEL, "--model", "-m", show_default=False,
                        help="TFLite model (.tflite; default: the bundled CamVid model, camvid_lite;"
                        " camvid_lite_fast: one of its three networks, about 4x faster); *_edgetpu.tflite runs on the Edge TPU.")
ThreadsOpt = typer.Option(None, "--threads", "-t", min=1, help="CPU threads for inference (default: one for images;"
                          " for streams, timed on the stream: one or all cores up to 4, whichever is faster).")
DeviceOpt = typer.Option(Device.auto, "--device", help="auto, cpu or edgetpu.")
TtaOpt = typer.Option(False, "--tta", help="Also segment the mirrored frame and average the two (test-time"
                      " augmentation): about one mIoU point more on unseen streets, half the inference rate.")
AlphaOpt = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Mask opacity.")
LegendOpt = typer.Option(True, "--legend/--no-legend", help="Legend of the classes present.")
HudOpt = typer.Option(True, "--hud/--no-hud", help="FPS and inference time on the frame.")
HeadlessOpt = typer.Option(False, "--headless", help="Never open a window.")
MaxFramesOpt = typer.Option(0, "--max-frames", min=0, help="Stop after N frames (0 = all).")
DurationOpt = typer.Option(0.0, "--duration", min=0.0, help="Stop after N seconds (0 = no limit).")
DecodeThreadsOpt = typer.Option(1, "--decode-threads", min=0, help="FFmpeg threads decoding a video file"
                                " (0 = FFmpeg's choice; 1 leaves the other cores to inference).")
SmoothOpt = typer.Option(0.0, "--smooth", min=0.0, max=0.99, help="Temporal smoothing 0..0.99 (0 = off).")


def _segmenter(model: Path, threads: Optional[int], device: Device, tta: bool = False):
    from edgeseg.segmenter import Segmenter, SegmenterOptions

    segmenter = Segmenter(SegmenterOptions(model=model, threads=threads, device=device.value, tta=tta))
    for warning in segmenter.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    return segmenter


@dataclass
class Extras:
    """What runs beside the pipeline: the live page, per-frame JSON lines, triggers."""

    serve: Optional[str] = None
    serve_token: Optional[str] = None
    jsonl: Optional[Path] = None
    on: list[str] = field(default_factory=list)
    execs: list[str] = field(default_factory=list)
    on_clear: Optional[float] = None
    min_interval: float = 2.0
    snapshot: Optional[Path] = None


ServeOpt = typer.Option(None, "--serve", help="Live page at [HOST:]PORT (127.0.0.1 unless a host is given;"
                        " beyond loopback a token is required).")
ServeTokenOpt = typer.Option(None, "--serve-token", help="Token for --serve (default: random, printed at start).")
JsonlOpt = typer.Option(None, "--jsonl", help="Write one JSON line per frame (index, times, class shares) here.")
OnOpt = typer.Option([], "--on", help='Trigger, e.g. "pedestrian>0.05" (repeatable; pairs with --exec in order).')
ExecOpt = typer.Option([], "--exec", help="Command run when the --on in the same position fires (JSON on stdin).")
OnClearOpt = typer.Option(None, "--on-clear", help="Share at which a fired trigger re-arms (default: half its threshold).")
MinIntervalOpt = typer.Option(2.0, "--min-interval", min=0.0, help="Seconds between two firings of one trigger.")
SnapshotOpt = typer.Option(None, "--snapshot", help="Folder where each firing saves the overlaid frame.")


@contextlib.contextmanager
def _beside(extras: Extras, segmenter, source):
    """Start what `extras` asks for; yield the pipeline's on_frame callback (or None)."""
    from edgeseg.events import JsonlWriter, Triggers, build_triggers, frame_record
    from edgeseg.serve import LiveServer, palette_hex

    triggers = Triggers(build_triggers(extras.on, extras.execs, extras.snapshot, extras.on_clear,
                                       extras.min_interval, segmenter.labels.names)) if extras.on else None
    if extras.execs and not extras.on:
        raise InputError("--exec needs an --on \"CLASS>SHARE\" that says when to run it")
    server = writer = None
    try:
        if extras.serve is not None:
            server = LiveServer(extras.serve, extras.serve_token, palette_hex(segmenter.labels, segmenter.palette_bgr))
            server.__enter__()
            typer.echo(f"live page: {server.url}", err=True)
        writer = JsonlWriter(extras.jsonl) if extras.jsonl is not None else None
        if server is None and writer is None and triggers is None:
            yield None
            return

        def on_frame(result) -> None:
            record = frame_record(result) if writer is not None or triggers is not None else None
            if writer is not None:
                writer.write(record)
            if triggers is not None:
                triggers(result, record)
            if server is not None:
                server.publish(result, source.dropped)

        yield on_frame
    finally:
        if server is not None:
            server.close()
        if writer is not None:
            writer.close()
            typer.echo(f"wrote {writer.lines} lines to {writer.path}", err=True)
        if triggers is not None:
            triggers.close()
            for trigger in triggers.triggers:
                typer.echo(f"trigger {trigger.name}: fired {trigger.fired} times", err=True)
            for message in triggers.errors:
                typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


def slower_than_source_hint(fps: float, frames: int, source_fps: float | None, model: Path,
                            live_dropped: int | None = None) -> str:
    """A one-line note when the default model ran below the source's frame rate (a live source then
    drops frames), pointing at the faster bundled model; "" otherwise. A live source that dropped no
    frame kept up, whatever rate it claims (streams that report none are assumed at 30 FPS). x86 CPUs
    without VNNI run the three-network default about 4.5x slower than those with it (benchmarks/results)."""
    from edgeseg.bundled import BUNDLED_MODEL

    if frames < 30 or not source_fps or fps >= 0.9 * source_fps or model.resolve() != BUNDLED_MODEL.resolve():
        return ""
    if live_dropped == 0:
        return ""
    return (f"note: the default model ran at {fps:.1f} FPS here, below the source's {source_fps:.1f} FPS (a live source"
            " drops the frames in between); --model camvid_lite_fast is about 4x faster, a few mIoU points less"
            " accurate on unseen streets")


def _run_stream(source, segmenter, output, headless, alpha, legend, hud, smooth, max_frames, duration,
                extras: Extras | None = None):
    """Run the pipeline on an opened source; a StreamError (source ended early) reaches the
    command's error handler after the sink has been finished with the frames read."""
    from edgeseg.pipeline import PipelineOptions, run
    from edgeseg.sinks import VideoSink
    from edgeseg.sources import Prepended
    from edgeseg.window import open_window

    options = PipelineOptions(alpha=alpha, legend=legend, hud=hud, smooth=smooth, max_frames=max_frames,
                              duration=duration)
    show = open_window(headless)
    with source, _beside(extras or Extras(), segmenter, source) as on_frame:
        sink = None
        if output is not None:
            first = source.read()
            if first is None:
                raise InputError(f"{source.name} gave no frame; check the source")
            # A live recording is tagged with the rate its frames really arrive at (measured).
            sink = VideoSink(output, None if source.live else source.fps, (first.shape[1], first.shape[0]))
            source = Prepended(source, first)
        stats = run(source, segmenter, options, sink=sink, show=show, on_frame=on_frame)
        source_fps = getattr(source, "fps", None)  # a camera's is known once it is open
    typer.echo(stats.summary())
    hint = slower_than_source_hint(stats.fps, stats.frames, source_fps, Path(segmenter.options.model),
                                   stats.dropped if source.live else None)
    if hint:
        typer.secho(hint, fg=typer.colors.YELLOW, err=True)
    if sink is not None:
        typer.echo(f"wrote {output} ({sink.frames} frames at {sink.fps:.2f} FPS)")
    skipped = getattr(source, "skipped", [])
    if skipped:
        for message in skipped:
            _error(message)
        typer.echo(f"{stats.frames} done, {len(skipped)} failed", err=True)
        raise typer.Exit(InputError.exit_code)
    return stats


def _check_output(source: str | None, output: Optional[Path]) -> None:
    """Fail before any work when `output` cannot be written, or would overwrite `source`."""
    from edgeseg.sinks import check_video_output

    if output is None:
        return
    check_video_output(output)
    if source is not None and output.exists() and Path(source).exists() and os.path.samefile(source, output):
        raise InputError(f"--output {output} is the input video itself; choose another output name")


@app.command()
@reports_errors
def camera(
    model: Path = ModelOpt,
    camera: str = typer.Option("0", "--camera", help="Camera index (0), device path (/dev/video0), or picam / picam:1"
                                " for a Raspberry Pi CSI camera (picamera2)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also record the overlay to this .mp4."),
    headless: bool = HeadlessOpt,
    threads: Optional[int] = ThreadsOpt,
    device: Device = DeviceOpt,
    tta: bool = TtaOpt,
    alpha: float = AlphaOpt,
    legend: bool = LegendOpt,
    hud: bool = HudOpt,
    smooth: float = SmoothOpt,
    max_frames: int = MaxFramesOpt,
    duration: float = DurationOpt,
    serve: Optional[str] = ServeOpt,
    serve_token: Optional[str] = ServeTokenOpt,
    jsonl: Optional[Path] = JsonlOpt,
    on: list[str] = OnOpt,
    exec_: list[str] = ExecOpt,
    on_clear: Optional[float] = OnClearOpt,
    min_interval: float = MinIntervalOpt,
    snapshot: Optional[Path] = SnapshotOpt,
) -> None:
    """Segment a live camera; stale frames are dropped so the overlay never lags. Press q to quit."""
    from edgeseg.sources import open_camera, wait_for_first_frame

    _check_output(None, output)
    segmenter = _segmenter(model, threads, device, tta)  # fail on a bad model before touching the camera
    source = open_camera(camera)
    try:
        wait_for_first_frame(source)
    except InputError:
        source.close()
        raise
    _run_stream(source, segmenter, output, headless, alpha, legend, hud, smooth, max_frames, duration,
                Extras(serve, serve_token, jsonl, on, exec_, on_clear, min_interval, snapshot))


@app.command()
@reports_errors
def video(
    source: str = typer.Argument(..., help="Video file, folder of images, or rtsp/http URL."),
    model: Path = ModelOpt,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Overlaid video (.mp4/.avi)."),
    headless: bool = HeadlessOpt,
    threads: Optional[int] = ThreadsOpt,
    device: Device = DeviceOpt,
    tta: bool = TtaOpt,
    alpha: float = AlphaOpt,
    legend: bool = LegendOpt,
    hud: bool = HudOpt,
    smooth: float = SmoothOpt,
    max_frames: int = MaxFramesOpt,
    duration: float = DurationOpt,
    decode_threads: int = DecodeThreadsOpt,
    realtime: bool = typer.Option(False, "--realtime", help="Read a video file at its own frame rate, as a camera"
                                  " would deliver it (frames the model cannot keep up with are dropped)."),
    serve: Optional[str] = ServeOpt,
    serve_token: Optional[str] = ServeTokenOpt,
    jsonl: Optional[Path] = JsonlOpt,
    on: list[str] = OnOpt,
    exec_: list[str] = ExecOpt,
    on_clear: Optional[float] = OnClearOpt,
    min_interval: float = MinIntervalOpt,
    snapshot: Optional[Path] = SnapshotOpt,
) -> None:
    """Segment every frame of a video file (same frame count, size and fps out) or a stream."""
    from edgeseg.sources import open_realtime, open_source

    _check_output(source, output)
    segmenter = _segmenter(model, threads, device, tta)  # fail on a bad model before opening the source
    opened = open_realtime(Path(source), decode_threads) if realtime else open_source(source, decode_threads)
    _run_stream(opened, segmenter, output, headless, alpha, legend, hud, smooth, max_frames, duration,
                Extras(serve, serve_token, jsonl, on, exec_, on_clear, min_interval, snapshot))


@app.command()
@reports_errors
def image(
    images: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    model: Path = ModelOpt,
    output: Path = typer.Option(Path("out"), "--output", "-o", help="Folder for <name>_overlay.png and <name>_classes.png."),
    threads: Optional[int] = ThreadsOpt,
    device: Device = DeviceOpt,
    tta: bool = TtaOpt,
    alpha: float = AlphaOpt,
    legend: bool = LegendOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON line per image (the --jsonl schema, plus"
                                 " image and outputs) instead of text."),
) -> None:
    """Overlay and raw class-index PNG (pixel value = class index) for each image. A bad image is
    reported on its own line and the others are still done; the exit code says if any failed."""
    import numpy as np

    from edgeseg.dataset import read_image
    from edgeseg.overlay import render
    from edgeseg.pipeline import label_shares
    from edgeseg.segmenter import upscale
    from edgeseg.sinks import check_writable_dir, write_image

    paths = _expand_images(images)
    segmenter = _segmenter(model, threads, device, tta)
    check_writable_dir(output)
    failed = 0
    for path, name in zip(paths, unique_names(paths)):
        try:
            frame = read_image(path)
        except InputError as exc:
            _error(str(exc))
            failed += 1
            continue
        class_map = upscale(segmenter.segment(frame), frame.shape[:2])
        overlay = render(frame, class_map, segmenter.labels, segmenter.palette_bgr, alpha, legend)
        write_image(output / f"{name}_overlay.png", overlay)
        write_image(output / f"{name}_classes.png", class_map)
        if as_json:
            typer.echo(json.dumps({"image": str(path), "inference_ms": round(segmenter.last_inference_ms, 3),
                                   "shares": label_shares(class_map, segmenter.labels),
                                   "overlay": str(output / f"{name}_overlay.png"),
                                   "classes": str(output / f"{name}_classes.png")}))
            continue
        present = np.unique(class_map)
        names = ", ".join(segmenter.labels.names[i] for i in present if i)
        typer.echo(f"{path}: {segmenter.last_inference_ms:.1f} ms, classes: {names or '-'} -> {name}_*.png")
    if len(paths) > 1 or failed:
        typer.echo(f"{len(paths) - failed} done, {failed} failed", err=True)
    if failed:
        raise typer.Exit(InputError.exit_code)


def _expand_images(items: list[Path]) -> list[Path]:
    """Files as given; a folder stands for its images (sorted)."""
    from edgeseg.dataset import list_images

    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise InputError(f"folder {item} holds no images (.jpg/.png/.bmp); pass image files or a folder of them")
            paths.extend(found)
        else:
            paths.append(item)
    return paths


def unique_names(paths: list[Path]) -> list[str]:
    """An output name per input: its stem, made unique where stems collide (``c1/photo.jpg`` and
    ``c2/photo.jpg`` -> ``c1_photo``, ``c2_photo``; ``photo.jpg`` and ``photo.png`` -> ``photo_jpg``,
    ``photo_png``; the same file twice -> ``photo``, ``photo_2``)."""
    names = [p.stem for p in paths]
    for widen in (lambda p: f"{p.parent.name}_{p.stem}" if p.parent.name else p.stem,
                  lambda p: f"{p.parent.name + '_' if p.parent.name else ''}{p.stem}_{p.suffix.lstrip('.').lower()}"):
        counts = {n: names.count(n) for n in names}
        names = [widen(p) if counts[n] > 1 else n for p, n in zip(paths, names)]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


@app.command("eval")
@reports_errors
def evaluate_command(
    model: Path = ModelOpt,
    data: Path = typer.Option(..., "--data", "-d", help="Dataset root in ADE layout (images/<split>, annotations/<split>)."),
    split: str = typer.Option("validation", "--split", help="Split folder name."),
    labels: str = typer.Option("model", "--labels", help="'model' (embedded labels), or a builtin name / classes.csv."),
    threads: Optional[int] = ThreadsOpt,
    device: Device = DeviceOpt,
    tta: bool = TtaOpt,
    max_images: int = typer.Option(0, "--max-images", min=0, help="Use only the first N pairs (0 = all)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (miou, pixel_accuracy, per_class)."),
) -> None:
    """mIoU, pixel accuracy and per-class IoU of a .tflite on a dataset (label 0 ignored)."""
    from edgeseg.dataset import list_pairs, resolve_labels
    import cv2

    from edgeseg.evaluate import evaluate

    segmenter = _segmenter(model, threads, device, tta)
    label_set = segmenter.labels if labels == "model" else resolve_labels(data, labels)
    pairs = list_pairs(data, split, max_images)

    def predict(image_rgb):
        return segmenter.segment(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))

    result, _ = evaluate(predict, pairs, label_set, progress=not as_json)
    report = result.to_dict(label_set.names)
    report.update({"model": str(model), "images": len(pairs), "split": split, "tta": tta})
    if as_json:
        typer.echo(json.dumps(report))
        return
    for name, iou in report["per_class"].items():
        typer.echo(f"{name:<20} {iou:.4f}")
    typer.echo(f"mIoU {report['miou']:.4f}  pixel accuracy {report['pixel_accuracy']:.4f}  ({len(pairs)} images)")


@app.command()
@reports_errors
def info(model: Path = typer.Argument(..., help="TFLite model, or a bundled model's name (camvid_lite,"
                                      " camvid_lite_fast)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Input/output spec, quantisation, labels, size and embedded metadata of a model."""
    segmenter = _segmenter(model, None, Device.cpu)
    data = segmenter.info.to_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    inp, out = segmenter.info.input, segmenter.info.output
    typer.echo(f"model      {data['path']} ({data['size_bytes'] / 1e6:.2f} MB), runtime {data['runtime']}")
    typer.echo(f"input      {list(inp.shape)} {inp.dtype}" + (f" scale {inp.scale:.6g} zero point {inp.zero_point}" if inp.quantized else ""))
    typer.echo(f"output     {list(out.shape)} {out.dtype} ({data['output_kind']})" + (f" scale {out.scale:.6g} zero point {out.zero_point}" if out.quantized else ""))
    spec = segmenter.spec
    typer.echo(f"preprocess resize to {spec.width}x{spec.height} (WxH), RGB, (pixel - {list(spec.mean)}) / {list(spec.std)}")
    names = segmenter.labels.names
    typer.echo(f"labels     {segmenter.labels.name}: {len(names)} classes ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
    typer.echo(f"metadata   {'embedded' if data['metadata_embedded'] else 'none (labels guessed from the class count)'}")
    for key, value in data["provenance"].items():
        typer.echo(f"  {key}: {value}")


@app.command()
@reports_errors
def demo(
    model: Path = typer.Option(BUNDLED_MODEL, "--model", "-m", help="Model (default: the bundled CamVid model)."),
    source: Path = typer.Option(DEMO_CLIP, "--source", show_default=False,
                                help="Video (default: the bundled dashcam clip, solidWhiteRight.mp4)."),
    output: Path = typer.Option(Path("out/demo"), "--output", "-o", help="Folder for demo.mp4 and contact_sheet.png."),
    threads: Optional[int] = ThreadsOpt,
    decode_threads: int = DecodeThreadsOpt,
) -> None:
    """Segment a real street clip with the bundled model: overlaid MP4, PNG contact sheet, FPS."""
    from edgeseg.contact import contact_sheet
    from edgeseg.sinks import check_writable_dir, write_image
    from edgeseg.sources import VideoFileSource

    clip = source
    check_writable_dir(output)
    video_path = output / "demo.mp4"
    stats = _run_stream(VideoFileSource(clip, decode_threads), _segmenter(model, threads, Device.auto), video_path,
                        True, 0.5, True, True, 0.0, 0, 0.0)
    sheet = output / "contact_sheet.png"
    write_image(sheet, contact_sheet(clip, video_path))
    typer.echo(f"wrote {sheet}")
    typer.echo(f"FPS {stats.fps:.1f} end-to-end ({stats.inference_fps:.1f} FPS is the limit set by inference time in this run)")


def main() -> None:  # console script entry point
    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
