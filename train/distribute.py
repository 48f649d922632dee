"""How a training run is spread over devices and machines (`tf.distribute`).

`setup_cluster` must be the first TensorFlow call of a run: collective ops (the all-reduce of
`MultiWorkerMirroredStrategy`) can only be configured before TensorFlow's runtime starts, so
anything that runs an op first (a tf.data pipeline, `tf.random.set_seed`, listing devices) makes
every worker stop with "Collective ops must be configured at program startup".

- ``TF_CONFIG`` set: `MultiWorkerMirroredStrategy`, one process per machine (or per port).
- several local GPUs, or several logical CPU devices: `MirroredStrategy` over them.
- otherwise TensorFlow's default strategy (one device).

Only the chief (task ``chief``, else ``worker`` 0) writes the run directory. Every other worker
still runs every callback (saving a model may itself need the other workers) but writes into a
temporary folder of its own, removed when its run ends, as TensorFlow's multi-worker guide says.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from edgeseg.errors import UsageError

# A lost worker is noticed by a health check that pings every peer; TensorFlow's default interval
# is 30 s (plus 3 x 10 s retries). Ten seconds bounds the wait of the workers left behind.
HEALTH_CHECK_INTERVAL_S = 10


class ClusterError(UsageError, ValueError):
    """TF_CONFIG or the batch size does not describe a runnable cluster; the message says how to fix it."""


@dataclass
class Cluster:
    """The strategy of this run and this process's place in it."""

    strategy: tf.distribute.Strategy
    kind: str  # "single", "mirrored", "multi-worker"
    num_workers: int = 1
    worker_index: int = 0
    is_chief: bool = True
    _scratch: list[Path] = field(default_factory=list)

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def describe(self) -> str:
        if self.kind == "multi-worker":
            role = "chief" if self.is_chief else "worker"
            return (f"multi-worker: worker {self.worker_index} of {self.num_workers} ({role}),"
                    f" {self.replicas} replicas in sync")
        if self.kind == "mirrored":
            return f"mirrored over {self.replicas} local devices"
        return "one device"

    def output_dir(self, run_dir: Path) -> Path:
        """Where this process writes its artefacts: the run directory on the chief, else a
        temporary folder named after the run, emptied at start and removed by `cleanup`."""
        if self.is_chief:
            run_dir.mkdir(parents=True, exist_ok=True)
            return run_dir
        key = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]
        scratch = Path(tempfile.gettempdir()) / f"edgeseg-worker{self.worker_index}-{key}"
        shutil.rmtree(scratch, ignore_errors=True)  # left by a killed earlier attempt of this run
        scratch.mkdir(parents=True)
        self._scratch.append(scratch)
        return scratch

    def backup_dir(self, run_dir: Path) -> Path:
        """`BackupAndRestore`'s folder: kept across restarts, one per worker (each restores its own,
        identical, state; Keras 3's callback does not coordinate workers)."""
        if self.kind != "multi-worker":
            return run_dir / "backup"
        return run_dir / "backup" / f"worker-{self.worker_index}"

    def cleanup(self, run_dir: Path) -> None:
        """Remove this worker's temporary folders and an emptied shared backup folder."""
        for scratch in self._scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        self._scratch.clear()
        backup = run_dir / "backup"
        if self.kind == "multi-worker" and backup.is_dir() and not any(backup.iterdir()):
            try:
                backup.rmdir()
            except OSError:  # another worker's backup appeared meanwhile
                pass

    def gather(self, value: int) -> list[int]:
        """Every worker's `value`, in worker order (a collective: all workers must call it)."""
        if self.kind != "multi-worker":
            return [value]
        local = self.replicas // self.num_workers
        mine = np.zeros(self.num_workers, np.int64)
        mine[self.worker_index] = value

        def contribution(context: tf.distribute.experimental.ValueContext) -> tf.Tensor:
            first_local = context.replica_id_in_sync_group == self.worker_index * local
            return tf.constant(mine if first_local else np.zeros_like(mine))

        values = self.strategy.experimental_distribute_values_from_function(contribution)
        return [int(v) for v in self.strategy.reduce("SUM", values, axis=None).numpy()]

    def per_replica_batch(self, global_batch: int) -> int:
        if global_batch % self.replicas:
            raise ClusterError(f"batch_size {global_batch} does not split over {self.replicas} replicas;"
                               f" use a multiple of {self.replicas} (it is the global batch)")
        return global_batch // self.replicas


