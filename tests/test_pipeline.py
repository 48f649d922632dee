"""Threaded pipeline: live sources drop stale frames, streams that stop, smoothing, overlay."""

import hashlib
import math
import os
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import shared
from edgeseg.errors import EdgesegError, InputError, StreamError
from edgeseg.labels import CAMVID
from edgeseg.overlay import blend, class_shares, colourise, render
from edgeseg.pipeline import (AUTO_GAIN, AUTO_MAX_THREADS, AUTO_SECONDS, AUTO_SKIP, AUTO_WINDOW, PipelineOptions,
                              _ThreadTuner, run)
from edgeseg.segmenter import Segmenter, SegmenterOptions
from edgeseg.sinks import VideoSink
from edgeseg.sources import LiveSource, PacedCapture, VideoFileSource, frames_at, spaced_frames


class SlowConsumer(Segmenter):
    """The real segmenter, made slower than the camera so frames pile up at the source."""

    def invoke(self, tensor):
        time.sleep(0.03)
        return super().invoke(tensor)


def test_live_source_drops_stale_frames_and_reports_them(tiny_tflite):
    seg = SlowConsumer(SegmenterOptions(tiny_tflite["int8"]))
    # A file paced at 100 frames/s stands in for a camera that outpaces inference (30 ms a frame).
    live = LiveSource(PacedCapture(shared("video", "vtest.avi"), fps=100), "fast camera")
    with live:
        stats = run(live, seg, PipelineOptions(max_frames=10), progress=False)
    assert stats.frames == 10
    assert stats.dropped > 10  # many frames arrived while one was being segmented; only the newest is used
    assert live.captured >= stats.frames + stats.dropped - 1


def test_camera_that_stops_mid_stream_keeps_what_was_recorded(tiny_tflite, tmp_path):
    seg = Segmenter(SegmenterOptions(tiny_tflite["int8"]))
    capture = cv2.VideoCapture(str(shared("video", "car-detection.mp4")))
    out = tmp_path / "rec.mp4"
    with LiveSource(capture, "camera 0") as live:
        sink = VideoSink(out, 12.5, (768, 432))
        with pytest.raises(StreamError, match="ended early") as info:
            run(live, seg, PipelineOptions(), sink=sink, progress=False)
    assert info.value.frames_done > 0
    assert out.is_file() and not (tmp_path / ".rec.partial.mp4").exists()


