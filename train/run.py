"""One training run: data, model, optimiser, callbacks, final evaluation. Library code; the CLI
in `train/__main__.py` only parses options and reports errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from edgeseg.dataset import read_image_rgb
from edgeseg.evaluate import evaluate
from edgeseg.preprocess import InputSpec, prepare_pixels, preprocess
from train import data as data_lib
from train.callbacks import BestCheckpoint, CurvesPlot, PredictionGrid, plot_curves
from train.config import TrainConfig
from train.losses import MaskedCrossEntropy, MeanIoU, PixelAccuracy
from train.models import build_model, check_input_size, count_flops
from train.optim import RectifiedAdam


def choose_strategy() -> tf.distribute.Strategy:
    """Several machines (TF_CONFIG set) -> MultiWorkerMirrored; several local GPUs -> Mirrored."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The config's optimiser and learning-rate schedule (see `train.optim` for why RAdam is ours)."""
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = config.learning_rate
    if config.lr_schedule == "cosine":
        warmup = config.warmup_epochs * steps_per_epoch
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else config.learning_rate,
            decay_steps=max(1, config.epochs * steps_per_epoch - warmup),
            alpha=0.01,
            warmup_target=config.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    elif config.lr_schedule != "constant":
        raise ValueError(f"lr_schedule {config.lr_schedule!r} unknown; use 'constant' or 'cosine'")
    weight_decay = config.weight_decay or None
    if config.optimizer == "radam":
        return RectifiedAdam(learning_rate=learning_rate, weight_decay=weight_decay)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay)
    raise ValueError(f"optimizer {config.optimizer!r} unknown; use 'radam' or 'adamw'")


def input_spec(config: TrainConfig) -> InputSpec:
    return InputSpec(height=config.height, width=config.width)


def keras_predictor(model: keras.Model, spec: InputSpec):
    """RGB image -> class map at network resolution, through the shared preprocessing."""

    def predict(image_rgb: np.ndarray) -> np.ndarray:
        logits = model(preprocess(image_rgb, spec)[np.newaxis], training=False)
        return np.argmax(logits[0], axis=-1).astype(np.uint8)

    return predict


def build_from_config(config: TrainConfig, num_classes: int) -> keras.Model:
    """The config's network (architecture, size, width) with `num_classes` outputs."""
    if config.architecture == "unet":
        extra = {"base_filters": config.base_filters, "batch_norm": config.batch_norm}
    else:
        extra = {"width_multiplier": config.width_multiplier}
    return build_model(config.architecture, config.height, config.width, num_classes, **extra)


