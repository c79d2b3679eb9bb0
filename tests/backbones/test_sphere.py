"""Sphere-N backbones: parameter counts from the architecture formula, shapes, preprocessing,
initialization and the `.keras` round trip."""

import keras
import numpy as np
import pytest

from keras_sphereface.backbones import get_backbone, list_backbones
from keras_sphereface.errors import UserInputError

UNITS = {
    "sphere4": (0, 0, 0, 0),
    "sphere10": (0, 1, 2, 0),
    "sphere20": (1, 2, 4, 1),
    "sphere36": (2, 4, 8, 2),
    "sphere64": (3, 8, 16, 3),
}


def expected_parameters(
    units, widths=(64, 128, 256, 512), input_hw=(112, 96), embedding_dim=512, batch_norm=False
):
    """SphereFace Table 2 counted by hand: per stage a 3×3 stride-2 conv (+bias) and a per-channel
    PReLU, each residual unit two 3×3 convs (+bias) and two PReLUs; fc5 (+bias) on the flattened map.
    `batch_norm`: no biases, and per conv and after fc5 a batch norm of 4 values a channel
    (γ, β, moving mean and variance)."""
    per_channel = 4 if batch_norm else 1  # the bias, or the batch norm's four
    total, channels_in = 0, 3
    height, width = input_hw
    for channels, n in zip(widths, units):
        total += 9 * channels_in * channels + per_channel * channels + channels
        total += n * 2 * (9 * channels * channels + per_channel * channels + channels)
        height, width = (height + 2 - 3) // 2 + 1, (width + 2 - 3) // 2 + 1
        channels_in = channels
    return total + height * width * channels_in * embedding_dim + per_channel * embedding_dim


def test_formula_matches_the_paper_figures():
    assert expected_parameters(UNITS["sphere20"]) == 22_670_656
    assert expected_parameters(UNITS["sphere64"]) == 48_200_512


def test_registry_lists_every_variant():
    assert list_backbones() == list(UNITS)


@pytest.mark.parametrize("name", list(UNITS))
def test_full_size_parameter_count(name):
    model = get_backbone(name)
    assert model.count_params() == expected_parameters(UNITS[name])
    assert model.output_shape == (None, 512)


@pytest.mark.parametrize("name", list(UNITS))
@pytest.mark.parametrize("input_shape", [(112, 96, 3), (112, 112, 3)])
def test_small_variant_parameter_count(name, input_shape):
    model = get_backbone(name, input_shape=input_shape, width_multiplier=0.125, embedding_dim=32)
    widths = (8, 16, 32, 64)
    assert model.count_params() == expected_parameters(
        UNITS[name], widths, input_shape[:2], embedding_dim=32
    )


@pytest.mark.parametrize("name", list(UNITS))
def test_batch_norm_variant_parameter_count(name):
    model = get_backbone(name, width_multiplier=0.125, embedding_dim=32, batch_norm=True)
    assert model.count_params() == expected_parameters(
        UNITS[name], (8, 16, 32, 64), embedding_dim=32, batch_norm=True
    )


@pytest.mark.multi_backend
def test_batch_norm_variant_layers_and_inference_formula():
    """Every conv and fc5 lose their bias and feed a batch norm (before the PReLU); in inference
    the embedding is γ (fc5(x) − μ) / sqrt(σ² + ε) + β with the moving statistics."""
    model = get_backbone("sphere10", width_multiplier=0.125, embedding_dim=16, batch_norm=True)
    names = [layer.name for layer in model.layers]
    weighted = [
        layer
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    assert len(weighted) == 4 + 2 * 3 + 1
    for layer in weighted:
        assert not layer.use_bias
        following = model.layers[names.index(layer.name) + 1]
        assert isinstance(following, keras.layers.BatchNormalization)
        assert following.name == f"{layer.name}_bn"
        if isinstance(layer, keras.layers.Conv2D):
            assert isinstance(model.layers[names.index(layer.name) + 2], keras.layers.PReLU)
    norm = model.get_layer("fc5_bn")
    rng = np.random.default_rng(0)
    gamma, beta, mean = (rng.normal(size=16) for _ in range(3))
    variance = rng.uniform(0.5, 2.0, 16)
    norm.set_weights([gamma, beta, mean, variance])
    pixels = rng.integers(0, 256, (2, 112, 96, 3)).astype("uint8")
    features = keras.Model(model.input, model.get_layer("features").output)(pixels)
    fc5 = keras.ops.convert_to_numpy(features) @ keras.ops.convert_to_numpy(
        model.get_layer("fc5").kernel
    )
    expected = gamma * (fc5 - mean) / np.sqrt(variance + norm.epsilon) + beta
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(pixels, training=False)), expected, rtol=1e-4, atol=1e-4
    )


