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

from edgeseg import atomic
from edgeseg.dataset import read_image_rgb
from edgeseg.evaluate import evaluate
from edgeseg.extras import load_keras_model
from edgeseg.preprocess import InputSpec, prepare_pixels, preprocess
from . import data as data_lib
from .callbacks import (BestCheckpoint, CurvesPlot, DeliverInterrupt, EpochLog, PredictionGrid, Snapshots,
                        ValidatedEarlyStopping, plot_curves)
from .config import ConfigError, TrainConfig
from .distribute import Cluster, GroupBackup, prepare_for_multi_worker, setup_cluster, weights_digest
from .losses import MaskedCrossEntropy, MeanIoU, PixelAccuracy, pack_targets
from .models import build_model, check_input_size, count_flops
from .optim import RectifiedAdam


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


def build_from_config(config: TrainConfig, num_classes: int, synchronized_bn: bool = False) -> keras.Model:
    """The config's network (architecture, size, width) with `num_classes` outputs."""
    if config.architecture == "unet":
        extra = {"base_filters": config.base_filters, "batch_norm": config.batch_norm}
    else:
        extra = {"width_multiplier": config.width_multiplier}
    if config.architecture == "unet-lite2":
        extra["image_pooling"] = config.image_pooling
    return build_model(config.architecture, config.height, config.width, num_classes,
                       synchronized_bn=synchronized_bn, **extra)


def load_saved(path: Path, role: str, fix: str) -> keras.Model:
    """A model saved by `python -m train`, named by its `role` in the config when it cannot be loaded.

    Raises:
        ValueError: `path` is missing (the message ends with `fix`) or not a loadable .keras file.
    """
    if not path.is_file():
        raise ValueError(f"{role} model {path} not found; {fix}")
    try:
        return load_keras_model(path)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad archive
        raise ValueError(f"{role} model {path} cannot be loaded ({exc.__class__.__name__});"
                         " pass a .keras file saved by `python -m train`") from exc


def load_for_derived(source: Path, output: Path, command: str, elsewhere: str = "") -> keras.Model:
    """Load the saved model `source` that `command` (snap-weights, resize) turns into `output`, after
    checking both paths: `source` an existing .keras file, `output` a .keras file that is not `source`.

    Raises:
        ValueError: one line naming the path and the fix.
    """
    if not source.is_file():
        raise ValueError(f"model {source} does not exist; pass a .keras file saved by `python -m train`")
    if source.suffix != ".keras":
        raise ValueError(f"{source} is not a .keras model; pass RUN/last.keras from `python -m train`")
    if output.resolve() == source.resolve():
        raise ValueError(f"output {output} is the model itself; write the {command} result elsewhere{elsewhere}"
                         " so the original is kept")
    if output.suffix != ".keras":
        raise ValueError(f"output {output} is not a .keras file; name it {output.with_suffix('.keras').name}")
    return load_saved(source, command, "pass a .keras file saved by `python -m train`")


def save_derived(model: keras.Model, output: Path, labels: Path | None) -> None:
    """Save a model made from saved ones (snapped, averaged) to `output` atomically, with the source
    run's `labels` file copied beside it when `output` is in another folder.

    Raises:
        OutputError: the folder or a file cannot be written (nothing half-written is left).
    """
    import shutil

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise atomic.output_error(output, exc) from exc
    with atomic.atomic_path(output) as temp:  # full disk, read-only folder
        model.save(temp)
    if labels is not None and labels.is_file() and (output.parent / "labels.json").resolve() != labels.resolve():
        with atomic.atomic_path(output.parent / "labels.json") as temp:
            shutil.copyfile(labels, temp)


