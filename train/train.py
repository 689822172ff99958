"""Train stage: fit one transfer-learning model on a processed data version.

``python -m train.train --processed-dir data/processed/v1 --model resnet50v2_pool`` (or
``make train MODEL=...``) reads the images of the collection stage, splits them by key
hash (``train.dataset``), and trains in two phases:

1. **head**: the backbone is frozen. By default its features are computed once per image
   and the head trains on the cached features (``train.features``), which is many times
   faster per epoch; ``--no-cached-features`` runs the backbone every epoch instead, with
   data augmentation.
2. **fine_tune** (``--fine-tune-epochs`` > 0): the top of the backbone is unfrozen and the
   whole model trains on images at a low learning rate.

Everything a run needs to be understood later lives in its folder,
``develop/artifacts/runs/<run name>/``: the resolved configuration and seed
(``config.json``), class names, the split lists and the hash of the dataset, the best
model (``model.keras``), the history of every epoch (``history.csv``), TensorBoard logs
and Weights & Biases files. The run name is derived from the settings, so running the
same command again resumes the same run from its last finished epoch
(``BackupAndRestore``); ``--restart`` starts it over.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data.scripts.common import (
    DEFAULT_DATA_VERSION,
    PROJECT_ROOT,
    exclusive_lock,
    processed_dir,
    setup_logging,
    write_json,
)

logger = logging.getLogger(__name__)

STAGE = "train"
RUNS_DIR = PROJECT_ROOT / "develop" / "artifacts" / "runs"
PHASES = ("head", "fine_tune")
MAX_MESSAGE_CHARS = 800
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class TrainConfig:
    """The settings of one run; everything but the paths goes into the run name's hash."""

    processed_dir: Path
    model: str = "resnet50v2_pool"
    weights: str = "imagenet"
    image_size: int = 224
    epochs: int = 10
    fine_tune_epochs: int = 0
    fine_tune_layers: float = 0.2  # a fraction of the backbone's layers, or a count above 1
    batch_size: int = 32
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-5
    dropout: float = 0.3
    seed: int = 0
    train_size: float = 0.8
    val_size: float = 0.1
    test_size: float = 0.1
    cache: str = "memory"
    check: str = "decode"
    cached_features: bool = True
    class_weights: bool = True
    mixed_precision: str = "auto"
    runs_dir: Path = RUNS_DIR
    run_name: str | None = None
    wandb_project: str = "product-image-classifier"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def data_version(self) -> str:
        return Path(self.processed_dir).name

    def identity(self) -> dict[str, Any]:
        """Settings that make a run what it is: the same identity resumes the same run."""
        values = asdict(self)
        for name in (
            "processed_dir",
            "runs_dir",
            "run_name",
            "epochs",
            "fine_tune_epochs",
            "extra",
        ):
            values.pop(name)
        values["data_version"] = self.data_version
        return values

    def resolved_run_name(self) -> str:
        if self.run_name:
            return self.run_name
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()
        return f"{self.model}-{self.data_version}-{self.image_size}px-{digest[:8]}"

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting and what it accepts."""
        from train.models import MODELS

        if self.model not in MODELS:
            raise ValueError(
                f"MODEL must be one of {sorted(MODELS)}. Received: MODEL={self.model!r}"
            )
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
            "learning_rate": self.learning_rate,
            "fine_tune_learning_rate": self.fine_tune_learning_rate,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be greater than 0. Received: {name}={value!r}")
        if self.fine_tune_epochs < 0:
            raise ValueError(
                f"fine_tune_epochs must be 0 or more. Received: {self.fine_tune_epochs!r}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={self.dropout!r}")
        if self.mixed_precision not in ("auto", "on", "off"):
            raise ValueError(
                "mixed_precision must be auto, on or off. "
                f"Received: mixed_precision={self.mixed_precision!r}"
            )
        if self.run_name is not None and not RUN_NAME_RE.fullmatch(self.run_name):
            raise ValueError(
                "--run-name must be a plain folder name (letters, digits, '.', '_', '-', not "
                f"starting with '.'). Received: {self.run_name!r}"
            )
        layers = self.fine_tune_layers
        if not (0 <= layers <= 1 or (layers > 1 and float(layers).is_integer())):
            raise ValueError(
                "--fine-tune-layers must be a fraction in [0, 1] or a whole number of layers. "
                f"Received: {layers!r}"
            )
        weights = str(self.weights)
        if weights not in ("imagenet", "none") and not Path(weights).is_file():
            raise ValueError(
                f"WEIGHTS must be imagenet, none or the path of a weights file; {weights!r} "
                "is not a file"
            )


# ---- hardware ----


def choose_strategy() -> Any:
    """Pick a tf.distribute strategy from the hardware.

    Multi-worker when ``TF_CONFIG`` is set (one process per VM), mirrored over the GPUs of
    this machine when it has more than one, otherwise the default single-device strategy.
    """
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def use_mixed_precision(setting: str) -> bool:
    """Turn on float16 compute with float32 weights on GPUs (``auto``), or as told."""
    import keras
    import tensorflow as tf

    enabled = setting == "on" or (
        setting == "auto" and bool(tf.config.list_physical_devices("GPU"))
    )
    keras.mixed_precision.set_global_policy("mixed_float16" if enabled else "float32")
    return enabled


# ---- tracking ----


def wandb_mode() -> str:
    """Return ``WANDB_MODE`` if set, ``online`` when logged in, else ``offline``."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    try:
        if "api.wandb.ai" in netrc.read_text():
            return "online"
    except OSError:
        pass
    return "offline"


