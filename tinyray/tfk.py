"""The single place tinyray imports TensorFlow and Keras.

Every other module does ``from tinyray.tfk import tf, keras``. Going through here guarantees
``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow loads, so ``keras`` is always tf-keras
(Keras 2), the one that works with MultiWorkerMirroredStrategy.
"""
import os

import tinyray  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

if os.environ.get("TF_USE_LEGACY_KERAS") != "1":  # pragma: no cover - only if a user unset it
    raise RuntimeError("tinyray needs TF_USE_LEGACY_KERAS=1 (tf-keras); it was changed after import")



def _quiet_import():
    """TensorFlow's C++ start-up notes (oneDNN, the CUDA probe) are written to stderr before its
    logging is set up, past ``TF_CPP_MIN_LOG_LEVEL``. When tinyray is quiet (``TINYRAY_QUIET``,
    set by tinyray/console.py unless --verbose), stderr is pointed at /dev/null for the import only."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow  # noqa: F401
            import tf_keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


if os.environ.get("TINYRAY_QUIET") == "1":
    _quiet_import()

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]