def init_weights(model: keras.Model, source: Path) -> None:
    """Copy the weights of the saved model `source` into `model` (same architecture and shapes).

    Raises:
        ValueError: `source` is missing, unreadable, or its weights do not fit `model`.
    """
    saved = load_saved(source, "init_from", "pass an existing .keras file or leave init_from empty")
    ours, theirs = model.get_weights(), saved.get_weights()
    shapes = [w.shape for w in ours], [w.shape for w in theirs]
    if shapes[0] != shapes[1]:
        raise ValueError(f"init_from model {source} does not match this config's network "
                         f"({len(theirs)} vs {len(ours)} weight tensors or different shapes);"
                         " use the same architecture, width, input size and class count")
    model.set_weights(theirs)
    print(f"weights initialised from {source}")


def fit(config: TrainConfig) -> dict:
    """Train as `config` says; return the final evaluation of the best checkpoint (on the chief; other
    workers of a multi-worker run return ``{}``).

    Raises:
        DatasetError, ValueError: bad dataset or settings (messages say how to fix them).
    """
    check_input_size(config.architecture, config.height, config.width)
    run_dir = Path(config.run_dir)
    root = Path(config.data_dir)
    labels = data_lib.resolve_labels(root, config.labels)
    paste_classes = paste_class_ids(config, labels.names)  # an unknown class name fails here, before any training
    train_pairs = data_lib.select_pairs(root, config.train_split, config.train_prefixes, config.max_examples)
    val_pairs = data_lib.select_pairs(root, config.val_split, config.val_prefixes, config.max_examples)
    if len(train_pairs) < config.batch_size:
        raise data_lib.DatasetError(
            f"only {len(train_pairs)} training pairs for batch size {config.batch_size}; lower batch_size"
        )
    cluster = setup_cluster()  # before any other TensorFlow op (collective ops need it so)
    cluster.per_replica_batch(config.batch_size)
    print(f"training on {cluster.describe()}; global batch {config.batch_size}")
    out_dir = cluster.output_dir(run_dir)
    try:
        return _fit(config, cluster, run_dir, out_dir, labels, train_pairs, val_pairs, paste_classes)
    finally:
        cluster.cleanup(run_dir)
        if config.mixed_precision:
            keras.mixed_precision.set_global_policy("float32")


def _fit(config: TrainConfig, cluster: Cluster, run_dir: Path, out_dir: Path, labels,
         train_pairs: data_lib.Pairs, val_pairs: data_lib.Pairs, paste_classes: tuple[int, ...] = ()) -> dict:
    config.save(out_dir / "config.yaml")
    atomic.write_text(out_dir / "labels.json", json.dumps(labels.to_dict()))
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    spec = input_spec(config)
    class_weights = compute_class_weights(config, train_pairs, labels)
    report_input_pipeline(config, train_pairs, val_pairs, spec, labels.num_classes)
    teachers = load_teachers(config, spec, labels.num_classes)
    train_ds, val_ds, steps_per_epoch = make_datasets(config, cluster, train_pairs, val_pairs, spec, labels.num_classes,
                                                      teachers, paste_classes)

    with cluster.strategy.scope():
        model = build_from_config(config, labels.num_classes, synchronized_bn=cluster.replicas > 1)
        if config.init_from:
            init_weights(model, Path(config.init_from))
        model.compile(
            optimizer=make_optimizer(config, steps_per_epoch),
            loss=MaskedCrossEntropy(class_weights, distill_weight=config.distill_weight if teachers else 0.0,
                                    lovasz_weight=config.lovasz_weight, ohem_threshold=config.ohem_threshold,
                                    ohem_min_kept=config.ohem_min_kept),
            metrics=[MeanIoU(labels.num_classes), PixelAccuracy(labels.num_classes)],
        )
    example = data_lib.load_example(train_pairs.images[0], train_pairs.masks[0], spec, labels.num_classes)
    prepare_for_multi_worker(model, cluster, (example[0][np.newaxis], example[1][np.newaxis]))
    flops = count_flops(model)
    print(f"{config.architecture} {config.height}x{config.width}: {flops / 1e9:.3f} GFLOP per image,"
          f" {model.count_params():,} parameters, {len(train_pairs)} train / {len(val_pairs)} val pairs")

    keep_finished_history(out_dir, cluster.backup_dir(run_dir))
    callbacks = make_callbacks(config, cluster, run_dir, out_dir, val_pairs, spec, labels)
    started = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, validation_freq=config.validation_every, epochs=config.epochs,
                        callbacks=callbacks, verbose=2,
                        shuffle=False,  # tf.data already shuffles (and Keras warns when asked to)
                        steps_per_epoch=steps_per_epoch if cluster.kind == "multi-worker" else None)
    seconds = time.perf_counter() - started
    print(f"final weights {weights_digest(model.get_weights())} (worker {cluster.worker_index})")
    if not cluster.is_chief:
        return {}
    if (out_dir / "history.csv").is_file():
        plot_curves(out_dir / "history.csv", out_dir / "training_curves.png")

    result = deliver(config, model, out_dir, spec, val_pairs, labels)
    epochs_run = len(history.history.get("loss", []))
    result.update({
        "architecture": config.architecture,
        "input_hw": [config.height, config.width],
        "gflops": round(flops / 1e9, 4),
        "parameters": int(model.count_params()),
        "epochs_run": epochs_run,
        "train_seconds_this_invocation": round(seconds, 1),
        "train_images_per_second": round(epochs_run * steps_per_epoch * config.batch_size / max(seconds, 1e-9), 2),
    })
    atomic.write_text(out_dir / "eval.json", json.dumps(result, indent=1))
    print_table(result)
    return result


