"""edgeseg: real-time semantic segmentation on edge devices with TFLite models.

Importing this package never imports TensorFlow: an edge install is numpy + OpenCV + LiteRT.
Heavy parts load lazily from their modules (`edgeseg.segmenter`, `edgeseg.pipeline`, ...).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
