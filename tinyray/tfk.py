"""The single place tinyray imports TensorFlow and Keras.

Every other module does ``from tinyray.tfk import tf, keras``. Going through here guarantees
``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow loads, so ``keras`` is always tf-keras
(Keras 2), the one that works with MultiWorkerMirroredStrategy.
"""
import os

import tinyray  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

if os.environ.get("TF_USE_LEGACY_KERAS") != "1":  # pragma: no cover - only if a user unset it
    raise RuntimeError("tinyray needs TF_USE_LEGACY_KERAS=1 (tf-keras); it was changed after import")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]