def init_weights(model: keras.Model, source: Path) -> None:
    """Copy the weights of the saved model `source` into `model` (same architecture and shapes).

    Raises:
        ValueError: `source` is missing, unreadable, or its weights do not fit `model`.
    """
    if not source.is_file():
        raise ValueError(f"init_from model {source} not found; pass an existing .keras file or leave init_from empty")
    try:
        saved = keras.models.load_model(source, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad archive
        raise ValueError(f"init_from model {source} cannot be loaded ({exc.__class__.__name__});"
                         " pass a .keras file saved by `python -m train`") from exc
    ours, theirs = model.get_weights(), saved.get_weights()
    shapes = [w.shape for w in ours], [w.shape for w in theirs]
    if shapes[0] != shapes[1]:
        raise ValueError(f"init_from model {source} does not match this config's network "
                         f"({len(theirs)} vs {len(ours)} weight tensors or different shapes);"
                         " use the same architecture, width, input size and class count")
    model.set_weights(theirs)
    print(f"weights initialised from {source}")


def fit(config: TrainConfig) -> dict:
    """Train as `config` says; return the final evaluation of the best checkpoint.

    Raises:
        DatasetError, ValueError: bad dataset or settings (messages say how to fix them).
    """
    check_input_size(config.architecture, config.height, config.width)
    run_dir = Path(config.run_dir)
    root = Path(config.data_dir)
    labels = data_lib.resolve_labels(root, config.labels)
    train_pairs = data_lib.list_pairs(root, config.train_split, config.max_examples)
    val_pairs = data_lib.list_pairs(root, config.val_split, config.max_examples)
    if len(train_pairs) < config.batch_size:
        raise data_lib.DatasetError(
            f"only {len(train_pairs)} training pairs for batch size {config.batch_size}; lower batch_size"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.yaml")
    (run_dir / "labels.json").write_text(json.dumps(labels.to_dict()))
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")

    spec = input_spec(config)
    class_weights = None
    if config.class_weighting == "median_frequency":
        counts = data_lib.class_frequencies(train_pairs, labels.num_classes)
        class_weights = data_lib.median_frequency_weights(counts).tolist()
        print("class weights:", ", ".join(f"{n}={w:.2f}" for n, w in zip(labels.names, class_weights)))
    elif config.class_weighting != "none":
        raise ValueError(f"class_weighting {config.class_weighting!r} unknown; use 'none' or 'median_frequency'")

    train_ds = data_lib.make_dataset(train_pairs, spec, labels.num_classes, config.batch_size, training=True,
                                     augment_data=config.augment, max_scale=config.max_scale,
                                     cache=config.cache, seed=config.seed)
    val_ds = data_lib.make_dataset(val_pairs, spec, labels.num_classes, config.batch_size, training=False,
                                   cache=config.cache)
    steps_per_epoch = len(train_pairs) // config.batch_size

    strategy = choose_strategy()
    with strategy.scope():
        model = build_from_config(config, labels.num_classes)
        if config.init_from:
            init_weights(model, Path(config.init_from))
        model.compile(
            optimizer=make_optimizer(config, steps_per_epoch),
            loss=MaskedCrossEntropy(class_weights),
            metrics=[MeanIoU(labels.num_classes), PixelAccuracy(labels.num_classes)],
        )
    flops = count_flops(model)
    print(f"{config.architecture} {config.height}x{config.width}: {flops / 1e9:.3f} GFLOP per image,"
          f" {model.count_params():,} parameters, {len(train_pairs)} train / {len(val_pairs)} val pairs")

    samples = [data_lib.load_example(i, m, spec, labels.num_classes)
               for i, m in zip(val_pairs.images[:config.sample_images], val_pairs.masks[:config.sample_images])]
    sample_inputs = np.stack([s[0] for s in samples])
    sample_pixels = np.stack([prepare_pixels(read_image_rgb(p), spec)
                              for p in val_pairs.images[:config.sample_images]])
    best_path = run_dir / "best.keras"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        CurvesPlot(run_dir / "history.csv", run_dir / "training_curves.png"),
        BestCheckpoint(best_path, monitor="val_miou"),
        keras.callbacks.EarlyStopping(monitor="val_miou", mode="max", patience=config.early_stop_patience),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard")),
        PredictionGrid(run_dir / "samples", sample_inputs, sample_pixels, np.stack([s[1] for s in samples]), labels),
    ]
    started = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks, verbose=2)
    seconds = time.perf_counter() - started
    if (run_dir / "history.csv").is_file():
        plot_curves(run_dir / "history.csv", run_dir / "training_curves.png")

    best = keras.models.load_model(best_path) if best_path.is_file() else model
    val_scores, _ = evaluate(keras_predictor(best, spec), val_pairs, labels, desc="evaluate best")
    result = val_scores.to_dict(labels.names)
    result.update({
        "architecture": config.architecture,
        "input_hw": [config.height, config.width],
        "gflops": round(flops / 1e9, 4),
        "parameters": int(model.count_params()),
        "epochs_run": len(history.history.get("loss", [])),
        "train_seconds_this_invocation": round(seconds, 1),
        "train_images_per_second": round(len(history.history.get("loss", [])) * steps_per_epoch
                                         * config.batch_size / max(seconds, 1e-9), 2),
    })
    (run_dir / "eval.json").write_text(json.dumps(result, indent=1))
    print_table(result)
    return result


def print_table(result: dict) -> None:
    """Per-class IoU table and the headline numbers."""
    print(f"\n{'class':<20} IoU")
    for name, iou in result["per_class"].items():
        print(f"{name:<20} {iou:.3f}")
    print(f"mIoU {result['miou']:.4f}   pixel accuracy {result['pixel_accuracy']:.4f}")