def start_wandb(config: TrainConfig, run_dir: Path, values: dict[str, Any]) -> Any:
    """Start a Weights & Biases run (offline unless logged in); None when disabled."""
    mode = wandb_mode()
    if mode == "disabled":
        return None
    import wandb

    return wandb.init(
        project=config.wandb_project,
        name=run_dir.name,
        id=hashlib.sha256(run_dir.name.encode()).hexdigest()[:16],
        resume="allow",
        dir=str(run_dir),
        config=values,
        mode=mode,
    )


# ---- the run ----


class RunFolder:
    """Paths and small records of one run folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config = path / "config.json"
        self.state = path / "state.json"
        self.model = path / "model.keras"
        self.history = path / "history.csv"
        self.tensorboard = path / "tensorboard"

    def read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state.read_text())
        except (OSError, ValueError):
            return {}

    def write_state(self, **values: Any) -> None:
        write_json(self.state, {**self.read_state(), **values})

    def history_path(self, phase: str) -> Path:
        return self.path / f"history-{phase}.csv"

    def backup(self, phase: str) -> Path:
        return self.path / "backup" / phase


def prepare_run_folder(config: TrainConfig, fingerprint: str, restart: bool) -> RunFolder:
    """Create or reopen the run folder; raise ValueError when it holds another dataset."""
    run = RunFolder(Path(config.runs_dir) / config.resolved_run_name())
    if restart and run.path.exists():
        logger.info("train: --restart removes %s", run.path)
        shutil.rmtree(run.path)
    trained = run.history_path("head").exists() or run.model.exists()
    if run.config.exists() and trained:
        previous = json.loads(run.config.read_text())
        if previous.get("dataset_fingerprint") != fingerprint:
            raise ValueError(
                f"run folder {run.path} was trained on another version of the dataset "
                f"({previous.get('dataset_fingerprint')}, now {fingerprint}); pass --restart "
                "to start it over or --run-name for a new run"
            )
        logger.info("train: resuming %s", run.path)
    run.path.mkdir(parents=True, exist_ok=True)
    return run


def build_callbacks(
    run: RunFolder,
    phase: str,
    validation_inputs: Any,
    validation_labels: Any,
    class_names: list[str],
    wandb_run: Any,
    checkpoint_path: Path,
) -> tuple[list[Any], Any]:
    """Callbacks of one phase, in the order they must run; also return the NaN guard."""
    import keras

    from train.callbacks import (
        AtomicBackupAndRestore,
        ConfusionMatrixLogger,
        LearningRateLogger,
        NaNGuard,
    )

    if phase == "head":
        guard = NaNGuard("--learning-rate", "no model was saved")
    else:
        guard = NaNGuard(
            "--fine-tune-learning-rate", "model.keras still holds the model of the head phase"
        )
    monitor = "val_accuracy" if len(validation_labels) else "accuracy"
    callbacks: list[Any] = [
        LearningRateLogger(),
        guard,
        AtomicBackupAndRestore(str(run.backup(phase)), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(
            str(checkpoint_path),
            monitor=monitor,
            mode="max",
            save_best_only=True,
            save_weights_only=True,
            # After a resume, the best epoch so far stays the bar to beat.
            initial_value_threshold=best_so_far(run.history_path(phase), monitor),
        ),
        keras.callbacks.CSVLogger(str(run.history_path(phase)), append=True),
        keras.callbacks.TensorBoard(str(run.tensorboard / phase), histogram_freq=0),
    ]
    if len(validation_labels):
        callbacks.append(
            ConfusionMatrixLogger(
                run.tensorboard / phase, validation_inputs, validation_labels, class_names
            )
        )
    if wandb_run is not None:
        from wandb.integration.keras import WandbMetricsLogger

        callbacks.append(WandbMetricsLogger(log_freq="epoch"))
    return callbacks, guard


def best_so_far(history: Path, column: str) -> float | None:
    """Return the best value of ``column`` in a phase's history CSV, or None."""
    if not history.exists():
        return None
    with open(history, newline="", encoding="utf-8") as handle:
        values = [float(row[column]) for row in csv.DictReader(handle) if row.get(column)]
    return max(values) if values else None


