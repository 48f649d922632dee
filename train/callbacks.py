"""Training callbacks: safe best checkpoint, sample prediction grids, training-curve plot."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import keras
import numpy as np

from edgeseg import atomic
from edgeseg.atomic import atomic_path
from edgeseg.errors import raise_if_interrupted
from edgeseg.labels import LabelSet
from edgeseg.overlay import colourise
from edgeseg.sinks import write_image


class DeliverInterrupt(keras.callbacks.Callback):
    """Raise a SIGINT/SIGTERM the training received but whose first raise CPython dropped (it came
    while a TensorFlow finaliser ran): checked after every step and every epoch, so Ctrl-C always
    stops a run within one step (`edgeseg.errors.raise_if_interrupted`)."""

    def on_train_batch_end(self, batch, logs=None):
        raise_if_interrupted()

    def on_test_batch_end(self, batch, logs=None):
        raise_if_interrupted()

    def on_epoch_end(self, epoch, logs=None):
        raise_if_interrupted()


class ValidatedEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's early stopping, acting only on the epochs that ran validation (``validation_every``):
    its patience counts validations."""

    def on_epoch_end(self, epoch, logs=None):
        if logs and self.monitor in logs:
            super().on_epoch_end(epoch, logs)


class BestCheckpoint(keras.callbacks.Callback):
    """Save the model when `monitor` improves; never overwrite a better checkpoint.

    The best value so far is kept in ``<path>.json`` beside the model, so a resumed (or a
    completely new) run in the same folder still refuses to replace a better model. Writes go
    to a temporary file renamed into place, so a kill mid-save leaves the old model intact.
    """

    def __init__(self, path: Path, monitor: str = "val_miou"):
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        self.record_path = self.path.with_suffix(self.path.suffix + ".json")
        self.best = -math.inf
        if self.record_path.is_file():
            self.best = float(json.loads(self.record_path.read_text())["value"])

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)) or float(value) <= self.best:
            return
        self.best = float(value)
        with atomic_path(self.path) as tmp:
            self.model.save(tmp)
        atomic.write_text(self.record_path, json.dumps({"monitor": self.monitor, "value": self.best, "epoch": epoch + 1}))
        print(f"\nepoch {epoch + 1}: {self.monitor} improved to {self.best:.4f}, saved {self.path}")


class Snapshots(keras.callbacks.Callback):
    """Save ``epoch_NNN.keras`` every `every` epochs (atomically), so points of one schedule can be
    scored afterwards (held-out data, clips) without training a run per point."""

    def __init__(self, folder: Path, every: int):
        super().__init__()
        self.folder, self.every = Path(folder), every

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / f"epoch_{epoch + 1:03d}.keras") as tmp:
            self.model.save(tmp)


def prediction_grid(images_rgb: np.ndarray, truths: np.ndarray, predictions: np.ndarray, labels: LabelSet) -> np.ndarray:
    """Rows of (image | truth | prediction) as one BGR uint8 picture."""
    palette = labels.palette_bgr()
    rows = []
    for image, truth, prediction in zip(images_rgb, truths, predictions):
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        rows.append(np.concatenate([bgr, colourise(truth, palette), colourise(prediction, palette)], axis=1))
    return np.concatenate(rows, axis=0)


class PredictionGrid(keras.callbacks.Callback):
    """Write ``samples/epoch_NNN.png``: fixed validation images, their truth and the prediction."""

    def __init__(self, out_dir: Path, inputs: np.ndarray, pixels: np.ndarray, truths: np.ndarray, labels: LabelSet):
        super().__init__()
        self.out_dir = Path(out_dir)
        self.inputs, self.pixels, self.truths, self.labels = inputs, pixels, truths, labels

    def on_epoch_end(self, epoch, logs=None):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # A direct call runs here, on this process's device: `predict` would split these few images
        # over the replicas of a distributed run (an empty share breaks synchronised BatchNorm).
        predictions = np.argmax(np.asarray(self.model(self.inputs, training=False)), axis=-1).astype(np.uint8)
        grid = prediction_grid(self.pixels, self.truths, predictions, self.labels)
        write_image(self.out_dir / f"epoch_{epoch + 1:03d}.png", grid)


class EpochLog(keras.callbacks.CSVLogger):
    """Keras's CSV log with epochs counted from 1, as the console, the samples and best.keras.json
    count them (resumes append, so a restarted run continues the same numbering). A resume from a
    backup older than the log's last row (a worker killed while saving steps back one epoch) first
    drops the rows it will train again, so no epoch appears twice."""

    def on_train_begin(self, logs=None):
        drop_epochs_after(Path(self.filename), int(getattr(self.model, "_initial_epoch", None) or 0))
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch + 1, logs)


def drop_epochs_after(history_csv: Path, epoch: int) -> None:
    """Rewrite `history_csv` (atomically) without its rows of epochs after `epoch`, if it has any."""
    if not history_csv.is_file():
        return
    with open(history_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= epoch]
    if len(kept) == len(rows):
        return
    with atomic_path(history_csv) as tmp, open(tmp, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)
    print(f"{history_csv.name}: dropped epochs after {epoch}, which this resume trains again")


def plot_curves(history_csv: Path, out_png: Path) -> None:
    """Loss and mIoU / pixel accuracy per epoch, train and validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(history_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    first = 1 if int(rows[0]["epoch"]) == 0 else 0  # histories before 2026-11-29 counted epochs from 0
    epochs = [int(r["epoch"]) + first for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))

    def series(key):  # (epochs, values) of the rows that have the key (validation_every > 1 leaves "NA")
        points = [(e, float(r[key])) for e, r in zip(epochs, rows) if r.get(key) not in (None, "", "NA")]
        return [e for e, _ in points], [v for _, v in points]

    for key, style in (("loss", "-"), ("val_loss", "--")):
        if key in rows[0]:
            axes[0].plot(*series(key), style, marker="o", markersize=3, label=key)
    for key, style in (("miou", "-"), ("val_miou", "--"), ("val_pixel_accuracy", ":")):
        if key in rows[0]:
            axes[1].plot(*series(key), style, marker="o", markersize=3, label=key)
    if "stage" in rows[0]:  # runs chained with init_from: mark where each stage starts
        starts = [e for e, prev, row in zip(epochs[1:], rows, rows[1:]) if row["stage"] != prev["stage"]]
        for axis in axes:
            for start in starts:
                axis.axvline(start - 0.5, color="grey", linewidth=0.8, alpha=0.6)
    axes[0].set_title("loss")
    axes[1].set_title("mIoU / pixel accuracy (label 0 ignored)")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


class CurvesPlot(keras.callbacks.Callback):
    """Redraw ``training_curves.png`` from the CSV log after every epoch."""

    def __init__(self, history_csv: Path, out_png: Path):
        super().__init__()
        self.history_csv, self.out_png = Path(history_csv), Path(out_png)

    def on_epoch_end(self, epoch, logs=None):
        if self.history_csv.is_file():
            plot_curves(self.history_csv, self.out_png)