@pytest.mark.multi_backend
@pytest.mark.parametrize("input_shape", [(112, 96, 3), (112, 112, 3)])
def test_output_shape(input_shape):
    model = get_backbone("sphere10", input_shape=input_shape, width_multiplier=0.125, embedding_dim=32)
    flattened = model.get_layer("features").output.shape[-1]
    assert flattened == (7 * 6 if input_shape[1] == 96 else 7 * 7) * 64
    output = model(np.zeros((3, *input_shape), "uint8"))
    assert tuple(output.shape) == (3, 32)
    assert keras.backend.standardize_dtype(output.dtype) == "float32"


@pytest.mark.multi_backend
def test_preprocessing_is_inside_the_model():
    model = get_backbone("sphere4", width_multiplier=0.125, embedding_dim=8)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 112, 96, 3)).astype("uint8")
    scaled = keras.Model(model.input, model.get_layer("preprocess").output)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(scaled(pixels)), (pixels.astype("float64") - 127.5) / 128, atol=1e-6
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(pixels)),
        keras.ops.convert_to_numpy(model(pixels.astype("float32"))),
        atol=1e-6,
    )


@pytest.mark.multi_backend
def test_original_initialization():
    keras.utils.set_random_seed(1)
    model = get_backbone("sphere20", width_multiplier=0.25, embedding_dim=64)
    for layer in model.layers:
        if isinstance(layer, keras.layers.PReLU):
            alpha = keras.ops.convert_to_numpy(layer.alpha)
            assert alpha.shape == (1, 1, layer.input.shape[-1])
            np.testing.assert_array_equal(alpha, 0.25)
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.bias), 0.0)
            if "_unit" in layer.name:  # residual conv: N(0, 0.01)
                assert abs(kernel.std() - 0.01) < 0.001
            else:  # Caffe xavier: U(±sqrt(3 / fan_in)), std = 1 / sqrt(fan_in)
                fan_in = np.prod(kernel.shape[:-1])
                assert np.abs(kernel).max() <= np.sqrt(3.0 / fan_in) + 1e-7
                assert abs(kernel.std() * np.sqrt(fan_in) - 1.0) < 0.1
    assert not any("batch_norm" in layer.name for layer in model.layers)


@pytest.mark.multi_backend
def test_stride_two_convs_pad_one_on_each_side():
    """Caffe/PyTorch pad 1 on every side before the stride-2 conv: 112×96 → 56×48 → … → 7×6."""
    model = get_backbone("sphere4", width_multiplier=0.125)
    shapes = [model.get_layer(f"stage{i}").output.shape[1:3] for i in range(1, 5)]
    assert [tuple(s) for s in shapes] == [(56, 48), (28, 24), (14, 12), (7, 6)]
    pad = model.get_layer("stage1_pad")
    assert pad.padding == ((1, 1), (1, 1))


@pytest.mark.multi_backend
@pytest.mark.parametrize("batch_norm", [False, True])
def test_keras_round_trip(tmp_path, batch_norm):
    model = get_backbone(
        "sphere10",
        width_multiplier=0.125,
        embedding_dim=16,
        input_shape=(112, 112, 3),
        batch_norm=batch_norm,
    )
    pixels = np.random.default_rng(1).integers(0, 256, (2, 112, 112, 3)).astype("uint8")
    if batch_norm:  # moving statistics away from their initial values, to be saved too
        for _ in range(3):
            model(pixels, training=True)
    path = tmp_path / "backbone.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.name == "sphere10"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(pixels)), keras.ops.convert_to_numpy(model(pixels)), atol=1e-6
    )


def test_mixed_precision_embedding_is_float32():
    model = get_backbone("sphere4", width_multiplier=0.125, embedding_dim=8, dtype="mixed_bfloat16")
    assert model.get_layer("stage1_conv").compute_dtype == "bfloat16"
    output = model(np.zeros((1, 112, 96, 3), "uint8"))
    assert keras.backend.standardize_dtype(output.dtype) == "float32"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UserInputError, match="sphere20.*Received: 'sphere21'"):
        get_backbone("sphere21")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_shape": (96, 96, 3)}, "input_shape"),
        ({"width_multiplier": 0}, "width_multiplier"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"batch_norm": "yes"}, "batch_norm"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_backbone("sphere4", **kwargs)
