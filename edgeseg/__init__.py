"""edgeseg: real-time semantic segmentation on edge devices with TFLite models.

Importing this package never imports TensorFlow: an edge install is numpy + OpenCV + LiteRT.
Heavy parts load lazily from their modules (`edgeseg.segmenter`, `edgeseg.pipeline`, ...).

    import edgeseg
    seg = edgeseg.load()                  # the bundled model, or edgeseg.load("model.tflite")
    result = seg(frame_bgr)               # .classes, .shares, .overlay()
    for result in edgeseg.stream("clip.mp4", seg): ...
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "stream"]


def load(model=None, threads=None, device="auto"):
    """Load a .tflite model (no argument: the bundled one); see `edgeseg.api.load`."""
    from edgeseg.api import load as _load

    return _load(model, threads, device)


def stream(source, model=None, **options):
    """Segment a video, folder, URL or camera through the threaded pipeline; see `edgeseg.api.stream`."""
    from edgeseg.api import stream as _stream

    return _stream(source, model, **options)
