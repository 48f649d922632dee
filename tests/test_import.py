"""The edge runtime must work without TensorFlow."""

import subprocess
import sys

from conftest import REPO

CHECK = """
import sys
import edgeseg, edgeseg.cli, edgeseg.segmenter, edgeseg.pipeline, edgeseg.overlay, edgeseg.sources
import edgeseg.metadata, edgeseg.evaluate, edgeseg.dataset, edgeseg.sinks, edgeseg.contact
import edgeseg.api, edgeseg.serve, edgeseg.events, edgeseg.atomic, edgeseg.picam, edgeseg.bundled, edgeseg.extras
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'))
print(heavy)
assert not heavy, heavy
"""


def test_import_edgeseg_does_not_import_tensorflow():
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "[]"


def test_segmenting_a_frame_does_not_import_tensorflow(tiny_tflite):
    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from edgeseg.segmenter import Segmenter, SegmenterOptions\n"
        f"seg = Segmenter(SegmenterOptions(Path(r'{tiny_tflite['int8']}')))\n"
        "out = seg.segment(np.full((360, 480, 3), 128, np.uint8))\n"
        "assert out.shape == (64, 96), out.shape\n"
        "assert seg.info.runtime != 'tensorflow'\n"
        "assert not any(m.startswith('tensorflow') for m in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