def epochs_done(history: Path) -> int:
    if not history.exists():
        return 0
    with open(history, newline="", encoding="utf-8") as handle:
        return sum(1 for _ in csv.DictReader(handle))


def check_classes(data: Any) -> None:
    """Raise ValueError when a classifier cannot be trained on these classes."""
    if len(data.class_names) < 2:
        raise ValueError(
            f"the dataset has {len(data.class_names)} class ({data.class_names}); a classifier "
            "needs images of at least 2 labels"
        )
    counts = data.counts()  # {class name: {split: images}}
    empty = [name for name in data.class_names if not counts[name]["train"]]
    if empty:
        raise ValueError(
            f"class(es) {empty} have no images in the training split; add images of them or "
            "remove their folders"
        )


def train(config: TrainConfig, *, restart: bool = False) -> dict[str, Any]:
    """Train one model; return the run summary. Raises ValueError for a bad setting."""
    config.validate()
    import keras

    from train.dataset import ImageDataSet

    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    mixed = use_mixed_precision(config.mixed_precision)
    strategy = choose_strategy()

    data = open_dataset(config, ImageDataSet)
    check_classes(data)
    lock_path = Path(config.runs_dir) / f".{config.resolved_run_name()}.lock"
    with exclusive_lock(lock_path, f"run {config.resolved_run_name()}"):
        return _train_locked(config, data, restart, started, mixed, strategy)


def _train_locked(
    config: TrainConfig, data: Any, restart: bool, started: float, mixed: bool, strategy: Any
) -> dict[str, Any]:
    """The body of ``train``, run while this process holds the run's lock."""
    new_folder = restart or not (Path(config.runs_dir) / config.resolved_run_name()).exists()
    run = prepare_run_folder(config, data.fingerprint(), restart)
    try:
        return _train_in_folder(config, data, run, started, mixed, strategy)
    except BaseException:
        # A setting that fails late (a backbone that needs larger images, a WEIGHTS file
        # that is not one) would otherwise leave a new folder that `make compare` lists.
        if new_folder and not has_progress(run):
            shutil.rmtree(run.path, ignore_errors=True)
            logger.info("train: removed the new run folder %s, since no epoch finished", run.path)
        raise


def has_progress(run: RunFolder) -> bool:
    """Return whether a run folder holds a finished epoch or a saved model."""
    phases = ("head", "fine_tune")
    return run.model.exists() or any(epochs_done(run.history_path(p)) for p in phases)


