"""Training throughput: images per second of the real training step (forward, masked loss,
backward, optimiser update) on one real batch, after warm-up. The numbers in the README's
training section come from here:

    python -m train throughput --config configs/camvid_lite.yaml
    python -m train throughput --config configs/ade20k_unet.yaml --data-dir ../shared/data/camvid
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from edgeseg.machine import cpu_features, cpu_model

from . import data as data_lib
from .config import TrainConfig
from .losses import MaskedCrossEntropy
from .models import check_input_size, count_flops
from .run import build_from_config, input_spec, make_optimizer


def measure(config: TrainConfig, steps: int = 10, warmup: int = 3) -> dict:
    """Time `steps` training steps of `config`'s network on a batch of real images from its dataset.

    The data pipeline is excluded (a cached tf.data pipeline keeps up with these steps on a CPU),
    so the figure is the model's training cost on this machine.

    Raises:
        DatasetError, ValueError: bad dataset or settings.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0 (got {steps}, {warmup})")
    check_input_size(config.architecture, config.height, config.width)
    root = Path(config.data_dir)
    labels = data_lib.resolve_labels(root, config.labels)
    pairs = data_lib.select_pairs(root, config.train_split, config.train_prefixes, config.batch_size)  # "a+b" too
    if len(pairs) < config.batch_size:
        raise data_lib.DatasetError(f"only {len(pairs)} training pairs for batch size {config.batch_size}")
    spec = input_spec(config)
    examples = [data_lib.load_example(i, m, spec, labels.num_classes) for i, m in zip(pairs.images, pairs.masks)]
    images = tf.constant(np.stack([e[0] for e in examples]))
    masks = tf.constant(np.stack([e[1] for e in examples]))
    keras.utils.set_random_seed(config.seed)
    model = build_from_config(config, labels.num_classes)
    model.compile(optimizer=make_optimizer(config, steps_per_epoch=100), loss=MaskedCrossEntropy())
    for _ in range(warmup):
        model.train_on_batch(images, masks)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        model.train_on_batch(images, masks)
        times.append(time.perf_counter() - started)
    step_s = float(np.median(times))
    flops = count_flops(model)
    return {
        "architecture": config.architecture,
        "input_hw": [config.height, config.width],
        "width": config.base_filters if config.architecture == "unet" else config.width_multiplier,
        "batch_size": config.batch_size,
        "gflops_forward": round(flops / 1e9, 3),
        "parameters": int(model.count_params()),
        "step_ms_p50": round(step_s * 1e3, 1),
        "images_per_second": round(config.batch_size / step_s, 2),
        # training step ~ 3x the forward pass (forward + two backward products)
        "train_gflop_per_second": round(3 * flops * config.batch_size / step_s / 1e9, 1),
        "tensorflow": tf.__version__,
        "cpu": cpu_model(),
        "simd": cpu_features(),  # AVX2 against AVX-512 VNNI etc.: figures compare only within one kind
        "cores": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def append(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(result) + "\n")