def deliver(config: TrainConfig, model: keras.Model, out_dir: Path, spec: InputSpec, val_pairs, labels) -> dict:
    """Save the final weights as last.keras, then score the checkpoint the config delivers (best.keras,
    the highest val mIoU, or last.keras for a fixed schedule) on the validation pairs."""
    last_path, best_path = out_dir / "last.keras", out_dir / "best.keras"
    with atomic.atomic_path(last_path) as tmp:
        model.save(tmp)
    if config.checkpoint == "last" or not best_path.is_file():
        delivered, path = model, last_path
    else:
        delivered, path = load_keras_model(best_path), best_path
    measured, _ = evaluate(keras_predictor(delivered, spec), val_pairs, labels, desc=f"evaluate {path.stem}")
    return {**measured.to_dict(labels.names), "checkpoint": str(path)}


def keep_finished_history(out_dir: Path, backup_dir: Path) -> None:
    """A run that starts afresh (no backup to resume from) in a folder holding an earlier run's
    history.csv keeps that file as history.previous[-N].csv and writes a history of its own, so no
    epoch appears twice in one file and no earlier record is lost."""
    history = out_dir / "history.csv"
    if not history.is_file() or backup_dir.exists():
        return
    kept, n = out_dir / "history.previous.csv", 1
    while kept.exists():
        n += 1
        kept = out_dir / f"history.previous-{n}.csv"
    history.rename(kept)
    print(f"{history} held a finished run's epochs: kept as {kept.name}; this run writes a new history.csv")


def compute_class_weights(config: TrainConfig, train_pairs: data_lib.Pairs, labels) -> list[float] | None:
    """The loss's class weights as the config asks (printed), or None."""
    if config.class_weighting == "none":
        return None
    rules = {"median_frequency": data_lib.median_frequency_weights, "enet": data_lib.enet_weights}
    counts = data_lib.class_frequencies(train_pairs, labels.num_classes)
    weights = rules[config.class_weighting](counts)
    weights = np.where(weights > 0, weights ** config.class_weight_power, 0.0).tolist()
    print("class weights:", ", ".join(f"{n}={w:.2f}" for n, w in zip(labels.names, weights)))
    absent = [name for name, count in zip(labels.names[1:], counts[1:]) if count == 0]
    spread = max(weights) / max(min(w for w in weights[1:] if w > 0), 1e-9) if any(weights[1:]) else 0
    if absent or spread > 100:
        print(f"warning: class weights from {len(train_pairs)} training images are unreliable"
              + (f" ({', '.join(absent)} never appear, weight 0)" if absent else "")
              + (f" (largest / smallest = {spread:.0f})" if spread > 100 else "")
              + "; train on more images or set class_weighting: none")
    return weights