def _train_in_folder(
    config: TrainConfig, data: Any, run: RunFolder, started: float, mixed: bool, strategy: Any
) -> dict[str, Any]:
    """Train in ``run``'s folder: the part of ``train`` after the folder is ready."""
    import keras

    from train.callbacks import log_hparams
    from train.dataset import prepare_for_training
    from train.models import build_model, class_weights, compile_model, unfreeze_top

    values = {
        **config.identity(),
        "epochs": config.epochs,
        "fine_tune_epochs": config.fine_tune_epochs,
        "run_name": run.path.name,
        "processed_dir": str(config.processed_dir),
        "dataset_fingerprint": data.fingerprint(),
        "dataset_root": str(data.root),
        "class_names": data.class_names,
        "images": {split: len(data.split_samples(split)) for split in ("train", "val", "test")},
        "skipped_files": len(data.skipped),
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "mixed_precision": mixed,
        "keras_version": keras.__version__,
    }
    write_json(run.config, values)
    write_json(run.path / "class_names.json", data.class_names)
    data.save_splits(run.path)
    write_skipped(run, data.skipped)
    log_hparams(run.tensorboard, run.path.name, config.identity())
    wandb_run = start_wandb(config, run.path, values)
    logger.info(
        "train: %s on %s (%d train, %d val, %d test images, %d classes) into %s",
        config.model,
        config.data_version,
        values["images"]["train"],
        values["images"]["val"],
        values["images"]["test"],
        len(data.class_names),
        run.path,
    )

    train_labels = data.labels("train")
    weights_per_class = (
        class_weights(train_labels, len(data.class_names)) if config.class_weights else None
    )
    state = run.read_state()
    try:
        with strategy.scope():
            head_epochs = epochs_done(run.history_path("head"))
            if state.get("head_done") and run.model.exists() and head_epochs >= config.epochs:
                model = keras.models.load_model(run.model)
                logger.info("train: head phase already done; loaded %s", run.model)
            elif state.get("head_done") and run.model.exists():
                model = keras.models.load_model(run.model)
                logger.info(
                    "train: continuing the head phase from epoch %d to %d",
                    head_epochs,
                    config.epochs,
                )
                train_head_phase(
                    config, data, model, run, weights_per_class, wandb_run, prepare_for_training
                )
                save_model(model, run)
            else:
                model = build_model(
                    config.model,
                    num_classes=len(data.class_names),
                    image_size=config.image_size,
                    weights=config.weights,
                    dropout=config.dropout,
                    augment=True,
                    seed=config.seed,
                )
                train_head_phase(
                    config, data, model, run, weights_per_class, wandb_run, prepare_for_training
                )
                save_model(model, run)
                run.write_state(head_done=True)

            if config.fine_tune_epochs > 0:
                layers = config.fine_tune_layers
                unfrozen = unfreeze_top(model, int(layers) if layers > 1 else layers)
                compile_model(model, config.fine_tune_learning_rate)
                logger.info("train: fine-tuning the top %d backbone layers", unfrozen)
                train_on_images(
                    config,
                    data,
                    model,
                    run,
                    "fine_tune",
                    config.fine_tune_epochs,
                    weights_per_class,
                    wandb_run,
                    prepare_for_training,
                )
                save_model(model, run)
                run.write_state(fine_tune_done=True)
    finally:
        if wandb_run is not None:
            wandb_run.finish()

    merge_histories(run)
    summary = summarise(run, config, started)
    write_json(run.path / "summary.json", summary)
    logger.info(
        "train: done in %.0f s (%.0f s over all sessions of this run); best validation "
        "accuracy %s; model in %s",
        time.monotonic() - started,
        summary["seconds"],
        summary["best_val_accuracy"],
        run.model,
    )
    return summary


def save_model(model: Any, run: RunFolder) -> None:
    """Save the model (``model.keras``) and its weights alone (``model.weights.h5``).

    The weights file is what ``--weights`` takes to start another run from this one.
    Both are written to temporary files and renamed, so a kill leaves the last good pair.
    """
    from data.scripts.common import atomic_path

    with atomic_path(run.model) as tmp:
        keras_path = tmp.with_suffix(".keras")
        model.save(keras_path)
        keras_path.replace(tmp)
    with atomic_path(run.path / "model.weights.h5") as tmp:
        weights_path = tmp.with_name(tmp.stem + ".weights.h5")
        model.save_weights(weights_path)
        weights_path.replace(tmp)


