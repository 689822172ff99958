"""Keras callbacks of the trainer: learning rate and confusion matrix in TensorBoard,
the HParams record, and a guard that stops a run whose loss became NaN.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from visualise.confusion import confusion_matrix_png

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped and saved no model."""


class LearningRateLogger(keras.callbacks.Callback):
    """Add ``learning_rate`` to the epoch logs, so TensorBoard and the CSV history show it.

    Put it before the TensorBoard and CSVLogger callbacks in the list.
    """

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self._current_rate()))

    def _current_rate(self) -> Any:
        rate = self.model.optimizer.learning_rate
        if callable(rate):
            return rate(self.model.optimizer.iterations)
        return rate


class ConfusionMatrixLogger(keras.callbacks.Callback):
    """Write the validation confusion matrix as an image to TensorBoard after each epoch.

    ``inputs`` must yield the validation data in the order of ``labels`` (no shuffle).
    """

    def __init__(
        self, log_dir: Path, inputs: Any, labels: np.ndarray, class_names: list[str]
    ) -> None:
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "validation"))
        self.inputs = inputs
        self.labels = np.asarray(labels)
        self.class_names = class_names

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if len(self.labels) == 0:
            return
        from sklearn.metrics import confusion_matrix

        probabilities = self.model.predict(self.inputs, verbose=0)
        predicted = np.asarray(probabilities).argmax(axis=1)
        matrix = confusion_matrix(self.labels, predicted, labels=range(len(self.class_names)))
        png = confusion_matrix_png(matrix, self.class_names, title=f"Validation, epoch {epoch + 1}")
        image = tf.expand_dims(tf.io.decode_png(png, channels=3), 0)
        with self.writer.as_default():
            tf.summary.image("confusion_matrix", image, step=epoch)
        self.writer.flush()


class NaNGuard(keras.callbacks.Callback):
    """Stop training as soon as the loss is NaN or infinite and remember where."""

    def __init__(
        self,
        rate_option: str = "--learning-rate",
        saved_note: str = "no model was saved",
    ) -> None:
        super().__init__()
        self.diverged_at: tuple[int, int] | None = None
        self.rate_option = rate_option
        self.saved_note = saved_note
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged_at = (self._epoch + 1, batch + 1)
            self.model.stop_training = True

    def raise_if_diverged(self, learning_rate: float) -> None:
        """Raise TrainingDiverged naming the epoch, the batch and what to change."""
        if self.diverged_at is None:
            return
        epoch, batch = self.diverged_at
        raise TrainingDiverged(
            f"the loss became NaN or infinite at epoch {epoch}, batch {batch}, so "
            f"{self.saved_note}. Lower the learning rate ({self.rate_option} was "
            f"{learning_rate:g}; try {learning_rate / 10:g}, through TRAIN_ARGS with make) or "
            "check the images for broken files, then run again with --restart"
        )


def log_hparams(log_dir: Path, run_name: str, values: dict[str, Any]) -> None:
    """Record a run's hyperparameters for TensorBoard's HParams dashboard."""
    flat = {
        key: value if isinstance(value, (bool, int, float, str)) else str(value)
        for key, value in values.items()
        if value is not None
    }
    writer = tf.summary.create_file_writer(str(Path(log_dir)))
    with writer.as_default():
        hparams_api.hparams_config(
            hparams=[hparams_api.HParam(name) for name in flat],
            metrics=[
                hparams_api.Metric("epoch_accuracy", group="validation", display_name="val acc"),
                hparams_api.Metric("epoch_loss", group="validation", display_name="val loss"),
            ],
        )
        hparams_api.hparams(flat, trial_id=run_name)
    writer.flush()


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose backup is replaced whole or not at all.

    Keras 3.15 rewrites ``latest.weights.h5`` in place, so a Ctrl-C during the write
    leaves a file that can never be loaded and a run that can never resume. Here the
    weights and the epoch record are written to temporary files and renamed, weights
    first: an interruption leaves the previous epoch's pair, or the new weights with
    the previous epoch number, which repeats one epoch but loads.
    """

    def _save_model(self) -> None:
        from data.scripts.common import atomic_path, write_json

        backup = Path(self.backup_dir)
        backup.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._weights_path) as tmp:
            staged = tmp.with_name(tmp.stem + ".weights.h5")
            self.model.save_weights(staged, overwrite=True)
            staged.replace(tmp)
        write_json(
            self._training_metadata_path,
            {"epoch": self._current_epoch, "batch": self._last_batch_seen},
        )
