"""Shared fixtures: real data from ../shared, and tiny models trained on it in seconds."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TINY_HW = (64, 96)  # tiny models: 64x96 (HxW), street aspect, divisible by 32


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow cases first: with the suite spread over workers (`make test`), a long case picked
    up last would leave the other workers idle while it runs alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order otherwise


def shared(*parts: str) -> Path:
    """A path under ../shared/data; fails (never skips) when the shared data is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} is missing: tests need ../shared/data beside the repository")
    return path


@pytest.fixture(scope="session")
def camvid() -> Path:
    return shared("camvid")


@pytest.fixture(scope="session")
def street_frames() -> list[np.ndarray]:
    """Eight real BGR frames: CamVid validation images and frames of a real clip."""
    import cv2

    images = sorted(shared("camvid", "images", "validation").glob("*.jpg"))[:4]
    frames = [cv2.imread(str(p)) for p in images]
    capture = cv2.VideoCapture(str(shared("video", "vtest.avi")))
    for index in range(200):
        ok, frame = capture.read()
        if index % 50 == 0:
            frames.append(frame)
    capture.release()
    return frames


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder of session fixture data, built once per test run.

    Spread over workers (`make test`: pytest-xdist), the first worker that needs it builds it
    under a lock in the run's shared temp folder and the others wait and reuse it, instead of each
    spending a minute on the same training. Run on its own, it is a fresh temp folder.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        path = tmp_path_factory.mktemp(name)
        build(path)
        return path
    root = tmp_path_factory.getbasetemp().parent  # this run's workers share it, no other run does
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if build raises
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, camvid) -> Path:
    """A tiny unet-lite trained for 10 short epochs on 48 real CamVid images (~1 min), saved like
    `python -m train` saves it (best.keras + labels.json; snapshots of epochs 5 and 10)."""

    def build(run_dir: Path) -> None:
        from train.config import TrainConfig
        from train.run import fit

        config = TrainConfig(
            data_dir=str(camvid), run_dir=str(run_dir), architecture="unet-lite", height=TINY_HW[0],
            width=TINY_HW[1], width_multiplier=0.5, batch_size=8, epochs=10, learning_rate=0.01,
            lr_schedule="cosine", max_examples=48, sample_images=2, early_stop_patience=50, seed=1, snapshot_every=5,
        )
        fit(config)

    return built_once(tmp_path_factory, "tiny_run", build)


@pytest.fixture(scope="session")
def tiny_keras(tiny_run):
    import keras

    import train.losses  # noqa: F401
    import train.optim  # noqa: F401

    return keras.models.load_model(tiny_run / "best.keras", compile=False)


TINY_VARIANTS = {  # key: (quantisation, io type, ArgMax inside)
    "float32": ("float32", "int8", False),
    "float16": ("float16", "int8", False),
    "int8": ("int8", "int8", False),
    "uint8": ("int8", "uint8", False),
    "argmax": ("int8", "int8", True),
}


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory, tiny_run, camvid) -> dict[str, Path]:
    """The tiny model exported every way the runtime must handle, each with metadata."""

    def build(out: Path) -> None:
        from convert.calibration import calibration_images, representative_dataset
        from convert.export import convert
        from convert.source import labels_for, load_source
        from edgeseg.metadata import ModelMetadata, attach_metadata
        from edgeseg.preprocess import InputSpec

        source = load_source(tiny_run / "best.keras")
        spec = InputSpec(*TINY_HW)
        labels = labels_for(source, camvid)
        paths = calibration_images(camvid, "training", 24, seed=0, exclude=set())

        def representative():
            return representative_dataset(paths, spec, progress=False)

        for key, (mode, io_type, argmax) in TINY_VARIANTS.items():
            data = convert(source, mode, io_type, representative, argmax)
            metadata = ModelMetadata(labels=labels, input=spec, output="class_map" if argmax else "logits",
                                     provenance={"quantization": mode})
            (out / f"tiny_{key}.tflite").write_bytes(attach_metadata(data, metadata))

    out = built_once(tmp_path_factory, "tiny_tflite", build)
    return {key: out / f"tiny_{key}.tflite" for key in TINY_VARIANTS}