def report_input_pipeline(config: TrainConfig, train_pairs, val_pairs, spec: InputSpec, num_classes: int) -> None:
    """Print the cache's memory and the input pipeline's decode rate, so an input-bound run shows."""
    rate = data_lib.input_rate(train_pairs, spec, num_classes)
    cache = config.cache
    if cache == "memory":
        stored = data_lib.source_spec(spec, config.source_scale) if config.augment else spec
        size = data_lib.cache_bytes(len(train_pairs), stored) + data_lib.cache_bytes(len(val_pairs), spec)
        cache = f"in memory, {size / 2**20:,.0f} MiB (uint8)"
    print(f"input pipeline: {rate:.1f} images/s decoded and prepared ({os.cpu_count()} CPU cores); cache {cache}")


def paste_class_ids(config: TrainConfig, names: list[str]) -> tuple[int, ...]:
    """The class indices of the config's `paste_classes` (label 0 cannot be pasted).

    Raises:
        ConfigError: a name that is not one of the dataset's classes (the message lists them).
    """
    known = {name: index for index, name in enumerate(names) if index > 0}
    unknown = [name for name in config.paste_classes if name not in known]
    if unknown:
        raise ConfigError(f"paste_classes {unknown} are not classes of {config.data_dir};"
                          f" choose from {', '.join(known)}")
    return tuple(known[name] for name in config.paste_classes)


def load_teachers(config: TrainConfig, spec: InputSpec, num_classes: int):
    """The config's teachers as one function: batch of training inputs -> mean softmax (None without
    teachers). Checked before training: each must load and take this run's input size and classes.

    Raises:
        ValueError: a teacher is missing, unreadable or does not fit (the message says which).
    """
    if not config.teachers:
        return None
    models = []
    for path in map(Path, config.teachers):
        model = load_saved(path, "teacher", "list existing .keras files under teachers")
        shape = tuple(model.input_shape[1:3]) + tuple(model.output_shape[-1:])
        if shape != (spec.height, spec.width, num_classes):
            raise ValueError(f"teacher model {path} takes {shape[1]}x{shape[0]} input with {shape[2]} classes;"
                             f" this run needs {spec.width}x{spec.height} and {num_classes}")
        model.trainable = False
        models.append(model)
    print(f"distilling from {len(models)} teacher(s), weight {config.distill_weight}: {', '.join(config.teachers)}")

    def mean_probabilities(images):
        return tf.add_n([tf.nn.softmax(tf.cast(model(images, training=False), tf.float32)) for model in models]) / len(models)

    return mean_probabilities


def with_teachers(dataset: tf.data.Dataset, teachers) -> tf.data.Dataset:
    """Batches of (image, mask) -> (image, mask packed with the teachers' probabilities)."""
    if teachers is None:
        return dataset
    return dataset.map(lambda images, masks: (images, pack_targets(masks, teachers(images)))).prefetch(tf.data.AUTOTUNE)


