"""Files that ship inside the package (see assets/README.md): the models and the demo clip."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_MODEL = ASSETS / "camvid_lite_int8.tflite"  # the default: three networks averaged in one graph
FAST_MODEL = ASSETS / "camvid_lite_fast_int8.tflite"  # one of the three alone: about four times the frame rate
# Names `--model` and `edgeseg.load()` accept instead of a path (models/MODEL_CARD.md).
BUNDLED_MODELS = {"camvid_lite": BUNDLED_MODEL, "camvid_lite_fast": FAST_MODEL}
DEMO_CLIP = ASSETS / "solidWhiteRight.mp4"  # MIT, Udacity (solidWhiteRight.LICENSE beside it)


def resolve_model(model: str | Path) -> Path:
    """`model` as a path, or the bundled model it names when no such file exists (``camvid_lite``,
    ``camvid_lite_fast``)."""
    path = Path(model)
    if not path.exists() and str(model) in BUNDLED_MODELS:
        return BUNDLED_MODELS[str(model)]
    return path