def test_failure_mid_run_removes_the_partial_output(tiny_tflite, tmp_path):
    class Exploding(Segmenter):
        calls = 0

        def invoke(self, tensor):
            self.calls += 1
            if self.calls == 5:
                raise RuntimeError("boom")
            return super().invoke(tensor)

    seg = Exploding(SegmenterOptions(tiny_tflite["int8"]))
    out = tmp_path / "x.mp4"
    with VideoFileSource(shared("video", "vtest.avi")) as source:
        sink = VideoSink(out, source.fps, (480, 360))
        with pytest.raises(RuntimeError):
            run(source, seg, PipelineOptions(), sink=sink, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(params=["one host thread", "reader and drawer"])
def thread_layout(request, monkeypatch):
    """Both host-thread layouts (2-core devices get one host thread, larger ones two)."""
    monkeypatch.setattr("edgeseg.pipeline.separate_reader", lambda: request.param == "reader and drawer")
    return request.param


class _KeepingSink(VideoSink):
    """A real sink that also keeps what it was given, to compare frame by frame."""

    def __init__(self, *args):
        super().__init__(*args)
        self.kept = []

    def write(self, frame):
        self.kept.append(frame.copy())
        super().write(frame)


def test_every_inferred_frame_is_drawn_in_order_in_both_thread_layouts(tiny_tflite, tmp_path, thread_layout):
    seg = Segmenter(SegmenterOptions(tiny_tflite["int8"]))
    with VideoFileSource(shared("video", "vtest.avi")) as source:
        sink = _KeepingSink(tmp_path / "o.mp4", source.fps, (480, 360))
        stats = run(source, seg, PipelineOptions(max_frames=37, hud=False), sink=sink, progress=False)
    assert stats.frames == 37 and len(sink.kept) == 37
    assert int(cv2.VideoCapture(str(tmp_path / "o.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 37
    with VideoFileSource(shared("video", "vtest.avi")) as source:
        for index, got in enumerate(sink.kept):  # output frame i is the overlay of input frame i
            frame = source.read()
            expected = render(frame, seg.segment(frame), seg.labels, seg.palette_bgr, 0.5, legend=True)
            np.testing.assert_array_equal(got, expected, err_msg=f"frame {index}")


class _FailingSink(VideoSink):
    def write(self, frame):
        if self.frames == 6:
            raise OSError("disk full")
        super().write(frame)


class _FailingSource(VideoFileSource):
    def read(self):
        if self._read == 6:
            raise InputError("frame 6 is unreadable")
        return super().read()


@pytest.mark.parametrize("broken", ["sink", "source"])
def test_host_thread_failures_stop_the_run_cleanly_in_both_layouts(tiny_tflite, tmp_path, thread_layout, broken):
    seg = Segmenter(SegmenterOptions(tiny_tflite["int8"]))
    source_type = _FailingSource if broken == "source" else VideoFileSource
    sink_type = _FailingSink if broken == "sink" else VideoSink
    with source_type(shared("video", "vtest.avi")) as source:
        sink = sink_type(tmp_path / "x.mp4", source.fps, (480, 360))
        with pytest.raises(EdgesegError, match="disk full" if broken == "sink" else "frame 6"):
            run(source, seg, PipelineOptions(), sink=sink, progress=False)
    assert list(tmp_path.iterdir()) == []  # the partial output is gone


class _SlowSink(VideoSink):
    """A real sink on a slow disk: the host thread becomes the slower side."""

    def write(self, frame):
        time.sleep(0.004)
        super().write(frame)


@pytest.mark.parametrize("slower", ["host", "inference", "host, smoothing"])
def test_argmax_moves_to_the_inference_thread_only_when_the_host_is_slower(tiny_tflite, tmp_path, slower,
                                                                           monkeypatch):
    monkeypatch.setattr("edgeseg.pipeline.separate_reader", lambda: False)
    seg = SlowConsumer(SegmenterOptions(tiny_tflite["int8"])) if slower == "inference" else \
        Segmenter(SegmenterOptions(tiny_tflite["int8"]))
    sink_type = VideoSink if slower == "inference" else _SlowSink
    with VideoFileSource(shared("video", "vtest.avi")) as source:
        sink = sink_type(tmp_path / "o.mp4", source.fps, (480, 360))
        options = PipelineOptions(max_frames=30, smooth=0.5 if "smoothing" in slower else 0.0)
        stats = run(source, seg, options, sink=sink, progress=False)
    assert stats.frames == 30 and sink.frames == 30
    if slower == "host":
        assert stats.argmax_on_inference_thread >= 20, stats
        assert "argmax on the inference thread" in stats.summary()
    else:  # inference is the slower side, or a smoother needs every frame in order on one thread
        assert stats.argmax_on_inference_thread == 0, stats


def test_smoothing_reduces_flicker_on_a_real_clip(tiny_tflite):
    seg = Segmenter(SegmenterOptions(tiny_tflite["int8"]))
    flicker = {}
    for factor in (0.0, 0.7):
        with VideoFileSource(shared("video", "vtest.avi")) as source:
            flicker[factor] = run(source, seg, PipelineOptions(smooth=factor, max_frames=60), progress=False).flicker
    assert flicker[0.0] > 0
    assert flicker[0.7] < 0.8 * flicker[0.0], flicker


def test_host_stages_are_timed_per_frame(tiny_tflite, tmp_path):
    seg = Segmenter(SegmenterOptions(tiny_tflite["int8"]))
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        with VideoFileSource(shared("video", "vtest.avi")) as source:
            sink = VideoSink(tmp_path / "o.mp4", source.fps, (480, 360))
            stats = run(source, seg, PipelineOptions(max_frames=20), sink=sink, progress=False)
        assert cv2.getNumThreads() == 2  # the pipeline's single-threaded OpenCV is undone afterwards
    finally:
        cv2.setNumThreads(before)  # the setting is process-wide: leave it as the other tests found it
    assert set(stats.stage_ms) == {"decode", "prepare", "argmax", "draw", "encode"}
    assert all(0 < ms < 1000 for ms in stats.stage_ms.values()), stats.stage_ms
    # CPU over all threads: at least the stages timed on the host thread, at most what the cores give
    assert sum(stats.stage_ms.values()) * 0.5 < stats.cpu_ms_per_frame <= 1.1 * os.cpu_count() * 1000 / stats.fps
    assert "ms/frame over all threads" in stats.summary()
    assert "host stages p50 ms: decode" in stats.summary()
    with VideoFileSource(shared("video", "vtest.avi")) as source:  # no sink: nothing encoded, nothing timed
        assert "encode" not in run(source, seg, PipelineOptions(max_frames=5), progress=False).stage_ms


def test_run_statistics_keep_a_bounded_window_of_recent_frames(tiny_tflite, monkeypatch):
    import edgeseg.pipeline as pipeline

    class SlowThenFast(Segmenter):
        calls = 0

        def invoke(self, tensor):
            raw = super().invoke(tensor)
            self.calls += 1
            if self.calls <= 10:
                self.last_inference_ms += 30.0  # as if the first frames had taken 30 ms longer
            return raw

    monkeypatch.setattr(pipeline, "STATS_WINDOW", 4)
    seg = SlowThenFast(SegmenterOptions(tiny_tflite["int8"]))
    with VideoFileSource(shared("video", "vtest.avi")) as source:
        stats = run(source, seg, PipelineOptions(max_frames=16), progress=False)
    # 10 of 16 frames were slow; only the newest 4 (fast) are kept, so a long live run cannot
    # grow memory without bound.
    assert stats.frames == 16 and stats.inference_p50_ms < 30, stats


def test_smoothing_refuses_class_map_models(tiny_tflite):
    from edgeseg.errors import EdgesegError

    seg = Segmenter(SegmenterOptions(tiny_tflite["argmax"]))
    with VideoFileSource(shared("video", "vtest.avi")) as source:
        with pytest.raises(EdgesegError, match="class scores"):
            run(source, seg, PipelineOptions(smooth=0.5, max_frames=2), progress=False)


def test_overlay_from_a_model_size_map_equals_the_upscaled_map(street_frames):
    """render colours the class map at model size and upscales the colours (and the not-labelled
    mask, when there is one): the same picture as upscaling the labels first."""
    frame = street_frames[0]
    rng = np.random.default_rng(0)
    for share_unlabelled in (0.0, 0.3):
        small = rng.integers(1, 12, (96, 128)).astype(np.uint8)
        small[rng.random(small.shape) < share_unlabelled] = 0
        full = cv2.resize(small, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
        palette = CAMVID.palette_bgr()
        expected = cv2.addWeighted(frame, 0.6, palette[full], 0.4, 0.0)
        expected[full == 0] = frame[full == 0]
        np.testing.assert_array_equal(render(frame, small, CAMVID, palette, 0.4, legend=False), expected)
        np.testing.assert_array_equal(render(frame, full, CAMVID, palette, 0.4, legend=False), expected)


def test_file_decoding_uses_the_threads_asked_for():
    clip = shared("video", "vtest.avi")
    for threads in (1, 2):
        with VideoFileSource(clip, decode_threads=threads) as source:
            assert source.decoder_threads == threads
            assert source.read().shape == (360, 480, 3)
    with VideoFileSource(clip) as one, VideoFileSource(clip, decode_threads=0) as auto:
        for _ in range(20):  # the decoder's thread count does not change the pixels
            np.testing.assert_array_equal(one.read(), auto.read())
    with pytest.raises(EdgesegError, match="decode-threads"):
        VideoFileSource(clip, decode_threads=-1)


def test_overlay_colours_blends_and_leaves_unlabelled_pixels_alone():
    frame = cv2.imread(str(shared("images", "dog.jpg")))
    class_map = np.zeros(frame.shape[:2], np.uint8)
    class_map[:100] = 4  # road
    palette = CAMVID.palette_bgr()
    colour = colourise(class_map, palette)
    assert tuple(colour[0, 0]) == (128, 64, 128)  # road is (128, 64, 128) in RGB and in BGR
    mixed = blend(frame, colour, class_map, 0.5)
    np.testing.assert_array_equal(mixed[200:], frame[200:])
    expected = (frame[0, 0].astype(int) + np.array([128, 64, 128])) / 2
    assert np.abs(mixed[0, 0].astype(int) - expected).max() <= 1
    shares = class_shares(class_map, 12)
    assert shares[4] == pytest.approx(100 / frame.shape[0])
    drawn = render(frame, class_map, CAMVID, palette, 0.5, legend=True, hud_lines=["99.0 FPS"])
    assert drawn.shape == frame.shape and not np.array_equal(drawn[:40, -150:], mixed[:40, -150:])


def test_spaced_frames_are_the_clips_own_frames_first_and_last_included():
    clip = shared("video", "vtest.avi")
    with VideoFileSource(clip) as source:
        every = []
        while (frame := source.read()) is not None:
            every.append(frame)
    picked = spaced_frames(clip, 5)
    for got, index in zip(picked, (0, 198, 397, 596, 794)):
        np.testing.assert_array_equal(got, every[index])
    np.testing.assert_array_equal(frames_at(clip, [10, 3])[0], every[10])  # in the order asked
    with pytest.raises(InputError, match="ended after 795 frames, before frame 900"):
        frames_at(clip, [5, 900])


def test_inference_threads_are_chosen_on_the_stream_without_changing_a_single_pixel(monkeypatch):
    monkeypatch.setattr("edgeseg.pipeline.os.cpu_count", lambda: 2)  # the 2-core layout on any machine
    monkeypatch.setattr("edgeseg.pipeline.AUTO_SECONDS", 0.25)  # both timings within 300 frames on fast CPUs

    def segment(threads, frames=300):
        seg = Segmenter(SegmenterOptions(Path("camvid_lite_fast"), threads=threads))
        digests = []
        with VideoFileSource(shared("video", "vtest.avi")) as source:
            stats = run(source, seg, PipelineOptions(max_frames=frames), progress=False,
                        on_frame=lambda result: digests.append(hashlib.sha1(result.class_map.tobytes()).digest()))
        return seg, stats, digests

    auto, auto_stats, auto_maps = segment(None)
    chosen = re.fullmatch(r"(\d) \(chosen on this stream: ([\d.]+) FPS against ([\d.]+) on (\d)\)", auto_stats.threads)
    assert chosen, auto_stats.threads
    threads, fps, other_fps, other = int(chosen[1]), float(chosen[2]), float(chosen[3]), int(chosen[4])
    assert {threads, other} == {1, 2} and auto.threads == threads
    rates = {threads: fps, other: other_fps}
    assert (threads == 2) == (rates[2] >= AUTO_GAIN * rates[1])  # more threads stay only when they pay
    fixed, fixed_stats, fixed_maps = segment(1)
    assert fixed_stats.threads == "1 (given)" and fixed.threads == 1
    assert len(auto_maps) == len(fixed_maps) == 300
    differ = [index for index, (a, b) in enumerate(zip(auto_maps, fixed_maps)) if a != b]
    assert not differ, f"frames {differ[:5]} differ after the thread switch"  # the rebuilt interpreter computes the same
    short, short_stats, _ = segment(None, AUTO_SKIP + 3)
    assert short_stats.threads == "1 (the run was too short to time 2 threads against 1)" and short.threads is None


@pytest.mark.parametrize("one, many, kept", [(20.0, 26.0, 2), (20.0, 20.5, 1), (512.0, 256.0, 1)])
def test_more_inference_threads_stay_only_when_they_deliver_more_frames(tiny_tflite, one, many, kept):
    seg = Segmenter(SegmenterOptions(tiny_tflite["int8"]))
    now = [0.0]
    tuner = _ThreadTuner(seg, cores=8, clock=lambda: now[0])
    assert tuner.many == AUTO_MAX_THREADS
    tensor = seg.prepare(np.zeros((360, 480, 3), np.uint8))
    inferred = 0
    while tuner.active:
        seg.invoke(tensor)  # the real interpreter, rebuilt by the tuner, keeps working
        now[0] += 1.0 / (one if (seg.threads or 1) == 1 else many)
        inferred += 1
        tuner.after_frame(inferred)
    windows = [max(AUTO_WINDOW, math.ceil(AUTO_SECONDS * rate - 1e-6)) for rate in (one, many)]
    # each timing: warm-up, then its frames and its seconds (+1 frame where float sums of 1/rate fall short)
    assert 0 <= inferred - (2 * AUTO_SKIP + sum(windows)) <= 2
    assert seg.threads == (AUTO_MAX_THREADS if kept == 2 else 1)
    assert tuner.rates == pytest.approx({1: one, AUTO_MAX_THREADS: many})
    if kept == 2:
        assert tuner.describe() == f"{AUTO_MAX_THREADS} (chosen on this stream: {many:.1f} FPS against {one:.1f} on 1)"
    else:
        assert tuner.describe() == f"1 (chosen on this stream: {one:.1f} FPS against {many:.1f} on {AUTO_MAX_THREADS})"


def test_a_run_cut_short_while_timing_leaves_the_choice_to_the_next_stream(tiny_tflite):
    seg = Segmenter(SegmenterOptions(tiny_tflite["int8"]))
    now = [0.0]
    tuner = _ThreadTuner(seg, cores=2, clock=lambda: now[0])
    inferred = 0
    while not tuner.rates:  # the one-thread timing
        inferred += 1
        now[0] += 0.1
        tuner.after_frame(inferred)
    assert seg.threads == 2 and tuner.active
    tuner.after_frame(inferred + 1)  # the run stops here, before two threads were timed
    assert tuner.describe() == "2 (the run ended before 2 threads were timed against 1)"
    tuner.finish()
    assert seg.threads is None and seg.invoke(seg.prepare(np.zeros((360, 480, 3), np.uint8))).size
    assert _ThreadTuner(seg, cores=2).active  # the segmenter's next stream times both again


def test_given_threads_and_a_single_core_are_left_alone(tiny_tflite):
    seg = Segmenter(SegmenterOptions(tiny_tflite["int8"], threads=2))
    tuner = _ThreadTuner(seg, cores=2)
    for inferred in range(1, AUTO_SKIP + 2 * AUTO_WINDOW + 5):
        tuner.after_frame(inferred)
    assert not tuner.rates and seg.threads == 2 and tuner.describe() == "2 (given)"
    assert _ThreadTuner(Segmenter(SegmenterOptions(tiny_tflite["int8"])), cores=1).describe() == "1 (one core)"
