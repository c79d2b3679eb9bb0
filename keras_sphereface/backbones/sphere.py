"""Sphere-N backbones of SphereFace (Liu et al., CVPR 2017, Table 2).

Input: an aligned face, RGB, pixel values 0..255 (uint8 or float) of `input_shape`
(112×96 as in the paper, or 112×112). The model scales it itself, (x − 127.5) / 128, so an
exported model takes raw aligned pixels. Four stages of 64, 128, 256, 512 channels; each
starts with a 3×3 stride-2 convolution (zero padding 1, as in Caffe/PyTorch) + PReLU and
continues with `n` residual units x + PReLU(conv(PReLU(conv(x)))) at stride 1. Then
flatten (7×6×512 at 112×96) and the fully connected "fc5" to the embedding. No batch norm,
as in the paper; `batch_norm=True` gives the variant of OpenSphere's SFNet (Wen et al.,
SphereFace Revived 2022): every convolution without bias and followed by batch norm before its
PReLU, and fc5 followed by a batch norm of the embedding ("fc5_bn").

Choices, all documented here:

* Channel order: RGB end to end. The original Caffe release feeds BGR, which only matters
  when importing its weights; every model of this package is trained from RGB pixels, so
  the model does not reorder channels.
* Initialization as in the original prototxt: Caffe's "xavier" filler (uniform
  ±sqrt(3 / fan_in), LeCun-uniform in Keras terms, not Glorot's fan average) for the
  stride-2 convolutions and fc5; Gaussian σ = 0.01 with zero bias for the residual convs.
  Caffe freezes those zero biases (lr_mult 0); here they are trainable, as in the PyTorch
  ports, so the model stays made of stock Keras layers (a frozen single weight does not
  survive a `.keras` round trip without a custom layer). The parameter count is the same.
* fc5 has a zero-initialized bias, as in the original (it is part of the paper's parameter
  counts: sphere20 22,670,656 at 112×96 with a 512-d embedding).
* PReLU: one slope per channel (`shared_axes=[1, 2]`), initial 0.25.
* The embedding is returned in float32 even under a mixed-precision `dtype`.

The stage outputs are reachable by layer name (`stage1` … `stage4`, `features` for the
flattened map before fc5) for a features/head split:
`keras.Model(model.input, model.get_layer("features").output)`.
"""

import keras

STAGE_WIDTHS = (64, 128, 256, 512)

UNITS_PER_STAGE = {
    "sphere4": (0, 0, 0, 0),
    "sphere10": (0, 1, 2, 0),
    "sphere20": (1, 2, 4, 1),
    "sphere36": (2, 4, 8, 2),
    "sphere64": (3, 8, 16, 3),
}

SUPPORTED_INPUT_SHAPES = ((112, 96, 3), (112, 112, 3))


def _caffe_xavier():
    """Caffe's "xavier" filler: U(−a, a) with a = sqrt(3 / fan_in)."""
    return keras.initializers.VarianceScaling(scale=1.0, mode="fan_in", distribution="uniform")


def _prelu(name, dtype):
    return keras.layers.PReLU(
        alpha_initializer=keras.initializers.Constant(0.25),
        shared_axes=[1, 2],
        dtype=dtype,
        name=name,
    )


