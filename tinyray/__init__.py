"""tinyray: train and compare image classifiers on Tiny ImageNet on a Ray cluster.

Stages, one module each: ``data`` (release layout, staging, storage, Ray Data pipeline),
``models`` (registry), ``train`` (Ray Train), ``sweep`` (Ray Tune), ``report``, ``cli``.
"""
import os

# tinyray uses tf-keras (Keras 2) everywhere: Keras 3 fails inside MultiWorkerMirroredStrategy's
# fit (keras-team/keras#20585). The variable must be set before TensorFlow is first imported, in
# every process, so it is set here, on importing the package; tinyray/tfk.py is the only module
# that imports TensorFlow/Keras and checks it again.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's C++ start-up chatter (CPU feature notices, cuda probes) buries tinyray's own output.
# A quiet command goes further (console.quiet_driver), unless the user chose a level.
USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
