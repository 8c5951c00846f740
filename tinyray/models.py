"""Model registry: the seed study's six CNNs, to the exact parameter, and models beyond it.

Every entry pins its parameter count for 64x64x3 input and 200 classes; tests compare those pins
with ``count_params()`` for every registered model, so a new entry is tested for free.

    >>> create_model("model2").count_params()
    13070472
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from tinyray.data.layout import IMAGE_SHAPE as INPUT_SHAPE
from tinyray.errors import TinyrayError

NUM_CLASSES = 200
WEIGHTS_HELP = (
    "pass weights=none (random init), or a local path or s3:// URI of a Keras weights file "
    "for the base network, e.g. resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 from "
    "Keras' applications release page"
)


@dataclass(frozen=True)
class SeedResult:
    """What the seed study reported for one model (TensorFlow, one machine)."""

    train_accuracy: float  # percent
    val_accuracy: float  # percent
    params: int
    training_seconds: float


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    params: int  # exact count_params() at 64x64x3 input and 200 classes
    build: Callable[..., object]
    seed: SeedResult | None = None
    has_base: bool = False  # takes weights= and freeze_base= (transfer-learning models)
    head_inputs: int = 1024  # width of the layer feeding the softmax (for params_for)

    def params_for(self, num_classes: int) -> int:
        """Exact parameter count for another number of classes: only the output Dense changes."""
        return self.params - (NUM_CLASSES - num_classes) * (self.head_inputs + 1)


# ---------------------------------------------------------------------------------------------
# Builders. Each returns an uncompiled tf_keras Model; hidden layers use ReLU and the output is a
# softmax Dense kept in float32 so mixed precision cannot overflow the probabilities.


def _output(keras, x, num_classes):
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)


def _build_model1(keras, inputs, num_classes, **_):
    """Conv 32 (3x3 valid) → MaxPool → Flatten → Dense 1024 → Dense N."""
    x = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(1024, activation="relu")(x)
    return _output(keras, x, num_classes)


def _build_model2(keras, inputs, num_classes, **_):
    """model1 plus a second conv block: Conv 32 → Pool → Conv 64 → Pool → Dense 1024 → Dense N."""
    x = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(64, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(1024, activation="relu")(x)
    return _output(keras, x, num_classes)


def _build_model3(keras, inputs, num_classes, **_):
    """Five VGG-style blocks of two same-padded convs, BN after each conv, MaxPool per block;
    then Dense 4096 + BN → Dense 1024 + BN → Dense N. The seed places BN after the activation."""
    x = inputs
    for filters in ((64, 64), (128, 128), (128, 128), (128, 128), (256, 512)):
        for f in filters:
            x = keras.layers.Conv2D(f, 3, padding="same", activation="relu")(x)
            x = keras.layers.BatchNormalization()(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    for units in (4096, 1024):
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.BatchNormalization()(x)
    return _output(keras, x, num_classes)


def _build_model4(keras, inputs, num_classes, **_):
    """The seed's layer table for model 4 (same padding), Dropout 0.5 after each hidden Dense."""
    conv = lambda f: keras.layers.Conv2D(f, 3, padding="same", activation="relu")  # noqa: E731
    x = conv(64)(inputs)
    x = conv(64)(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.BatchNormalization()(x)
    x = conv(128)(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.BatchNormalization()(x)
    x = conv(256)(x)
    x = conv(256)(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    for units in (1024, 512):
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(0.5)(x)
    return _output(keras, x, num_classes)


# keras.applications.resnet.preprocess_input ("caffe"): BGR, 0–255, less ImageNet's mean per channel
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def caffe_preprocess(keras, x):
    """RGB in [0, 1] (what tinyray feeds every model) → what Keras' ResNet weights were trained on:
    ``resnet.preprocess_input(x·255)``. Built-in layers only, and none with weights, so the
    parameter count stays the seed's and the saved model loads anywhere with ``safe_mode``: the
    channels are reversed as rows of a (channels, pixels) view, cropped one by one and joined
    in B, G, R order."""
    layers = keras.layers
    h, w, c = x.shape[1:]
    rows = layers.Permute((2, 1), name="caffe_channels_first")(layers.Reshape((h * w, c), name="caffe_pixels")(x))
    picked = [layers.Cropping1D((c - 1 - i, i), name=f"caffe_take_{'bgr'[i]}")(rows) for i in range(c)]
    bgr = layers.Concatenate(axis=1, name="caffe_bgr")(picked)
    x = layers.Reshape((h, w, c), name="caffe_image")(layers.Permute((2, 1), name="caffe_channels_last")(bgr))
    return layers.Rescaling(255.0, offset=[-m for m in CAFFE_MEAN_BGR], dtype="float32", name="caffe_preprocess")(x)


def _resnet_head_builder(application: str, weights_file: str):
    """model5/model6: a Keras ResNet base (no top) → MaxPool 2 → Flatten → Dense 1024 → Dense N.
With pretrained ``weights``, the base's input is first converted as its weights expect
(``caffe_preprocess``).

    The seed's slide names only the pool and the output Dense, but its parameter counts are met
    only with a Dense 1024 between them (both differ from the bare base by 2048·1024+1024 +
    1024·200+200 = 2,303,176), so the Dense 1024 is part of the architecture here.
    """

    def build(keras, inputs, num_classes, weights="none", freeze_base=False, **_):
        base_cls = getattr(keras.applications, application)
        resolved = resolve_weights(weights, application, weights_file)
        try:
            base = base_cls(include_top=False, weights=resolved, input_shape=tuple(inputs.shape[1:]))
        except Exception as e:  # keras' get_file wraps URL errors in a bare Exception
            if resolved == "imagenet":
                raise TinyrayError(
                    f"could not download the ImageNet weights for {application} "
                    f"(offline?): {WEIGHTS_HELP}"
                ) from e
            if isinstance(e, (OSError, ValueError)):
                raise TinyrayError(
                    f"{weights!r} is not a {application} weights file ({_first_line(e)}): {WEIGHTS_HELP}"
                ) from e
            raise
        # The base stays one nested layer (named resnet50 / resnet101), so its weights can be
        # saved on their own and given back as ``weights=`` to another model of the same kind.
        base.trainable = not freeze_base
        # Pretrained weights see what they were trained on; from scratch, the seed's ÷255 as it is.
        x = caffe_preprocess(keras, inputs) if resolved else inputs
        x = base(x, training=False if freeze_base else None)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(1024, activation="relu")(x)
        return _output(keras, x, num_classes)

    build.__doc__ = _resnet_head_builder.__doc__
    return build


def _build_resnet18(keras, inputs, num_classes, **_):
    """ResNet-18 for 64x64 inputs: 3x3 stride-1 stem and no stem max-pool (a 7x7/2 stem plus
    pool would shrink 64x64 to 16x16 before the first block), four stages of two basic blocks
    (64, 128, 256, 512 filters), global average pooling, Dense N."""
    layers = keras.layers

    def conv_bn(x, filters, stride, relu=True):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    x = conv_bn(inputs, 64, 1)
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if (stage > 0 and block == 0) else 1
            shortcut = x
            if stride != 1 or x.shape[-1] != filters:
                shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x)
                shortcut = layers.BatchNormalization()(shortcut)
            y = conv_bn(x, filters, stride)
            y = conv_bn(y, filters, 1, relu=False)
            x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    return _output(keras, x, num_classes)


def _build_tinycnn(keras, inputs, num_classes, **_):
    """Three small convs and global average pooling: for smoke runs and tests, where the
    seed's 13M-45M-parameter models would spend their time in all-reduce on 2 CPUs."""
    x = inputs
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return _output(keras, x, num_classes)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("model1", "seed: 1 conv (32) + Dense 1024", 31_696_968, _build_model1,
                  SeedResult(40.84, 22.07, 31_696_968, 9 * 60 + 12.1)),
        ModelSpec("model2", "seed: 2 convs (32, 64) + Dense 1024", 13_070_472, _build_model2,
                  SeedResult(34.94, 25.40, 13_070_472, 7 * 60 + 58.81)),
        ModelSpec("model3", "seed: 5 VGG-style blocks with BN + Dense 4096/1024", 15_145_992,
                  _build_model3, SeedResult(84.26, 39.54, 15_145_992, 50 * 60 + 54)),
        ModelSpec("model4", "seed: 5 convs, BN, Dense 1024/512 with Dropout 0.5", 18_404_232,
                  _build_model4, SeedResult(60.89, 42.40, 18_404_232, 37 * 60 + 26.42), head_inputs=512),
        ModelSpec("model5", "seed: ResNet50 base + MaxPool + Dense 1024", 25_890_888,
                  _resnet_head_builder("ResNet50",
                                       "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                  SeedResult(85.86, 55.13, 25_890_888, 55 * 60 + 20.05), has_base=True),
        ModelSpec("model6", "seed: ResNet101 base + MaxPool + Dense 1024", 44_961_352,
                  _resnet_head_builder("ResNet101", "resnet101_weights_tf_dims_ordering_tf_kernels_notop.h5"),
                  SeedResult(87.94, 55.12, 44_961_352, 3600 + 31 * 60 + 3.4), has_base=True),
        ModelSpec("resnet18", "ResNet-18 for 64x64 (3x3 stem, no pool), from scratch",
                  11_281_032, _build_resnet18, head_inputs=512),
        ModelSpec("tinycnn", "3 small convs + global average pool (smoke runs, tests)", 36_584,
                  _build_tinycnn, head_inputs=64),
    )
}
SEED_MODELS = tuple(name for name, spec in REGISTRY.items() if spec.seed is not None)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; an unknown name is an error that lists the valid ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise TinyrayError(
            f"unknown model {name!r}; valid models: {', '.join(REGISTRY)}"
        ) from None


def check_model_names(names) -> list[str]:
    """Validate a list of model names up front (before any worker starts)."""
    return [get_spec(n).name for n in names]


def create_model(
    name: str,
    num_classes: int = NUM_CLASSES,
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    weights: str = "none",
    freeze_base: bool = False,
):
    """Build the registered model ``name`` (uncompiled, random init unless ``weights`` says).

    ``weights`` and ``freeze_base`` apply to models with a pretrained base (model5, model6):
    ``weights`` is ``none``, ``imagenet`` (Keras downloads it; needs the internet), or a local
    path / ``s3://`` URI of a weights file for the base; ``freeze_base`` trains the head only.
    """
    from tinyray.tfk import keras

    spec = get_spec(name)
    if num_classes < 2:
        raise TinyrayError(f"num_classes must be at least 2, got {num_classes}")
    if not spec.has_base and (weights not in (None, "none") or freeze_base):
        raise TinyrayError(
            f"model {name!r} has no pretrained base; weights= and freeze_base= apply to "
            f"{', '.join(n for n, s in REGISTRY.items() if s.has_base)}"
        )
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    outputs = spec.build(keras, inputs, num_classes, weights=weights, freeze_base=freeze_base)
    return keras.Model(inputs, outputs, name=name)


def resolve_weights(weights: str | None, application: str, weights_file: str) -> str | None:
    """Map the user's ``weights`` value to what keras.applications accepts: None, 'imagenet' or
    a local file path. s3:// URIs are fetched to a local cache first."""
    if weights in (None, "none", ""):
        return None
    if weights == "imagenet":
        return "imagenet"
    if weights.startswith("s3://"):
        from tinyray.data.storage import fetch_to_cache

        return fetch_to_cache(weights)
    if "://" in weights:
        raise TinyrayError(f"weights {weights!r}: use a local path or an s3:// URI ({WEIGHTS_HELP})")
    if not os.path.isfile(weights):
        raise TinyrayError(
            f"weights file {weights!r} does not exist; {WEIGHTS_HELP} "
            f"(the {application} one is {weights_file})"
        )
    return weights


# ----------------------------------------------------------------------- model files from outside


def _layer_classes(node: dict):
    """Every layer's class name in a .keras config, nested models included."""
    yield node.get("class_name")
    for layer in (node.get("config") or {}).get("layers") or []:
        yield from _layer_classes(layer)


def _modules(node):
    """Every ``module`` a .keras config names: Keras imports each one to find a class."""
    if isinstance(node, dict):
        if isinstance(node.get("module"), str):
            yield node["module"]
        for v in node.values():
            yield from _modules(v)
    elif isinstance(node, list):
        for v in node:
            yield from _modules(v)


def loadable_layers(keras) -> set[str]:
    """The layer classes a model file may hold: Keras' own public layers and models, less the
    ones that carry code (Lambda; TFOpLambda is not public)."""
    names = {n for n, c in vars(keras.layers).items() if isinstance(c, type) and issubclass(c, keras.layers.Layer)}
    return (names - {"Lambda"}) | {"Functional", "Sequential", "Model"}


def load_model_file(data: bytes, source: str):
    """A model file from outside (an export, a run folder: anything in a bucket can be rewritten)
    loaded as data, or refused in one line that names it and why. Only the zip ``.keras`` format,
    the one tinyray writes, honours ``safe_mode``: tf-keras loads any other file (HDF5) with its
    legacy loader, where a Lambda layer's code runs on load. Its config is read first: every
    module it names must be Keras' own (Keras imports each), and every layer a built-in one."""
    import io
    import json
    import tempfile
    import zipfile

    from tinyray.tfk import keras

    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise TinyrayError(f"{source} is not a zip .keras model file (tinyray writes only those; another format, "
                           "such as HDF5, would be loaded by a path that runs code the file holds)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            config = json.loads(z.read("config.json"))
    except (KeyError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise TinyrayError(f"{source} is not a readable .keras model file ({_first_line(e)})") from None
    foreign = sorted({m for m in _modules(config)
                      if m not in ("keras", "tf_keras") and not m.startswith(("keras.", "tf_keras."))})
    unknown = sorted({c for c in _layer_classes(config) if c not in loadable_layers(keras)} - {None})
    if foreign or unknown or not isinstance(config, dict):
        what = ", ".join([f"module {m}" for m in foreign] + [f"layer {c}" for c in unknown]) or "no model config"
        raise TinyrayError(f"{source} holds what tinyray does not load from a file: {what} (only Keras' built-in "
                           "layers, and no Lambda: a model file is data, never code)")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as f:
            f.write(data)
        try:
            return keras.models.load_model(path, safe_mode=True, compile=False)
        except Exception as e:  # noqa: BLE001 - a broken file is one line that names it
            raise TinyrayError(f"{source} could not be loaded as a model ({_first_line(e)[:200]})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def describe_models() -> list[dict]:
    """Rows for ``tinyray models``: name, what it is, parameters, the seed's reported ones."""
    return [
        {
            "name": spec.name,
            "description": spec.description,
            "params": spec.params,
            "seed_params": spec.seed.params if spec.seed else None,
            "pretrained_base": spec.has_base,
        }
        for spec in REGISTRY.values()
    ]