def _conv3x3(x, filters, strides, kernel_initializer, name, prelu_name, batch_norm, dtype):
    """conv3x3 `name` (+ batch norm `name`_bn) + PReLU `prelu_name`."""
    x = keras.layers.Conv2D(
        filters,
        3,
        strides=strides,
        padding="valid" if strides == 2 else "same",
        kernel_initializer=kernel_initializer,
        use_bias=not batch_norm,
        dtype=dtype,
        name=name,
    )(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(dtype=dtype, name=f"{name}_bn")(x)
    return _prelu(prelu_name, dtype)(x)


def scaled_widths(width_multiplier):
    """Channel widths of the four stages, `round(width × multiplier)`, at least 1."""
    if not width_multiplier > 0:
        raise ValueError(f"Expected width_multiplier > 0. Received: {width_multiplier}")
    return tuple(max(1, int(round(width * width_multiplier))) for width in STAGE_WIDTHS)


def sphere_net(
    units_per_stage,
    input_shape=(112, 96, 3),
    embedding_dim=512,
    width_multiplier=1.0,
    batch_norm=False,
    dtype=None,
    name="sphere_net",
):
    """Sphere network with `units_per_stage` residual units in each of the four stages.

    Returns a functional `keras.Model` mapping RGB pixels 0..255, shape (batch, *input_shape),
    to an un-normalized float32 embedding (batch, embedding_dim). `batch_norm`: the SFNet
    variant with batch norm after every convolution and after fc5 (see the module docstring).
    """
    if not isinstance(batch_norm, bool):
        raise ValueError(f"Expected batch_norm True or False. Received: {batch_norm!r}")
    input_shape = tuple(int(v) for v in input_shape)
    if input_shape not in SUPPORTED_INPUT_SHAPES:
        raise ValueError(
            f"Expected input_shape in {SUPPORTED_INPUT_SHAPES} (height, width, channels). "
            f"Received: {input_shape}"
        )
    if len(units_per_stage) != len(STAGE_WIDTHS):
        raise ValueError(f"Expected 4 stages of units. Received: {units_per_stage}")
    embedding_dim = int(embedding_dim)
    if embedding_dim < 1:
        raise ValueError(f"Expected embedding_dim >= 1. Received: {embedding_dim}")

    images = keras.Input(shape=input_shape, name="images")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.5 / 128.0, dtype=dtype, name="preprocess")(
        images
    )
    for stage, (width, units) in enumerate(
        zip(scaled_widths(width_multiplier), units_per_stage), start=1
    ):
        prefix = f"stage{stage}"
        x = keras.layers.ZeroPadding2D(1, dtype=dtype, name=f"{prefix}_pad")(x)
        x = _conv3x3(
            x, width, 2, _caffe_xavier(), f"{prefix}_conv", f"{prefix}_prelu", batch_norm, dtype
        )
        for unit in range(1, units + 1):
            block = f"{prefix}_unit{unit}"
            y = x
            for conv in (1, 2):
                y = _conv3x3(
                    y,
                    width,
                    1,
                    keras.initializers.RandomNormal(stddev=0.01),
                    f"{block}_conv{conv}",
                    f"{block}_prelu{conv}",
                    batch_norm,
                    dtype,
                )
            x = keras.layers.Add(dtype=dtype, name=f"{block}_add")([x, y])
        x = keras.layers.Identity(dtype=dtype, name=prefix)(x)
    x = keras.layers.Flatten(dtype=dtype, name="features")(x)
    x = keras.layers.Dense(
        embedding_dim,
        kernel_initializer=_caffe_xavier(),
        use_bias=not batch_norm,
        dtype=dtype,
        name="fc5",
    )(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(dtype=dtype, name="fc5_bn")(x)
    embedding = keras.layers.Activation("linear", dtype="float32", name="embedding")(x)
    return keras.Model(images, embedding, name=name)


def _variant(variant):
    units = UNITS_PER_STAGE[variant]

    def build(
        input_shape=(112, 96, 3),
        embedding_dim=512,
        width_multiplier=1.0,
        batch_norm=False,
        dtype=None,
        name=variant,
    ):
        return sphere_net(
            units,
            input_shape=input_shape,
            embedding_dim=embedding_dim,
            width_multiplier=width_multiplier,
            batch_norm=batch_norm,
            dtype=dtype,
            name=name,
        )

    build.__name__ = variant
    build.__qualname__ = variant
    build.__doc__ = (
        f"{variant}: residual units per stage {units} (SphereFace Table 2); "
        f"arguments as `sphere_net`."
    )
    return build


sphere4 = _variant("sphere4")
sphere10 = _variant("sphere10")
sphere20 = _variant("sphere20")
sphere36 = _variant("sphere36")
sphere64 = _variant("sphere64")
