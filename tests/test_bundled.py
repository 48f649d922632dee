"""The bundled model and `edgeseg demo`: what a newcomer sees first."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import REPO, shared
from edgeseg.cli import app

MODELS = REPO / "models"
CARD = json.loads((MODELS / "camvid_lite_card.json").read_text())


def test_bundled_model_is_small_and_carries_its_metadata():
    from edgeseg.segmenter import Segmenter, SegmenterOptions

    path = MODELS / "camvid_lite_int8.tflite"
    assert path.stat().st_size < 5_000_000
    seg = Segmenter(SegmenterOptions(path))
    assert seg.info.metadata_embedded and seg.labels.name == "camvid"
    # the three networks run at 384x288 and the fast one at its 320x256 training size (same weights: train resize)
    assert (seg.spec.height, seg.spec.width) == tuple(CARD["input_hw"]) == (288, 384)
    assert seg.info.input.dtype == "int8"


def test_the_fast_model_is_one_third_of_the_bundled_model_and_loads_by_name(street_frames):
    """`--model camvid_lite_fast`: one of the three networks the bundled model averages, so a third of its
    convolutions; on real street frames it mostly picks the same classes, and it is not the same model."""
    import edgeseg
    from edgeseg.backend import op_details
    from edgeseg.bundled import BUNDLED_MODEL, FAST_MODEL
    from edgeseg.errors import ModelError
    from edgeseg.segmenter import Segmenter, SegmenterOptions

    bundled, fast = (Segmenter(SegmenterOptions(Path(name))) for name in ("camvid_lite", "camvid_lite_fast"))
    assert (bundled.info.path, fast.info.path) == (str(BUNDLED_MODEL), str(FAST_MODEL))
    assert fast.labels.names == bundled.labels.names and (fast.spec.height, fast.spec.width) == tuple(CARD["trained_at_hw"]) == (256, 320)
    assert FAST_MODEL.stat().st_size < 0.4 * BUNDLED_MODEL.stat().st_size

    def convolutions(segmenter):
        return sum(op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D") for op in op_details(segmenter.interpreter))

    assert convolutions(bundled) == 3 * convolutions(fast) > 20
    def same(frame):  # the bundled map is 384x288, the fast one's 320x256: compare at the bundled size
        ours = bundled.segment(frame)
        return np.mean(ours == cv2.resize(fast.segment(frame), ours.shape[::-1], interpolation=cv2.INTER_NEAREST))

    agree = np.mean([same(frame) for frame in street_frames])
    assert 0.8 < agree < 0.999, agree
    with pytest.raises(ModelError, match="camvid_lite_fast"):
        Segmenter(SegmenterOptions(Path("camvid_lite_fastest")))
    assert edgeseg.load("camvid_lite_fast").segmenter.info.path == str(FAST_MODEL)
    shown = CliRunner().invoke(app, ["info", "camvid_lite_fast"])
    assert shown.exit_code == 0 and str(FAST_MODEL) in shown.stdout, shown.output


@pytest.mark.slow
def test_bundled_model_reaches_its_stated_miou_without_tensorflow():
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from edgeseg.cli import app\n"
        "for extra in ([], ['--tta']):\n"
        f"    r = CliRunner().invoke(app, ['eval', '-m', r'{MODELS / 'camvid_lite_int8.tflite'}', '-d',"
        f" r'{shared('camvid')}', '--json', *extra])\n"
        "    assert r.exit_code == 0, r.output\n"
        "    print(r.stdout.strip())\n"
        "assert not any(m.startswith('tensorflow') for m in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    plain, mirrored = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert plain["images"] == mirrored["images"] == 101 and mirrored["tta"]
    assert abs(plain["miou"] - CARD["int8"]["val_miou"]) <= 0.005, (plain["miou"], CARD)
    assert abs(mirrored["miou"] - CARD["int8_tta"]["val_miou"]) <= 0.005, (mirrored["miou"], CARD)
    fast = CliRunner().invoke(app, ["eval", "-m", "camvid_lite_fast", "-d", str(shared("camvid")), "--json"])
    assert fast.exit_code == 0, fast.output
    assert abs(json.loads(fast.stdout)["miou"] - CARD["fast"]["int8"]["val_miou"]) <= 0.005, (fast.stdout, CARD)


@pytest.mark.slow
def test_demo_writes_a_playable_video_with_every_frame_and_a_contact_sheet(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "FPS" in result.stdout
    capture = cv2.VideoCapture(str(tmp_path / "demo.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 221  # the bundled dashcam clip has 221 frames
    assert capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 960 and capture.get(cv2.CAP_PROP_FRAME_HEIGHT) == 540
    sheet = cv2.imread(str(tmp_path / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] == 960


def test_clip_shares_tool_reports_what_the_bundled_model_calls_the_dashcam_clip(tmp_path):
    tool = [sys.executable, str(REPO / "tools" / "clip_shares.py")]
    model = MODELS / "camvid_lite_int8.tflite"
    done = subprocess.run([*tool, str(model), "--clip", str(REPO / "edgeseg/assets/solidWhiteRight.mp4"),
                           "--frames", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    row = done.stdout.strip().splitlines()[-1]
    assert row.startswith(f"| `{model}` |")
    shares = dict(item.rsplit(" ", 1) for item in row.split("|")[2].strip().split(", "))
    # a dashcam on a highway: mostly sky and road, whatever else the model sees
    assert set(list(shares)[:2]) == {"sky", "road"}, row
    assert sum(float(v.rstrip("%")) for v in shares.values()) <= 100.5
    mirrored = subprocess.run([*tool, str(model), "--tta", "--clip", str(REPO / "edgeseg/assets/solidWhiteRight.mp4"),
                               "--frames", "3"], capture_output=True, text=True, timeout=120)
    row = mirrored.stdout.strip().splitlines()[-1]
    assert row.startswith(f"| `{model}` --tta |"), row
    assert set(list(dict(item.rsplit(" ", 1) for item in row.split("|")[2].strip().split(", ")))[:2]) == {"sky", "road"}
    keras_model = MODELS / "camvid_lite.keras"  # a model averaged with itself is itself
    both = subprocess.run([*tool, str(keras_model), str(keras_model), "--ensemble", "--clip",
                           str(REPO / "edgeseg/assets/solidWhiteRight.mp4"), "--frames", "2"],
                          capture_output=True, text=True, timeout=300)
    assert both.returncode == 0, both.stderr
    rows = [line.split("|")[2:-1] for line in both.stdout.strip().splitlines()[2:]]
    assert len(rows) == 3 and rows[0] == rows[1] == rows[2] and "road" in rows[2][0], both.stdout
    missing = subprocess.run([*tool, str(tmp_path / "nope.tflite")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "nope.tflite is not a file" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_clip_regions_score_the_share_of_each_region_read_as_an_accepted_class(tmp_path):
    """`--regions`: the bundled model reads the dashcam's sky and road ahead as sky and road (it does,
    100 % on 24 frames); a region accepting only a class nothing there is (bicyclist) scores 0 %; a
    region naming a class the model lacks is a clear error. `region_scores` on a known map: exact."""
    sys.path.insert(0, str(REPO / "tools"))
    from clip_shares import region_scores

    names = ["unlabelled", "sky", "road"]
    classes = np.zeros((10, 20), np.uint8)
    classes[:5] = 1  # top half sky
    classes[5:, :10] = 2  # bottom left road
    scores = region_scores([classes, classes], [{"name": "top", "polygon": [[0, 0], [100, 0], [100, 40], [0, 40]],
                                                 "accept": ["sky"]},
                                                {"name": "bottom", "polygon": [[0, 60], [100, 60], [100, 100], [0, 100]],
                                                 "accept": ["road"]}], names)
    assert scores == {"top": 1.0, "bottom": 0.5}  # rows 0-4 all sky; rows 6-9 half road

    clip = REPO / "edgeseg/assets/solidWhiteRight.mp4"
    regions = tmp_path / "regions.yaml"
    regions.write_text(yaml.safe_dump({clip.name: [*yaml.safe_load((REPO / "tools/clip_regions.yaml").read_text())[clip.name],
                                                   {"name": "nobody", "polygon": [[0, 0], [50, 0], [50, 50]],
                                                    "accept": ["bicyclist"]}]}))
    tool = [sys.executable, str(REPO / "tools" / "clip_shares.py"), "--regions", str(regions), "--clip", str(clip)]
    picture = tmp_path / "regions.jpg"
    done = subprocess.run([*tool, str(MODELS / "camvid_lite_int8.tflite"), "--frames", "4", "--draw-regions",
                           str(picture)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    drawn = cv2.imread(str(picture))  # the clip's mean frame, 640 wide, with the regions in red
    assert drawn.shape == (360, 640, 3) and ((drawn[..., 2] > 200) & (drawn[..., 1] < 60)).sum() > 1000
    row = done.stdout.strip().splitlines()[-1]
    assert "sky 100%" in row and "road ahead 100%" in row and "nobody 0%" in row, row
    mean = float(row.rsplit("**", 2)[-2].rstrip("%"))  # the clip's mean of its three regions (the only clip)
    assert 65.0 < mean <= 66.7, row
    regions.write_text(yaml.safe_dump({clip.name: [{"name": "x", "polygon": [[0, 0], [9, 0], [9, 9]],
                                                    "accept": ["grass"]}]}))
    bad = subprocess.run([*tool, str(MODELS / "camvid_lite_int8.tflite"), "--frames", "1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "accepts ['grass']" in bad.stderr and "Traceback" not in bad.stderr


def test_lodo_ensemble_tool_scores_members_and_their_mean_on_a_drive():
    """The same model twice: its mean softmax picks the same classes, so the ensemble's mIoU is the member's."""
    model = MODELS / "camvid_lite.keras"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "lodo_ensemble.py"), "--data", str(shared("camvid")),
                           "--drive", "0006R0_f009", "--drive", "0006R0_f010", "--tta", "--per-class", str(model),
                           str(model)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("6 frames of 0006R0_f009, 0006R0_f010"), lines[0]
    assert lines[4] == "per-class IoU:" and len(lines) == 8, lines
    per_class = [line.split(": ", 1)[1] for line in lines[5:]]  # member, member, mean: the same model thrice
    assert per_class[0] == per_class[1] == per_class[2] and per_class[0].startswith("sky "), per_class
    lines = lines[:4]
    scores = [float(line.split()[0]) for line in lines[1:]]
    assert len(scores) == 3 and scores[0] == scores[1] == scores[2]
    assert 0.3 < scores[0] < 1.0  # trained on these frames: well above chance (1/11)
    mirrored = [float(line.split("with --tta")[1]) for line in lines[1:3]]  # each member with mirror averaging
    assert mirrored[0] == mirrored[1] and 0.3 < mirrored[0] < 1.0 and "with --tta" not in lines[3]
    assert mirrored[0] != scores[0]  # the mirrored view changes the maps (0.449 -> 0.510 on these six frames)


def test_side_by_side_tool_draws_each_model_in_its_own_column(tmp_path):
    """The before/after picture of the card: one column per model, one row per frame, the overlay drawn."""
    from edgeseg.sources import frames_at

    tool = [sys.executable, str(REPO / "tools" / "side_by_side.py")]
    model, clip, out = MODELS / "camvid_lite_int8.tflite", REPO / "edgeseg/assets/solidWhiteRight.mp4", tmp_path / "s.png"
    done = subprocess.run([*tool, str(model), str(model), "--clip", str(clip), "--frames", "2", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    picture = cv2.imread(str(out))
    assert picture.shape == (32 + 2 * 360, 2 * 640, 3)  # title bar + two 960x540 frames at 640 wide, two columns
    left, right = picture[32:, :640], picture[32:, 640:]
    assert (left == right).all()  # the same model draws the same overlay
    first = cv2.resize(frames_at(clip, [0])[0], (640, 360), interpolation=cv2.INTER_AREA)
    assert cv2.absdiff(left[:360], first).mean() > 10  # the mask is blended in, not the bare frame
    bad = subprocess.run([*tool, str(model), str(model), "--title", "only one", "-o", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--title" in bad.stderr and "Traceback" not in bad.stderr
