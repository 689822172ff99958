"""Transfer-learning classifiers for product photos: an ImageNet backbone and a small head.

Every model takes raw RGB images of shape ``(image_size, image_size, 3)`` with values 0–255,
in any dtype that casts to float32 (the uint8 arrays of ``ImageDataSet`` work as they are),
and returns softmax probabilities of shape ``(batch, num_classes)``, float32. Inside the model,
in order:

1. ``augmentation``: random horizontal flip, rotation, zoom and translation. Keras runs these
   layers only in training mode (``fit``), so ``predict`` and a served model pass images
   through unchanged. Models built with ``augment=False`` have no such layer.
2. ``features``: the backbone's own ``preprocess_input``, the backbone without its ImageNet
   classifier, and a reduction to one vector per image (global average pooling for the
   ``*_pool`` models, flattening for the ``*_dense`` ones). This stage always runs in
   inference mode, see ``InferenceMode``.
3. ``head``: the classifier trained on those vectors.

``split_model`` returns these stages as separate models that share layers and weights with the
full model, so ``train.features`` can compute the features once and train the head alone.

Preprocessing travels inside the saved model, so serving cannot drift from training. Loading a
saved model needs this module imported first, because importing it registers the two custom
layers (``BackbonePreprocess`` and ``InferenceMode``) with Keras.

Models (``MODELS``):

==================== =========== =================================================
name                 backbone    head
==================== =========== =================================================
``resnet50v2_pool``  ResNet50V2  average pool, BatchNorm, Dropout, Dense softmax
``resnet50v2_dense`` ResNet50V2  flatten, Dense 256, Dropout, Dense 128, Dropout,
                                 Dense softmax
``vgg19_pool``       VGG19       as ``resnet50v2_pool``
``vgg19_dense``      VGG19       as ``resnet50v2_dense``
``mobilenetv3_pool`` MobileNetV3 as ``resnet50v2_pool``; about 1M parameters, for
                     Small       fast serving on a CPU. It needs ImageNet weights:
                                 from random weights its features are about 1e-10
                                 and the head cannot learn from them
==================== =========== =================================================
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
from keras.src.backend.config import keras_home

logger = logging.getLogger(__name__)

DEFAULT_DROPOUT = 0.2
DENSE_HEAD_UNITS = (256, 128)
MIN_IMAGE_SIZE = 32  # keras.applications rejects smaller inputs for both backbones
WEIGHTS_CHOICES_HELP = "'imagenet', 'none', or a path to a .weights.h5 or Keras .h5 file"


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A keras.applications backbone and where Keras keeps its ImageNet weights file."""

    name: str
    application: Callable[..., keras.Model]
    preprocess_input: Callable[[Any], Any]
    notop_file: str
    notop_url: str


BACKBONES: dict[str, Backbone] = {
    "resnet50v2": Backbone(
        name="resnet50v2",
        application=keras.applications.ResNet50V2,
        preprocess_input=keras.applications.resnet_v2.preprocess_input,
        # File names and URLs as in keras/src/applications/resnet.py and vgg19.py (Keras 3.15).
        notop_file="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        notop_url=(
            "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
            "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
        ),
    ),
    "vgg19": Backbone(
        name="vgg19",
        application=keras.applications.VGG19,
        preprocess_input=keras.applications.vgg19.preprocess_input,
        notop_file="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        notop_url=(
            "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
            "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
        ),
    ),
    # MobileNetV3 rescales its input inside the model, so its preprocess_input is the identity.
    "mobilenetv3small": Backbone(
        name="mobilenetv3small",
        application=keras.applications.MobileNetV3Small,
        preprocess_input=keras.applications.mobilenet_v3.preprocess_input,
        notop_file="weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        notop_url=(
            "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"
            "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
        ),
    ),
}

