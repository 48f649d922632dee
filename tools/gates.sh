#!/usr/bin/env bash
# The gates a candidate must pass before it replaces the bundled model (issue #16; models/MODEL_CARD.md).
#
#   tools/gates.sh runs/camvid_lite_e240 camvid_lite_e240        # -> runs/gates/camvid_lite_e240/
#   CONVERT_OUT=models tools/gates.sh runs/camvid_lite camvid_lite   # step 1 is then `make bundle`'s convert
#   MODEL=runs/camvid_lite_e240/last_w8.keras tools/gates.sh runs/camvid_lite_e240 e240_w8   # another .keras of the run,
#       e.g. its kernels snapped to the int8 grid (`python -m train snap-weights RUN/last.keras`)
#
# The bundled model it compares against is edgeseg/assets/camvid_lite_int8.tflite (models/ only links to it,
# and convert replaces that link rather than writing through it), so CONVERT_OUT=models leaves it in place.
#
# 1. convert: float16 + int8, calibrated on CamVid training frames, int8 agreement with Keras >= 98 % on
#    the validation frames and on three clips no model saw (the same command as `make bundle`);
# 2. --edgetpu export: every op one the Edge TPU compiler maps (the report says which are not);
# 3. end-to-end FPS of `edgeseg video` on vtest.avi (480x360, bundled settings), candidate and bundled
#    alternating, twice each, in one run (compare only within it; the CPU's SIMD flags are printed);
# 4. what each model calls the unlabelled clips (tools/clip_shares.py), candidate against bundled, and
#    how much of the coarse regions drawn where the class is not in doubt each reads right
#    (tools/clip_regions.yaml; one model's reading swings by up to 23 points along one schedule, so read a
#    candidate against that spread: configs/lodo/README.md);
# 5. side-by-side overlays on the dashcam clip and the plaza (tools/side_by_side.py), for the card.
# Steps 1 and 2 stop the script when they fail; 3-5 are figures a person reads against the card.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: tools/gates.sh RUN_DIR LABEL}
LABEL=${2:?usage: tools/gates.sh RUN_DIR LABEL}
PY=${PY:-.venv/bin/python}
EDGESEG=${EDGESEG:-.venv/bin/edgeseg}
OUT=runs/gates/$LABEL
CONVERT_OUT=${CONVERT_OUT:-$OUT}
CANDIDATE=$CONVERT_OUT/${LABEL}_int8.tflite
BUNDLED=${BUNDLED:-edgeseg/assets/camvid_lite_int8.tflite}   # BUNDLED=old.tflite: compare against another model
SHARED=../shared/data
mkdir -p "$OUT"
MODEL=${MODEL:-$RUN/last.keras}
[ -f "$MODEL" ] || { echo "error: $MODEL not found; finish the training run first" >&2; exit 2; }

echo "== 1. convert (gate: int8 agreement >= 98 % on val and on the unseen clips)"
$PY -m convert --model "$MODEL" --quantize all --name "$LABEL" \
  --calib-data $SHARED/camvid --calib-split training \
  --eval-data $SHARED/camvid --eval-split validation --min-agreement 0.98 \
  --check-video $SHARED/video/vtest.avi --check-video $SHARED/video/car-detection.mp4 \
  --check-video edgeseg/assets/solidWhiteRight.mp4 --output "$CONVERT_OUT"

echo "== 2. Edge TPU export (gate: no unmapped op)"
$PY -m convert --model "$MODEL" --quantize int8 --edgetpu --name "${LABEL}_edgetpu" \
  --calib-data $SHARED/camvid --eval-data $SHARED/camvid --num-eval 8 --min-agreement 0.97 \
  --output "$OUT/edgetpu" | tee "$OUT/edgetpu.txt"

echo "== 3. end-to-end FPS (gate: >= 60), alternating; CPU flags:"
$PY -c "from benchmarks.fingerprint import cpu_features, cpu_model; print(cpu_model(), *cpu_features())"
for round in 1 2; do
  for model in "$BUNDLED" "$CANDIDATE"; do
    echo "-- $model (round $round)"
    $EDGESEG video $SHARED/video/vtest.avi --model "$model" --headless -o "$OUT/fps.mp4" 2>&1 | grep -i -E 'fps|p50' || true
  done
done | tee "$OUT/fps.txt"
rm -f "$OUT/fps.mp4"

echo "== 4. clip shares (read against the bundled model's)"
$PY tools/clip_shares.py --regions tools/clip_regions.yaml "$BUNDLED" "$CANDIDATE" "$MODEL" \
  | tee "$OUT/clip_shares.md"

echo "== 5. side-by-side pictures"
TITLES=(--title "bundled (before)" --title "$LABEL (candidate)")
$PY tools/side_by_side.py "$BUNDLED" "$CANDIDATE" "${TITLES[@]}" --clip edgeseg/assets/solidWhiteRight.mp4 \
  --frames 4 -o "$OUT/dashcam_bundled_vs_${LABEL}.jpg"
$PY tools/side_by_side.py "$BUNDLED" "$CANDIDATE" "${TITLES[@]}" --clip $SHARED/video/vtest.avi \
  --frames 3 -o "$OUT/vtest_bundled_vs_${LABEL}.jpg"
$PY tools/side_by_side.py "$BUNDLED" "$CANDIDATE" "${TITLES[@]}" --clip $SHARED/video/car-detection.mp4 \
  --frames 3 -o "$OUT/carpark_bundled_vs_${LABEL}.jpg"
echo "gates done: $OUT"
