"""Shared fixtures: real data from ../shared, and tiny models trained on it in seconds."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, camvid) -> Path:
    """A tiny unet-lite trained for 10 short epochs on 48 real CamVid images (~1 min), saved like
    `python -m train` saves it (best.keras + labels.json; snapshots of epochs 5 and 10)."""
    from train.config import TrainConfig
    from train.run import fit

    run_dir = tmp_path_factory.mktemp("tiny_run")
    config = TrainConfig(
        data_dir=str(camvid), run_dir=str(run_dir), architecture="unet-lite", height=TINY_HW[0], width=TINY_HW[1],
        width_multiplier=0.5, batch_size=8, epochs=10, learning_rate=0.01, lr_schedule="cosine",
        max_examples=48, sample_images=2, early_stop_patience=50, seed=1, snapshot_every=5,
    )
    fit(config)
    return run_dir


@pytest.fixture(scope="session")
def tiny_keras(tiny_run):
    import keras

    import train.losses  # noqa: F401
    import train.optim  # noqa: F401

    return keras.models.load_model(tiny_run / "best.keras", compile=False)


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory, tiny_run, camvid) -> dict[str, Path]:
    """The tiny model exported every way the runtime must handle, each with metadata."""
    from convert.calibration import calibration_images, representative_dataset
    from convert.export import convert
    from convert.source import labels_for, load_source
    from edgeseg.metadata import ModelMetadata, attach_metadata
    from edgeseg.preprocess import InputSpec

    out = tmp_path_factory.mktemp("tiny_tflite")
    source = load_source(tiny_run / "best.keras")
    spec = InputSpec(*TINY_HW)
    labels = labels_for(source, camvid)
    paths = calibration_images(camvid, "training", 24, seed=0, exclude=set())

    def representative():
        return representative_dataset(paths, spec, progress=False)

    variants = {
        "float32": ("float32", "int8", False),
        "float16": ("float16", "int8", False),
        "int8": ("int8", "int8", False),
        "uint8": ("int8", "uint8", False),
        "argmax": ("int8", "int8", True),
    }
    models = {}
    for key, (mode, io_type, argmax) in variants.items():
        data = convert(source, mode, io_type, representative, argmax)
        metadata = ModelMetadata(labels=labels, input=spec, output="class_map" if argmax else "logits",
                                 provenance={"quantization": mode})
        path = out / f"tiny_{key}.tflite"
        path.write_bytes(attach_metadata(data, metadata))
        models[key] = path
    return models