HeadKind = Literal["pool", "dense"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registered architecture: a backbone name and a head kind."""

    backbone: str
    head: HeadKind


MODELS: dict[str, ModelSpec] = {
    "resnet50v2_pool": ModelSpec(backbone="resnet50v2", head="pool"),
    "resnet50v2_dense": ModelSpec(backbone="resnet50v2", head="dense"),
    "vgg19_pool": ModelSpec(backbone="vgg19", head="pool"),
    "vgg19_dense": ModelSpec(backbone="vgg19", head="dense"),
    "mobilenetv3_pool": ModelSpec(backbone="mobilenetv3small", head="pool"),
}


@keras.saving.register_keras_serializable(package="product_classifier")
class BackbonePreprocess(keras.layers.Layer):
    """Cast raw RGB 0–255 to float32 and apply a backbone's own ``preprocess_input``.

    A registered layer rather than a ``Lambda``: a ``Lambda`` saves Python bytecode, which
    ``keras.models.load_model`` refuses to load unless unsafe deserialisation is enabled.

    Args:
        backbone: a key of ``BACKBONES``.

    Input: ``[batch, height, width, 3]`` RGB, any real dtype. Output: the same shape, float32,
    scaled to -1..1 for ResNet50V2, BGR minus the ImageNet channel means for VGG19, unchanged
    for MobileNetV3Small (which rescales inside its own first layers).
    """

    def __init__(self, backbone: str, **kwargs: Any) -> None:
        if backbone not in BACKBONES:
            raise ValueError(
                f"Invalid value for argument `backbone`. Expected one of {sorted(BACKBONES)}. "
                f"Received: backbone={backbone!r}"
            )
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, inputs: Any) -> Any:
        images = keras.ops.cast(inputs, self.compute_dtype)
        return BACKBONES[self.backbone].preprocess_input(images)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "backbone": self.backbone}


@keras.saving.register_keras_serializable(package="product_classifier")
class InferenceMode(keras.layers.Wrapper):
    """Run the wrapped layer or model in inference mode, whatever mode the caller runs in.

    The backbone's BatchNormalization layers must normalise with the moving mean and variance
    learnt on ImageNet, also while the head trains and while the top of the backbone is
    fine-tuned. Batch statistics of a few dozen product photos are noisy and unlike ImageNet's,
    and updating the moving statistics from them would undo much of what the backbone learnt.
    The usual idiom, calling the backbone with ``training=False`` inside a functional model,
    does not hold in Keras 3: ``fit`` passes ``training=True`` to every layer of the outer
    model, and that overrides the recorded ``training=False`` (checked on Keras 3.15). A
    backbone with trainable BatchNormalization layers would then update their statistics.
    This wrapper passes ``training=False`` explicitly at run time instead,
    which takes precedence over the outer training flag.

    Gradients still flow through the wrapped layer, so fine-tuning works: inference mode only
    changes how BatchNormalization and Dropout behave.
    """

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        # `training` is accepted and ignored on purpose: Keras passes the outer flag here.
        return self.layer(inputs, training=False)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return self.layer.compute_output_shape(input_shape)


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """The stages of a classifier; the models share their layers and weights with it.

    Attributes:
        augmentation: random flip, rotation, zoom and translation layers, or None for a model
            built with ``augment=False``.
        features: raw RGB ``[batch, S, S, 3]`` (0–255, any real dtype) to feature vectors
            ``[batch, F]`` float32: preprocessing, backbone and pooling or flattening.
        head: feature vectors ``[batch, F]`` to probabilities ``[batch, num_classes]``.
        base: the keras.applications backbone inside ``features``.
    """

    augmentation: keras.Sequential | None
    features: keras.Model
    head: keras.Model
    base: keras.Model

    @property
    def image_size(self) -> int:
        """Return the input height and width in pixels."""
        return int(self.features.input_shape[1])

    @property
    def feature_size(self) -> int:
        """Return F, the length of one feature vector."""
        return int(self.features.output_shape[-1])


def build_model(
    name: str,
    *,
    num_classes: int,
    image_size: int,
    weights: str | os.PathLike[str] = "imagenet",
    dropout: float = DEFAULT_DROPOUT,
    augment: bool = True,
    seed: int | None = None,
) -> keras.Model:
    """Build a classifier from ``MODELS`` with a frozen backbone, ready for ``compile_model``.

    Args:
        name: a key of ``MODELS``.
        num_classes: K, the number of labels; at least 2.
        image_size: S, the input height and width in pixels; at least 32.
        weights: where the starting weights come from.
            ``"imagenet"``: the backbone's ImageNet weights through keras.applications,
            read from the Keras cache (``keras_cache_dir()``) or downloaded into it; the head
            starts random.
            ``"none"``: random weights everywhere.
            A path ending ``.weights.h5``: weights saved by ``model.save_weights`` of the same
            architecture (same name and K; ``*_dense`` models also need the same S), loaded
            into the whole model, for instance to continue from an earlier run.
            A path ending ``.h5``: a keras.applications backbone weights file such as
            ``resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5``; the head starts random.
        dropout: the rate of every Dropout layer in the head, in [0, 1).
        augment: whether the model starts with random augmentation layers.
        seed: seeds the augmentation layers, the Dropout layers and the head's initial
            weights. A backbone built with ``weights="none"`` draws its random weights from
            the global Keras seed instead (``keras.utils.set_random_seed``).

    Returns:
        A ``keras.Model`` from ``[batch, S, S, 3]`` raw RGB to ``[batch, K]`` float32
        probabilities. The whole backbone is frozen; ``unfreeze_top`` thaws part of it.

    Raises:
        ValueError: an unknown ``name``, an invalid argument value, or a weights file that does
            not match the architecture.
        FileNotFoundError: a weights path that does not exist, or ImageNet weights that are
            neither in the Keras cache nor downloadable.
    """
    spec = _model_spec(name)
    _check_positive_int("num_classes", num_classes, minimum=2)
    _check_positive_int("image_size", image_size, minimum=MIN_IMAGE_SIZE)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(
            f"Invalid value for argument `dropout`. Expected a rate in [0, 1). "
            f"Received: dropout={dropout}"
        )
    source = weights_source(weights)
    if spec.backbone == "mobilenetv3small" and source == "none":
        logger.warning(
            "%s from random weights computes features of about 1e-10, which the head cannot "
            "learn from; use ImageNet weights with it, or resnet50v2_pool for weights='none'",
            name,
        )

    # step 1: backbone, with ImageNet or backbone-file weights if asked for
    base = _load_base(BACKBONES[spec.backbone], image_size, weights, source)
    # The backbone starts frozen, because the large gradients of a random head would
    # otherwise overwrite much of its pretrained weights in the first steps. `unfreeze_top`
    # thaws it for fine-tuning later.
    base.trainable = False

    # step 2: stages, then the full model
    features = _build_features(base, spec, image_size)
    parts = ModelParts(
        augmentation=_build_augmentation(seed) if augment else None,
        features=features,
        head=_build_head(spec.head, int(features.output_shape[-1]), num_classes, dropout, seed),
        base=base,
    )
    model = assemble_model(parts, name=name)

    # step 3: a full-model weights file overwrites everything built above
    if source == "model_file":
        _load_model_weights(model, Path(weights))
    logger.info(
        "built %s: %d classes, %d px, weights %s, augmentation %s, %s parameters",
        name,
        num_classes,
        image_size,
        weights,
        "on" if augment else "off",
        f"{model.count_params():,}",
    )
    return model


def assemble_model(parts: ModelParts, *, name: str) -> keras.Model:
    """Join the stages into one model from raw RGB to probabilities.

    The new model uses the layers of ``parts`` themselves, not copies, so a head trained alone
    (``train.features.train_head``) brings its trained weights along. ``build_model`` builds
    every model through this function, so an assembled model and a built one have the same
    structure and load each other's ``.weights.h5`` files.

    Raises:
        ValueError: the head does not take vectors of the length ``parts.features`` returns.
    """
    head_input = parts.head.input_shape[-1]
    if head_input != parts.feature_size:
        raise ValueError(
            f"The head does not fit the feature extractor: the head takes vectors of length "
            f"{head_input} but the features have length {parts.feature_size}. Build the head "
            f"for this architecture, or take both from `split_model` of one model."
        )

    images = keras.Input(shape=(parts.image_size, parts.image_size, 3), name="image")
    x = images
    if parts.augmentation is not None:
        x = parts.augmentation(x)
    x = InferenceMode(parts.features, name="features")(x)
    outputs = parts.head(x)
    return keras.Model(images, outputs, name=name)


def split_model(model: keras.Model) -> ModelParts:
    """Return the stages of a model from ``build_model`` or ``assemble_model``.

    The stages share layers and weights with ``model``: training ``parts.head`` trains the head
    of ``model`` too.

    Raises:
        ValueError: ``model`` was not built by this module (it has no ``features`` or ``head``
            layer).
    """
    layer_names = [layer.name for layer in model.layers]
    if "features" not in layer_names or "head" not in layer_names:
        raise ValueError(
            f"Expected a model from `build_model`, with layers named 'features' and 'head'. "
            f"Received: model {model.name!r} with layers {layer_names}"
        )
    features = model.get_layer("features").layer
    augmentation = model.get_layer("augmentation") if "augmentation" in layer_names else None
    base = next(
        layer
        for layer in features.layers
        # keras.applications names MobileNetV3Small's model "MobileNetV3Small".
        if isinstance(layer, keras.Model) and layer.name.lower() in BACKBONES
    )
    return ModelParts(
        augmentation=augmentation, features=features, head=model.get_layer("head"), base=base
    )


def unfreeze_top(model: keras.Model, layers: int | float) -> int:
    """Make the top of the backbone trainable for fine-tuning; call ``compile_model`` after.

    Every layer of the backbone counts, including those without weights (activations,
    additions, padding), in the order of ``base.layers``; the head stays trainable. Keras
    builds the training step from the trainable weights at compile time, so the change takes
    effect only after the model is compiled again.

    Args:
        model: a model from ``build_model``.
        layers: how many backbone layers to unfreeze, counted from the output: an int from 0
            to the number of backbone layers, or a float in [0, 1] for that fraction of them
            (rounded up). 0 freezes the whole backbone again.

    Returns:
        The number of backbone layers left trainable; BatchNormalization layers stay frozen
        and are not counted.

    Raises:
        ValueError: ``layers`` is out of range or not an int or float.
    """
    base = split_model(model).base
    candidates = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    count = _layer_count(layers, len(candidates))

    # Setting `trainable` on a container sets it on everything inside, so thaw the outer
    # models first and then choose layer by layer.
    model.trainable = True
    base.trainable = count > 0
    first = len(candidates) - count
    unfrozen = 0
    for index, layer in enumerate(candidates):
        # BatchNormalization stays frozen. InferenceMode already keeps its moving statistics,
        # and freezing gamma and beta too keeps each layer's normalisation the one learnt on
        # ImageNet. A frozen BatchNormalization layer also runs in inference mode on its own
        # in Keras 3, which protects the statistics where the backbone runs outside
        # InferenceMode.
        trainable = index >= first and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable
        unfrozen += int(trainable)

    logger.info(
        "unfroze %d of %d backbone layers of %s (BatchNormalization stays frozen); "
        "compile the model again before training",
        unfrozen,
        len(candidates),
        model.name,
    )
    return unfrozen


def compile_model(
    model: keras.Model, learning_rate: float, *, jit_compile: bool | Literal["auto"] = "auto"
) -> None:
    """Compile with Adam, sparse categorical cross-entropy, accuracy and top-2 accuracy.

    Compile again after every change of ``trainable`` (``unfreeze_top``), usually with a
    learning rate 10 to 100 times lower for fine-tuning, because Keras fixes the set of
    trainable weights when it builds the training step.

    Args:
        model: any classifier with integer labels and softmax outputs, a head alone included.
        learning_rate: Adam's learning rate, > 0.
        jit_compile: passed to ``keras.Model.compile``; "auto" lets Keras use XLA where every
            layer supports it.

    Raises:
        ValueError: ``learning_rate`` is not positive.
    """
    if not learning_rate > 0:
        raise ValueError(
            f"Invalid value for argument `learning_rate`. Expected a positive number. "
            f"Received: learning_rate={learning_rate}"
        )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2_accuracy"),
        ],
        jit_compile=jit_compile,
    )


def class_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> dict[int, float]:
    """Return balanced class weights ``{k: N / (K * count_k)}`` for ``fit(class_weight=...)``.

    With these weights every class adds the same total to the loss, whatever its count; a
    dataset with equal counts gets 1.0 for every class.

    Args:
        labels: N integer labels in [0, K).
        num_classes: K.

    Raises:
        ValueError: no labels, a label outside [0, K), or a class with no samples (its weight
            would be infinite).
    """
    values = np.asarray(labels)
    _check_positive_int("num_classes", num_classes, minimum=1)
    if values.size == 0:
        raise ValueError("Expected at least one label to compute class weights. Received: 0")
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"Expected integer labels. Received: labels of dtype {values.dtype}")
    outside = values[(values < 0) | (values >= num_classes)]
    if outside.size:
        raise ValueError(
            f"Expected labels in [0, {num_classes}) for num_classes={num_classes}. "
            f"Received: {outside.size} labels outside, for example {int(outside[0])}"
        )

    counts = np.bincount(values.ravel(), minlength=num_classes)
    empty = np.flatnonzero(counts == 0).tolist()
    if empty:
        raise ValueError(
            f"Classes {empty} have no samples, so their balanced weight would be infinite. "
            f"Check the label mapping and the split, or set num_classes to the labels in use."
        )
    total = int(counts.sum())
    return {k: total / (num_classes * int(count)) for k, count in enumerate(counts)}


def weights_source(
    weights: str | os.PathLike[str],
) -> Literal["imagenet", "none", "model_file", "backbone_file"]:
    """Return which kind of starting weights ``weights`` names (see ``build_model``).

    Raises:
        ValueError: ``weights`` matches none of the accepted forms.
        FileNotFoundError: ``weights`` is a path that does not exist.
    """
    if weights in ("imagenet", "none"):
        return weights  # type: ignore[return-value]
    path = Path(weights)
    if path.name.endswith(".weights.h5"):
        source: Literal["model_file", "backbone_file"] = "model_file"
    elif path.suffix == ".h5":
        source = "backbone_file"
    else:
        raise ValueError(
            f"Invalid value for argument `weights`. Expected {WEIGHTS_CHOICES_HELP}. "
            f"Received: weights={str(weights)!r}"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file not found: {path}. Check the path, or pass weights='imagenet' or "
            f"weights='none'."
        )
    return source


def keras_cache_dir() -> Path:
    """Return the folder where keras.applications looks for and downloads weight files."""
    # Keras reads $KERAS_HOME once, at import, and falls back to ~/.keras; `get_file` then
    # uses /tmp/.keras when that folder is not writable (keras/src/utils/file_utils.py, 3.15).
    home = Path(os.path.expanduser(keras_home()))
    if not os.access(home, os.W_OK):
        home = Path("/tmp/.keras")
    return home / "models"


def _model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(
            f"Unknown model name. Expected one of {sorted(MODELS)}. Received: name={name!r}"
        )
    return MODELS[name]


def _check_positive_int(argument: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"Invalid value for argument `{argument}`. Expected an integer >= {minimum}. "
            f"Received: {argument}={value!r}"
        )


def _layer_count(layers: int | float, total: int) -> int:
    if isinstance(layers, bool) or not isinstance(layers, (int, float, np.integer, np.floating)):
        raise ValueError(
            f"Invalid type for argument `layers`. Expected an int or a float. "
            f"Received: layers={layers!r}"
        )
    if isinstance(layers, (float, np.floating)):
        if not 0.0 <= layers <= 1.0:
            raise ValueError(
                f"Invalid value for argument `layers`. Expected a fraction in [0, 1] or an int "
                f"in [0, {total}]. Received: layers={layers}"
            )
        return int(np.ceil(layers * total))
    if not 0 <= layers <= total:
        raise ValueError(
            f"Invalid value for argument `layers`. The backbone has {total} layers, so expected "
            f"an int in [0, {total}] or a fraction in [0, 1]. Received: layers={layers}"
        )
    return int(layers)


def _load_base(
    backbone: Backbone, image_size: int, weights: str | os.PathLike[str], source: str
) -> keras.Model:
    input_shape = (image_size, image_size, 3)
    if source in ("none", "model_file"):
        return backbone.application(include_top=False, weights=None, input_shape=input_shape)
    if source == "backbone_file":
        try:
            return backbone.application(
                include_top=False, weights=str(weights), input_shape=input_shape
            )
        except ValueError as exc:
            raise ValueError(
                f"Could not load the backbone weights file {weights} into {backbone.name}: "
                f"{exc}. Expected a keras.applications {backbone.name} file without the top "
                f"layers, such as {backbone.notop_file}."
            ) from exc

    try:
        return backbone.application(include_top=False, weights="imagenet", input_shape=input_shape)
    except Exception as exc:
        # keras.utils.get_file raises a bare Exception when the download fails, so the check
        # below decides: a missing cache file means the download failed, anything else is
        # not ours to explain and is raised as it was.
        cached = keras_cache_dir() / backbone.notop_file
        if cached.exists():
            raise
        raise FileNotFoundError(
            f"ImageNet weights for {backbone.name} are not in the Keras cache and could not be "
            f"downloaded ({exc}). On a machine with internet access, download "
            f"{backbone.notop_url} and copy {backbone.notop_file} into {cached.parent}/ "
            f"(keras.applications reads it from there; set KERAS_HOME to move that folder), "
            f"or pass the file's path as weights. To train from random weights instead, pass "
            f"weights='none' (WEIGHTS=none on the make command line)."
        ) from exc


def _build_features(base: keras.Model, spec: ModelSpec, image_size: int) -> keras.Model:
    images = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = BackbonePreprocess(spec.backbone, name="preprocess")(images)
    # training=False is the keras-io idiom for a frozen backbone, kept for callers that use
    # this model on its own; inside a full model InferenceMode is what enforces it (see there).
    x = base(x, training=False)
    if spec.head == "pool":
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(images, x, name=f"{spec.backbone}_features")


def _build_head(
    kind: HeadKind, feature_size: int, num_classes: int, dropout: float, seed: int | None
) -> keras.Model:
    seeds = _seed_sequence(seed)
    features = keras.Input(shape=(feature_size,), name="features")
    x = features
    if kind == "pool":
        # Keras' default momentum 0.99 lets the moving statistics settle only after a few
        # hundred steps, so a short run evaluated far worse than it trained. With 0.9 they
        # settle within a few dozen steps, still smooth over batches of 32.
        x = keras.layers.BatchNormalization(momentum=0.9, name="head_batch_norm")(x)
        x = keras.layers.Dropout(dropout, seed=next(seeds), name="head_dropout")(x)
    else:
        for units in DENSE_HEAD_UNITS:
            x = keras.layers.Dense(
                units,
                activation="relu",
                kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)),
                name=f"head_dense_{units}",
            )(x)
            x = keras.layers.Dropout(dropout, seed=next(seeds), name=f"head_dropout_{units}")(x)
    # float32 probabilities even under the mixed_float16 policy used on GPUs: a float16
    # softmax loses the small probabilities that the loss and label review depend on.
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)),
        dtype="float32",
        name="predictions",
    )(x)
    return keras.Model(features, outputs, name="head")


def _build_augmentation(seed: int | None) -> keras.Sequential:
    seeds = _seed_sequence(seed)
    # Small changes only, because product photos are usually centred and upright. A mirrored
    # product is still the same product, so horizontal flips are safe; vertical ones are not.
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=next(seeds)),
            keras.layers.RandomRotation(0.05, seed=next(seeds)),
            keras.layers.RandomZoom(0.1, seed=next(seeds)),
            keras.layers.RandomTranslation(0.1, 0.1, seed=next(seeds)),
        ],
        name="augmentation",
    )


def _seed_sequence(seed: int | None) -> Iterator[int | None]:
    """Yield seed, seed + 1, ... so that each seeded layer gets its own stream, or None forever."""
    return itertools.count(seed) if seed is not None else itertools.repeat(None)


def _load_model_weights(model: keras.Model, path: Path) -> None:
    try:
        model.load_weights(path)
    except ValueError as exc:
        raise ValueError(
            f"Could not load the weights file {path} into {model.name}: {exc}. A .weights.h5 "
            f"file loads only into the architecture that saved it: the same model name and "
            f"number of classes, and for *_dense models the same image size."
        ) from exc