def write_skipped(run: RunFolder, skipped: list[Any]) -> None:
    """List the files the dataset skipped, with the reason, in ``skipped_files.csv``."""
    from data.scripts.common import atomic_path

    with atomic_path(run.path / "skipped_files.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "reason", "message"])
            for item in skipped:
                writer.writerow([item.path, item.reason, item.message])


def open_dataset(config: TrainConfig, dataset_class: Any) -> Any:
    """Open the images of a processed folder: through its manifest when there is one."""
    folder = Path(config.processed_dir)
    manifest = folder / "manifest.parquet"
    common = {
        "image_size": config.image_size,
        "train_size": config.train_size,
        "val_size": config.val_size,
        "test_size": config.test_size,
        "check": config.check,
    }
    if manifest.exists():
        return dataset_class(folder, manifest=manifest, **common)
    return dataset_class(folder / "images", **common)


def train_head_phase(
    config: TrainConfig,
    data: Any,
    model: Any,
    run: RunFolder,
    weights_per_class: dict[int, float] | None,
    wandb_run: Any,
    prepare: Any,
) -> None:
    """Train the head with the backbone frozen, on cached features unless told otherwise."""
    from train.models import compile_model, split_model

    if not config.cached_features:
        compile_model(model, config.learning_rate)
        train_on_images(
            config, data, model, run, "head", config.epochs, weights_per_class, wandb_run, prepare
        )
        return

    from train.features import extract_features, train_head, weights_id

    parts = split_model(model)
    features = {}
    for split in ("train", "val"):
        cache = run.path / "features" / f"{split}-{weights_id(config.weights)}.npz"
        features[split] = extract_features(
            parts.features,
            data.dataset(split).as_numpy_iterator(),
            config.batch_size,
            cache_path=cache,
        )
    compile_model(parts.head, config.learning_rate)
    checkpoint = run.path / "checkpoints" / "head-best.weights.h5"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    val_features, val_labels = features["val"]
    callbacks, guard = build_callbacks(
        run, "head", val_features, val_labels, data.class_names, wandb_run, checkpoint
    )
    train_head(
        parts.head,
        *features["train"],
        epochs=config.epochs,
        batch_size=config.batch_size,
        validation=features["val"] if len(val_labels) else None,
        class_weight=weights_per_class,
        callbacks=callbacks,
        shuffle=True,
        seed=config.seed,
        verbose=2,
    )
    guard.raise_if_diverged(config.learning_rate)
    if checkpoint.exists():
        parts.head.load_weights(checkpoint)


def train_on_images(
    config: TrainConfig,
    data: Any,
    model: Any,
    run: RunFolder,
    phase: str,
    epochs: int,
    weights_per_class: dict[int, float] | None,
    wandb_run: Any,
    prepare: Any,
) -> None:
    """Fit the whole model on images for one phase; keep the best weights of the phase."""
    cache = "memory" if config.cache == "memory" else None
    train_ds = prepare(
        data.dataset("train"), training=True, batch_size=config.batch_size, cache=cache
    )
    val_ds = prepare(data.dataset("val"), training=False, batch_size=config.batch_size, cache=cache)
    val_labels = data.labels("val")
    checkpoint = run.path / "checkpoints" / f"{phase}-best.weights.h5"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    callbacks, guard = build_callbacks(
        run, phase, val_ds, val_labels, data.class_names, wandb_run, checkpoint
    )
    model.fit(
        train_ds,
        validation_data=val_ds if len(val_labels) else None,
        epochs=epochs,
        class_weight=weights_per_class,
        callbacks=callbacks,
        verbose=2,
    )
    learning_rate = config.learning_rate if phase == "head" else config.fine_tune_learning_rate
    guard.raise_if_diverged(learning_rate)
    if checkpoint.exists():
        model.load_weights(checkpoint)


def merge_histories(run: RunFolder) -> None:
    """Join the per-phase histories into ``history.csv`` with a phase and a global epoch."""
    rows: list[dict[str, Any]] = []
    for phase in PHASES:
        path = run.history_path(phase)
        if not path.exists():
            continue
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                rows.append({"phase": phase, "global_epoch": len(rows) + 1, **row})
    if not rows:
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    from data.scripts.common import atomic_path

    with atomic_path(run.history) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(rows)


def summarise(run: RunFolder, config: TrainConfig, started: float) -> dict[str, Any]:
    best = None
    epochs = 0
    if run.history.exists():
        with open(run.history, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        epochs = len(rows)
        values = [float(r["val_accuracy"]) for r in rows if r.get("val_accuracy")]
        best = max(values) if values else None
    previous = {}
    summary_path = run.path / "summary.json"
    if summary_path.exists():
        previous = json.loads(summary_path.read_text())
    seconds = round(time.monotonic() - started, 1) + previous.get("seconds", 0.0)
    return {
        "run": run.path.name,
        "model": config.model,
        "data_version": config.data_version,
        "weights": str(config.weights),
        "image_size": config.image_size,
        "epochs": epochs,
        "best_val_accuracy": best,
        "seconds": seconds,
        "model_path": str(run.model),
    }


# ---- command line ----


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig(processed_dir=processed_dir(DEFAULT_DATA_VERSION))
    parser = argparse.ArgumentParser(
        prog="python -m train.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--processed-dir",
        type=Path,
        default=defaults.processed_dir,
        help="processed data version with images/ and manifest.parquet "
        "(default: data/processed/v1)",
    )
    parser.add_argument(
        "--model", default=defaults.model, help=f"architecture (default: {defaults.model})"
    )
    parser.add_argument(
        "--weights",
        default=defaults.weights,
        help="imagenet, none, or the path of a weights file (default: imagenet)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=defaults.image_size,
        help="input side in pixels (default: 224)",
    )
    parser.add_argument(
        "--epochs", type=int, default=defaults.epochs, help="epochs of the head phase (default: 10)"
    )
    parser.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=0,
        help="epochs of fine-tuning after the head (default: 0)",
    )
    parser.add_argument(
        "--fine-tune-layers",
        type=float,
        default=defaults.fine_tune_layers,
        help="backbone layers to unfreeze: a fraction up to 1, or a count above 1 (default: 0.2)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="images per step (default: 32)"
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=defaults.learning_rate,
        help="learning rate of the head phase (default: 0.001)",
    )
    parser.add_argument(
        "--fine-tune-learning-rate",
        type=float,
        default=defaults.fine_tune_learning_rate,
        help="learning rate of fine-tuning (default: 1e-05)",
    )
    parser.add_argument(
        "--dropout", type=float, default=defaults.dropout, help="dropout of the head (default: 0.3)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: 0)")
    parser.add_argument(
        "--val-size", type=float, default=defaults.val_size, help="validation share (default: 0.1)"
    )
    parser.add_argument(
        "--test-size", type=float, default=defaults.test_size, help="test share (default: 0.1)"
    )
    parser.add_argument(
        "--check",
        choices=("decode", "header"),
        default=defaults.check,
        help="decode every image once before training so a damaged one is skipped, or only "
        "read headers, which is faster but lets a damaged image stop a run (default: decode)",
    )
    parser.add_argument(
        "--no-cached-features",
        action="store_true",
        help="run the frozen backbone every epoch, with augmentation (default: cache its features)",
    )
    parser.add_argument(
        "--no-class-weights",
        action="store_true",
        help="do not weight classes by their share (default: weighted)",
    )
    parser.add_argument(
        "--mixed-precision",
        choices=("auto", "on", "off"),
        default="auto",
        help="float16 compute: auto turns it on with GPUs (default: auto)",
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=RUNS_DIR,
        help="folder of run folders (default: develop/artifacts/runs)",
    )
    parser.add_argument(
        "--run-name",
        default=None,
        help="run folder name (default: model, data version, size and a hash of the settings)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="delete the run folder and start over (default: resume)",
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    config = TrainConfig(
        processed_dir=args.processed_dir,
        model=args.model,
        weights=args.weights,
        image_size=args.image_size,
        epochs=args.epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        fine_tune_layers=args.fine_tune_layers,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        fine_tune_learning_rate=args.fine_tune_learning_rate,
        dropout=args.dropout,
        seed=args.seed,
        train_size=round(1.0 - args.val_size - args.test_size, 10),
        val_size=args.val_size,
        test_size=args.test_size,
        check=args.check,
        cached_features=not args.no_cached_features,
        class_weights=not args.no_class_weights,
        mixed_precision=args.mixed_precision,
        runs_dir=args.runs_dir,
        run_name=args.run_name,
    )
    from train.callbacks import TrainingDiverged

    try:
        summary = train(config, restart=args.restart)
    except TrainingDiverged as exc:
        logger.error("%s", exc)
        return 1
    except (ValueError, OSError, RuntimeError) as exc:
        message = str(exc)
        if len(message) > MAX_MESSAGE_CHARS:  # Keras can print whole tensors in a message
            message = message[:MAX_MESSAGE_CHARS] + " [...]"
        logger.error("train: %s", message)
        return 2
    except KeyboardInterrupt:
        logger.error("train: interrupted; run the same command again to resume")
        return 130
    print(f"RUN={Path(summary['model_path']).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
