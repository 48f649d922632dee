"""Files that ship inside the package (see assets/README.md): the default model and the demo clip."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_MODEL = ASSETS / "camvid_lite_int8.tflite"
DEMO_CLIP = ASSETS / "solidWhiteRight.mp4"  # MIT, Udacity (solidWhiteRight.LICENSE beside it)