def make_datasets(config: TrainConfig, cluster: Cluster, train_pairs, val_pairs, spec: InputSpec,
                  num_classes: int, teachers=None, paste_classes: tuple[int, ...] = ()
                  ) -> tuple[object, tf.data.Dataset, int]:
    """Training and validation data for `cluster`, and the training steps per epoch.

    Several workers: each worker decodes only its own share of the training files (sharded here,
    before decoding, so auto-sharding is OFF: FILE sharding cannot apply to a list of image paths,
    and DATA sharding would make every worker decode every image and keep a part). The shares are
    equally long and repeat, so all workers run the same `steps_per_epoch`. Validation is sharded
    by DATA: every worker reads the small set and evaluates its slice of each global batch, which
    keeps the step counts equal even for a last partial batch; the confusion matrices are summed.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    val_ds = data_lib.make_dataset(val_pairs, spec, num_classes, config.batch_size, training=False,
                                   cache=config.cache).with_options(options)
    common = dict(augment_data=config.augment, max_scale=config.max_scale, min_scale=config.min_scale,
                  strong_color=config.color_jitter == "strong", detail_jitter=config.detail_jitter,
                  camera_jitter=config.camera_jitter,
                  cache=config.cache, seed=config.seed, source_scale=config.source_scale,
                  copy_paste=config.copy_paste, paste_classes=paste_classes)
    if cluster.kind != "multi-worker":
        train_ds = data_lib.make_dataset(train_pairs, spec, num_classes, config.batch_size, training=True, **common)
        return with_teachers(train_ds, teachers), val_ds, len(train_pairs) // config.batch_size

    per_worker = len(train_pairs) // cluster.num_workers
    worker_batch = config.batch_size // cluster.num_workers
    if per_worker < worker_batch:
        raise data_lib.DatasetError(f"{len(train_pairs)} training pairs give each of {cluster.num_workers} workers"
                                    f" {per_worker}, fewer than its batch of {worker_batch}; lower batch_size")

    def worker_dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        share = data_lib.worker_share(train_pairs, context.num_input_pipelines, context.input_pipeline_id)
        dataset = data_lib.make_dataset(share, spec, num_classes, context.get_per_replica_batch_size(config.batch_size),
                                        training=True, repeat=True, **common)
        off = tf.data.Options()
        off.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return with_teachers(dataset, teachers).with_options(off)

    train_ds = cluster.strategy.distribute_datasets_from_function(worker_dataset)
    return train_ds, val_ds, per_worker // worker_batch


def make_callbacks(config: TrainConfig, cluster: Cluster, run_dir: Path, out_dir: Path, val_pairs,
                   spec: InputSpec, labels) -> list[keras.callbacks.Callback]:
    """Checkpoints, logs, plots and samples into `out_dir`; the backup into the run's backup folder."""
    picked = sample_indices(len(val_pairs), config.sample_images)
    samples = [data_lib.load_example(val_pairs.images[i], val_pairs.masks[i], spec, labels.num_classes) for i in picked]
    grid = [PredictionGrid(out_dir / "samples", np.stack([s[0] for s in samples]),
                           np.stack([prepare_pixels(read_image_rgb(val_pairs.images[i]), spec) for i in picked]),
                           np.stack([s[1] for s in samples]), labels)] if picked else []  # sample_images: 0 = none
    stopping = [] if config.checkpoint == "last" else [
        ValidatedEarlyStopping(monitor="val_miou", mode="max", patience=config.early_stop_patience)]
    return [
        GroupBackup(cluster.backup_dir(run_dir), cluster),
        EpochLog(str(out_dir / "history.csv"), append=True),
        CurvesPlot(out_dir / "history.csv", out_dir / "training_curves.png"),
        BestCheckpoint(out_dir / "best.keras", monitor="val_miou"),
        *stopping,
        *([Snapshots(out_dir / "snapshots", config.snapshot_every)] if config.snapshot_every else []),
        keras.callbacks.TensorBoard(str(out_dir / "tensorboard")),
        *grid,
        DeliverInterrupt(),  # last: an epoch's backup and logs are written before a dropped Ctrl-C is raised
    ]


def sample_indices(count: int, wanted: int) -> list[int]:
    """`wanted` evenly spaced indices of `count` (consecutive video frames are near-duplicates)."""
    wanted = min(wanted, count)
    if wanted <= 0:
        return []
    return sorted({round(i * (count - 1) / max(wanted - 1, 1)) for i in range(wanted)})


def print_table(result: dict) -> None:
    """Per-class IoU table and the headline numbers."""
    print(f"\n{'class':<20} IoU")
    for name, iou in result["per_class"].items():
        print(f"{name:<20} {iou:.3f}")
    print(f"mIoU {result['miou']:.4f}   pixel accuracy {result['pixel_accuracy']:.4f}")
