"""The registry: exact parameter counts, forward passes, weights files, errors."""
import numpy as np
import pytest

from tinyray.errors import TinyrayError
from tinyray.models import REGISTRY, SEED_MODELS, create_model

_BUILT = {}


def built(name):
    """Each registered model at the default shape is built once per test session."""
    if name not in _BUILT:
        _BUILT[name] = create_model(name)
    return _BUILT[name]


@pytest.mark.parametrize("name", list(REGISTRY))
def test_parameter_count_is_exactly_the_pinned_one(name):
    assert built(name).count_params() == REGISTRY[name].params


@pytest.mark.parametrize("name", SEED_MODELS)
def test_seed_models_match_the_seed_tables_parameter_count(name):
    # The pin and the seed's own table are separate numbers: both must agree with Keras.
    assert built(name).count_params() == REGISTRY[name].seed.params


def test_seed_model_counts_are_the_six_from_the_study():
    assert {n: REGISTRY[n].seed.params for n in SEED_MODELS} == {
        "model1": 31_696_968, "model2": 13_070_472, "model3": 15_145_992,
        "model4": 18_404_232, "model5": 25_890_888, "model6": 44_961_352,
    }


@pytest.mark.parametrize("name", list(REGISTRY))
def test_forward_pass_gives_probabilities(name):
    model = built(name)
    x = np.random.default_rng(0).random((3, 64, 64, 3), dtype=np.float32)
    probs = model(x, training=False).numpy()
    assert probs.shape == (3, 200)
    assert not np.isnan(probs).any()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert (probs >= 0).all()


@pytest.mark.parametrize("name", ["model2", "resnet18"])
def test_num_classes_and_input_shape_follow_the_arguments(name):
    model = create_model(name, num_classes=7, input_shape=(32, 32, 3))
    out = model(np.zeros((2, 32, 32, 3), np.float32), training=False).numpy()
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_params_for_other_class_counts_is_exact(name):
    assert REGISTRY[name].params_for(7) == create_model(name, num_classes=7).count_params()


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(TinyrayError, match=r"unknown model 'model9'.*model1.*resnet18"):
        create_model("model9")


def test_weights_saved_from_one_model5_load_into_another(tmp_path):
    source = built("model5")
    path = tmp_path / "resnet50_base.h5"
    source.get_layer("resnet50").save_weights(str(path))
    target = create_model("model5", weights=str(path))
    a = source.get_layer("resnet50").get_weights()
    b = target.get_layer("resnet50").get_weights()
    assert len(a) == len(b) > 100
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # ...and a fresh random model differs, so the equality above is the load's doing.
    fresh = create_model("model5").get_layer("resnet50").get_weights()
    assert not all(np.array_equal(x, y) for x, y in zip(a, fresh))


def test_freeze_base_trains_the_head_only():
    model = create_model("model5", freeze_base=True)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 2048 * 1024 + 1024 + 1024 * 200 + 200  # the head, 2,303,176


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(TinyrayError, match=r"does not exist.*s3://.*notop\.h5"):
        create_model("model5", weights=str(tmp_path / "nope.h5"))


def test_weights_file_of_the_wrong_network_is_a_clear_error(tmp_path):
    path = tmp_path / "model2.h5"
    built("model2").save_weights(str(path))
    with pytest.raises(TinyrayError, match=r"is not a ResNet101 weights file"):
        create_model("model6", weights=str(path))


def test_weights_on_a_model_without_a_base_is_refused():
    with pytest.raises(TinyrayError, match="no pretrained base"):
        create_model("model1", weights="imagenet")


@pytest.mark.slow
def test_a_pretrained_base_sees_caffe_preprocessed_pixels_and_a_scratch_one_the_seeds(tmp_path):
    """A real Keras ResNet-50 no-top weights file (as keras.applications saves it; no download
    here): the model takes RGB ÷ 255 like every other, and the base receives what Keras' own
    ``resnet.preprocess_input`` makes of the 0–255 image (BGR, ImageNet mean subtracted)."""
    from tinyray.tfk import keras

    path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3)).save_weights(str(path))
    model = create_model("model5", num_classes=4, weights=str(path))
    assert model.count_params() == REGISTRY["model5"].params_for(4)  # the conversion holds no weights
    reaches_base = keras.Model(model.input, model.get_layer("caffe_preprocess").output)
    # one known pixel, RGB (255, 0, 51): B 51 − 103.939, G 0 − 116.779, R 255 − 123.68
    image = np.zeros((1, 64, 64, 3), np.float32)
    image[0, 5, 9] = np.array([255, 0, 51]) / 255.0
    got = reaches_base.predict(image, verbose=0)
    np.testing.assert_allclose(got[0, 5, 9], [-52.939, -116.779, 131.32], atol=1e-3)
    np.testing.assert_allclose(got[0, 0, 0], [-103.939, -116.779, -123.68], atol=1e-3)
    # every pixel as Keras' own preprocessing has it
    rgb = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype(np.float32)
    expected = keras.applications.resnet.preprocess_input(rgb.copy())
    np.testing.assert_allclose(reaches_base.predict(rgb / 255.0, verbose=0), expected, atol=1e-3)
    # the base's weights are the file's, and the model saved and loaded safely keeps it all
    saved = tmp_path / "m.keras"
    model.save(str(saved))
    loaded = keras.models.load_model(str(saved), safe_mode=True)
    np.testing.assert_allclose(loaded.predict(image, verbose=0), model.predict(image, verbose=0), atol=1e-5)
    # from scratch: the seed's ÷255 goes to the base as it is, no conversion
    assert not [l for l in built("model5").layers if l.name.startswith("caffe")]