def read_tf_config(text: str) -> tuple[dict, str, int]:
    """Parse ``TF_CONFIG``: (cluster spec, task type, task index).

    Raises:
        ClusterError: not JSON, or no cluster/task entries that fit together.
    """
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, task_index = str(task["type"]), int(task["index"])
        members = cluster[task_type]
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterError(
            "TF_CONFIG is not valid: expected JSON like {\"cluster\": {\"worker\": [\"host0:port\", \"host1:port\"]},"
            f" \"task\": {{\"type\": \"worker\", \"index\": 0}}}} ({exc.__class__.__name__}: {exc})") from exc
    if not 0 <= task_index < len(members):
        raise ClusterError(f"TF_CONFIG task index {task_index} is outside the {len(members)} {task_type} addresses")
    return cluster, task_type, task_index


def setup_cluster() -> Cluster:
    """Create the run's strategy. Call before any other TensorFlow operation."""
    tf_config = os.environ.get("TF_CONFIG", "").strip()
    if tf_config:
        cluster, task_type, task_index = read_tf_config(tf_config)
        from tensorflow.python.distribute import collective_all_reduce_strategy as collective

        collective.CollectiveAllReduceExtended._check_health_interval = HEALTH_CHECK_INTERVAL_S
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        has_chief = bool(cluster.get("chief"))
        workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        index = task_index + (1 if has_chief and task_type == "worker" else 0)
        is_chief = task_type == "chief" or (task_type == "worker" and task_index == 0 and not has_chief)
        return Cluster(strategy, "multi-worker", workers, index, is_chief)
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if len(gpus) > 1:
        return Cluster(tf.distribute.MirroredStrategy([d.name for d in gpus]), "mirrored")
    if not gpus and len(cpus) > 1:  # logical CPU devices: the multi-device path, testable without GPUs
        return Cluster(tf.distribute.MirroredStrategy([d.name for d in cpus]), "mirrored")
    return Cluster(tf.distribute.get_strategy(), "single")


def weights_digest(weights: list) -> str:
    """A short SHA-256 of a model's weights (workers that stay in sync print the same one)."""
    digest = hashlib.sha256()
    for array in weights:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def prepare_for_multi_worker(model, cluster: Cluster, example: tuple[np.ndarray, np.ndarray]) -> None:
    """Work around the two places where Keras 3's `fit` cannot run under
    `MultiWorkerMirroredStrategy` (keras-team/keras#20585); other strategies are left untouched.

    1. `fit` builds the metric, loss and optimizer state from the first distributed batch, which it
       first reduces with `strategy.reduce`; across workers that fails on an (x, y) tuple ("Attempt
       to convert a value (PerReplica...)"). Here the state is built inside the strategy's scope
       from one local example batch instead, and `fit`'s own build step is skipped.
    2. Each step's logs are reduced with ``strategy.reduce("MEAN", v, axis=0)``, which fails for
       scalars across workers ("Invalid reduction dimension 0"). The train/test steps here return
       each log value as a one-element vector, which that reduction averages over all replicas.
       The epoch's logs (val_miou for checkpoints and early stopping) are read from the metrics
       themselves, whose confusion-matrix variables are summed over all replicas.
    """
    if cluster.kind != "multi-worker":
        return
    with cluster.strategy.scope():
        model._symbolic_build(data_batch=(tf.constant(example[0]), tf.constant(example[1])))
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    train_step, test_step = model.train_step, model.test_step

    def as_vectors(logs: dict) -> dict:
        return {key: tf.reshape(value, [1]) for key, value in logs.items()}

    model.train_step = lambda data: as_vectors(train_step(data))
    model.test_step = lambda data: as_vectors(test_step(data))


class GroupBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` for one worker of a group: keeps the last two epochs (so a kill while the
    backup is being written falls back to the one before), and on restart the workers agree on one
    epoch to resume from: the earliest any of them holds. A worker killed mid-save may hold one
    epoch less than the others; they then step back to their previous backup as well.
    """

    def __init__(self, backup_dir: Path, cluster: Cluster):
        super().__init__(str(backup_dir), double_checkpoint=True)
        self.cluster = cluster

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        mine = int(getattr(self.model, "_initial_epoch", None) or 0)
        agreed = min(self.cluster.gather(mine))
        if mine > agreed:
            if mine - agreed > 1 or not os.path.exists(self._prev_weights_path):
                raise ClusterError(f"worker {self.cluster.worker_index} holds a backup of epoch {mine} but another"
                                   f" worker only of epoch {agreed}; delete the backup folder on every worker"
                                   " to start over")
            shutil.copyfile(self._prev_weights_path, self._weights_path)
            shutil.copyfile(self._prev_training_metadata_path, self._training_metadata_path)
            self._load_model()
        if agreed:
            print(f"resuming from the backup of epoch {agreed}")
