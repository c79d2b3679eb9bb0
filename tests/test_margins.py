"""MarginSoftmax against NumPy formulas written here from the papers (GUIDE §1).

The reference below never calls the layer's helpers: ψ uses np.cos(mθ) directly (the layer
uses the Chebyshev polynomial), cosines come from explicitly normalized vectors (the layer
scales the matmul by inverse norms), and the ArcFace threshold rule is written out.
"""

import math

import keras
import numpy as np
import pytest

from keras_sphereface import MarginSoftmax, UserInputError

pytestmark = pytest.mark.multi_backend

ALL_MODES = (
    "softmax",
    "lsoftmax",
    "sphereface",
    "normface",
    "cosface",
    "arcface",
    "combined",
    "curricularface",
)
FEATURE_DIM, NUM_CLASSES = 3, 7


def reference_logits(mode, x, w, b, y, margin, scale, lam=0.0, t=0.0, easy_margin=False):
    """Logits of GUIDE §1's table, in float64."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    x_norm = np.linalg.norm(x, axis=1)
    w_norm = np.linalg.norm(w, axis=0)
    cos = (x / x_norm[:, None]) @ (w / w_norm[None, :])
    rows = np.arange(len(y))
    cos_y = np.clip(cos[rows, y], -1.0, 1.0)
    theta = np.arccos(cos_y)
    if mode == "softmax":
        return x @ w + b
    if mode == "lsoftmax":
        logits, radius = x @ w, x_norm * w_norm[y]
    elif mode == "sphereface" and scale is None:
        logits, radius = x_norm[:, None] * cos, x_norm
    else:
        logits, radius = scale * cos, np.full(len(y), scale)
    if mode in ("lsoftmax", "sphereface"):
        k = np.floor(margin * theta / np.pi)
        psi = (-1.0) ** k * np.cos(margin * theta) - 2.0 * k
        target = (psi + lam * cos_y) / (1.0 + lam)
    elif mode == "normface":
        target = cos_y
    elif mode == "cosface":
        target = cos_y - margin
    else:
        m1, m2, m3 = margin if mode == "combined" else (1.0, margin, 0.0)
        angle = m1 * theta + m2
        if easy_margin:
            target = np.where(cos_y > 0, np.cos(angle) - m3, cos_y)
        else:
            # past m1θ + m2 = π: cos θ − cos θ_b − 1 − m3, θ_b = (π − m2) / m1
            beyond = cos_y - np.cos((np.pi - m2) / m1) - 1.0 - m3
            target = np.where(angle <= np.pi, np.cos(angle) - m3, beyond)
    if mode == "curricularface":
        hard = cos > target[:, None]
        logits = np.where(hard, scale * cos * (t + cos), logits)
    logits = logits.copy()
    logits[rows, y] = radius * target
    return logits


def problem(seed=0, batch=40):
    """Features at every angle to their class centre, with angle ≈ 0 and ≈ π included."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((FEATURE_DIM, NUM_CLASSES)).astype(np.float32)
    w *= rng.uniform(0.5, 2.0, NUM_CLASSES).astype(np.float32)  # unequal class-centre norms
    b = rng.standard_normal(NUM_CLASSES).astype(np.float32)
    x = (rng.standard_normal((batch, FEATURE_DIM)) * rng.uniform(0.2, 5.0, (batch, 1)))
    y = rng.integers(0, NUM_CLASSES, batch)
    x[0] = 3.0 * w[:, y[0]] + 1e-3  # θ ≈ 0
    x[1] = -2.0 * w[:, y[1]] + 0.02  # θ ≈ π
    return x.astype(np.float32), w, b, y.astype(np.int32)


def built_layer(mode, w, b=None, **kwargs):
    """The layer with kernel w; a "projected" kernel holds columns of norm ρ (its
    centre_norm), so it gets w's directions at that norm (the reference formulas normalize
    w anyway)."""
    layer = MarginSoftmax(w.shape[1], mode=mode, **kwargs)
    layer.build([(None, w.shape[0]), (None,)])
    if layer.weight_normalization == "projected":
        w = w / np.linalg.norm(w, axis=0) * layer.centre_norm
    layer.kernel.assign(w)
    if b is not None and layer.bias is not None:
        layer.bias.assign(b)
    return layer


def loss_and_gradients(layer, x, y):
    """Cross-entropy on the layer's training logits (or the mean of its per-sample losses
    with output_mode="loss") and its gradients w.r.t. (x, kernel)."""
    backend = keras.backend.backend()
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss_fn(y, outputs):
        return keras.ops.mean(outputs) if layer.output_mode == "loss" else cross_entropy(y, outputs)

    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_fn(y, layer([x, y], training=True))
        grad_x, grad_w = tape.gradient(loss, [x, layer.kernel.value])
    elif backend == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]
        kernel_index = next(i for i, v in enumerate(layer.trainable_variables) if v is layer.kernel)

        def loss_of(trainable, x):
            logits, _ = layer.stateless_call(trainable, non_trainable, [x, y], training=True)
            return loss_fn(y, logits)

        loss, (grads, grad_x) = jax.value_and_grad(loss_of, argnums=(0, 1))(trainable, x)
        grad_w = grads[kernel_index]
    elif backend == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        kernel = layer.kernel.value
        kernel.grad = None
        loss = loss_fn(keras.ops.convert_to_tensor(y), layer([x, y], training=True))
        loss.backward()
        grad_x, grad_w = x.grad, kernel.grad
    else:
        pytest.skip(f"no gradient helper for backend {backend}")
    return (
        float(keras.ops.convert_to_numpy(loss)),
        keras.ops.convert_to_numpy(grad_x),
        keras.ops.convert_to_numpy(grad_w),
    )


DEFAULTS = {
    "lsoftmax": (4, None),
    "sphereface": (4, None),
    "normface": (None, 30.0),
    "cosface": (0.35, 64.0),
    "arcface": (0.5, 64.0),
    "combined": ((1.0, 0.3, 0.2), 64.0),
    "curricularface": (0.5, 64.0),
    "softmax": (None, None),
}


NORMALIZED_MODES = tuple(m for m in ALL_MODES if m not in ("softmax", "lsoftmax"))
MODES_AND_WEIGHT_NORMALIZATIONS = [(m, None) for m in ALL_MODES] + [
    (m, "projected") for m in NORMALIZED_MODES
]


@pytest.mark.parametrize("mode, weight_normalization", MODES_AND_WEIGHT_NORMALIZATIONS)
def test_logits_match_numpy_formulas_with_paper_defaults(mode, weight_normalization):
    x, w, b, y = problem()
    margin, scale = DEFAULTS[mode]
    layer = built_layer(mode, w, b, weight_normalization=weight_normalization)
    assert layer.margin == margin and layer.scale == scale
    got = keras.ops.convert_to_numpy(layer([x, y]))
    lam = 1000.0 if mode in ("lsoftmax", "sphereface") else 0.0
    want = reference_logits(mode, x, w, b, y, margin, scale, lam=lam)
    assert got.dtype == np.float32 and got.shape == (len(x), NUM_CLASSES)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * (scale or 1.0))
    # without labels: the plain logits (no margin, no re-weighting)
    plain = keras.ops.convert_to_numpy(layer(x))
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))
    want_plain = {
        "softmax": x @ w + b,
        "lsoftmax": x @ w,
        "sphereface": np.linalg.norm(x, axis=1, keepdims=True) * cos,
    }.get(mode, (scale or 1.0) * cos)
    np.testing.assert_allclose(plain, want_plain, rtol=1e-4, atol=1e-3 * (scale or 1.0))


def test_test_data_reaches_every_psi_branch_and_the_arcface_threshold():
    x, w, _, y = problem()
    cos = np.sum((x / np.linalg.norm(x, axis=1, keepdims=True)) * (w / np.linalg.norm(w, axis=0))[:, y].T, axis=1)
    theta = np.arccos(np.clip(cos, -1, 1))
    assert set(np.floor(4 * theta / np.pi).astype(int)) == {0, 1, 2, 3}
    assert (theta > np.pi - 0.5).any() and (theta < 0.01).any()


@pytest.mark.parametrize(
    "mode, margin, scale, options",
    [
        ("lsoftmax", 2, None, {"lambda_base": 0.0, "lambda_min": 0.0}),
        ("sphereface", 3, None, {"lambda_base": 0.0, "lambda_min": 0.0}),
        ("sphereface", 4, 20.0, {"lambda_base": 0.0, "lambda_min": 0.0}),
        ("cosface", 0.2, 30.0, {}),
        ("arcface", 0.3, 10.0, {}),
        ("arcface", 0.5, 64.0, {"easy_margin": True}),
        ("combined", (0.9, 0.4, 0.15), 32.0, {}),
        ("combined", (1.5, 0.2, 0.1), 16.0, {}),
        ("curricularface", 0.3, 30.0, {"easy_margin": True}),
    ],
)
def test_logits_match_numpy_formulas_with_other_margins(mode, margin, scale, options):
    x, w, b, y = problem(seed=1)
    layer = built_layer(mode, w, margin=margin, scale=scale, **options)
    got = keras.ops.convert_to_numpy(layer([x, y]))
    want = reference_logits(
        mode, x, w, b, y, margin, scale, easy_margin=options.get("easy_margin", False)
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * (scale or 1.0))


def test_labels_of_shape_batch_by_one_and_aliases():
    x, w, b, y = problem()
    for alias, mode in (("a-softmax", "sphereface"), ("AM-Softmax", "cosface")):
        layer = built_layer(alias, w)
        assert layer.mode == mode
        flat = keras.ops.convert_to_numpy(layer([x, y]))
        column = keras.ops.convert_to_numpy(layer([x, y.reshape(-1, 1)]))
        np.testing.assert_array_equal(flat, column)


def test_lambda_anneals_once_per_training_call():
    x, w, b, y = problem()
    options = dict(lambda_base=10.0, lambda_gamma=0.5, lambda_power=2.0, lambda_min=1.0)
    layer = built_layer("sphereface", w, **options)
    for iteration in range(7):
        lam = max(1.0, 10.0 * (1.0 + 0.5 * iteration) ** -2.0)
        assert isinstance(layer.current_lambda(), float)
        assert layer.current_lambda() == pytest.approx(lam, rel=1e-6)
        want = reference_logits("sphereface", x, w, b, y, 4, None, lam=lam)
        # an inference call with labels uses the current λ and does not advance it
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer([x, y])), want, rtol=1e-4, atol=1e-4)
        got = keras.ops.convert_to_numpy(layer([x, y], training=True))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert int(layer.iterations.numpy()) == iteration + 1
    assert layer.current_lambda() == 1.0  # clamped at lambda_min
    assert MarginSoftmax(5).current_lambda() == 1000.0  # Caffe default base, before building
    assert MarginSoftmax(5, mode="arcface").current_lambda() == 0.0


def test_curricularface_t_is_an_ema_of_the_true_cosines():
    x, w, b, y = problem()
    layer = built_layer("curricularface", w)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))
    mean_cos_y = cos[np.arange(len(y)), y].mean()
    t = 0.0
    for _ in range(3):
        t = 0.99 * t + 0.01 * mean_cos_y
        got = keras.ops.convert_to_numpy(layer([x, y], training=True))
        assert float(layer.curricular_t.numpy()) == pytest.approx(t, rel=1e-5)
        want = reference_logits("curricularface", x, w, b, y, 0.5, 64.0, t=t)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-2)
    # inference uses the stored t and leaves it alone
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer([x, y])), want, rtol=1e-4, atol=1e-2)
    assert float(layer.curricular_t.numpy()) == pytest.approx(t, rel=1e-5)
    # the data holds hard negatives, so the re-weighting above was exercised
    theta_y = np.arccos(np.clip(cos[np.arange(len(y)), y], -1, 1))
    hard = cos > np.cos(np.minimum(theta_y + 0.5, np.pi))[:, None]
    hard[np.arange(len(y)), y] = False
    assert hard.any()


@pytest.mark.parametrize("mode", ALL_MODES)
def test_gradients_are_finite_at_edge_angles_and_norms(mode):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 5)).astype(np.float32)
    w[:, 0], w[:, 1] = 1.5 * np.eye(8)[0], 0.7 * np.eye(8)[1]  # cos θ exactly ±1 below
    y = np.array([0, 1, 2, 3, 4, 0], dtype=np.int32)
    x = np.stack(
        [
            w[:, 0] * 2.0,  # θ = 0
            -w[:, 1],  # θ = π
            np.zeros(8),  # zero-norm feature
            rng.standard_normal(8) * 1e4 / np.sqrt(8),  # norm ≈ 1e4
            w[:, 4] * 1e4 / np.linalg.norm(w[:, 4]),  # norm 1e4 at θ = 0
            -w[:, 0] * 1e4 / np.linalg.norm(w[:, 0]),  # norm 1e4 at θ = π
        ]
    ).astype(np.float32)
    layer = built_layer(mode, w)
    loss, grad_x, grad_w = loss_and_gradients(layer, x, y)
    assert np.isfinite(loss)
    assert np.isfinite(grad_x).all() and np.isfinite(grad_w).all()


@pytest.mark.parametrize("mode", ["sphereface", "curricularface", "combined", "softmax"])
def test_keras_file_round_trip_restores_outputs_and_state(mode, tmp_path):
    x, w, b, y = problem()
    features = keras.Input((FEATURE_DIM,), name="features")
    labels = keras.Input((), dtype="int32", name="labels")
    head = MarginSoftmax(NUM_CLASSES, mode=mode, kernel_regularizer="l2", name="head")
    model = keras.Model([features, labels], head([features, labels]))
    for _ in range(3):  # advance λ's iteration counter and CurricularFace's t
        model([x, y], training=True)
    before = keras.ops.convert_to_numpy(model([x, y]))
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    restored_head = restored.get_layer("head")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored([x, y])), before)
    assert int(restored_head.iterations.numpy()) == 3
    assert restored_head.current_lambda() == head.current_lambda()
    assert restored_head.get_config() == head.get_config()


def test_get_config_covers_every_argument():
    layer = MarginSoftmax(
        11,
        mode="combined",
        margin=(0.9, 0.4, 0.1),
        scale=32,
        lambda_base=5,
        lambda_gamma=0.2,
        lambda_power=2,
        lambda_min=1,
        easy_margin=True,
        t_momentum=0.9,
        sample_rate=0.5,
        kernel_initializer="he_normal",
        kernel_regularizer="l2",
        seed=7,
        name="custom",
    )
    clone = MarginSoftmax.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    config = layer.get_config()
    for key in ("num_classes", "mode", "margin", "scale", "lambda_base", "lambda_gamma",
                "lambda_power", "lambda_min", "easy_margin", "t_momentum", "sample_rate",
                "kernel_initializer", "kernel_regularizer", "seed", "name", "dtype"):
        assert key in config
    assert config["margin"] == [0.9, 0.4, 0.1] and config["easy_margin"] is True


def clustered_features(num_classes, count):
    """6-d points around one centre per class; also seeds Keras (Dense init, fit's shuffling)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((num_classes, 6)) * 3.0
    y = rng.integers(0, num_classes, count).astype(np.int32)
    return (centres[y] + rng.standard_normal((count, 6))).astype(np.float32), y


def model_with_head(head):
    """[features (6-d), labels] → Dense(8) → head."""
    features = keras.Input((6,))
    labels = keras.Input((), dtype="int32")
    return keras.Model([features, labels], head([keras.layers.Dense(8)(features), labels]))


@pytest.mark.parametrize("mode", ALL_MODES)
def test_tiny_fit_loss_falls(mode):
    x, y = clustered_features(4, 256)
    model = model_with_head(MarginSoftmax(4, mode=mode, seed=0))
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit([x, y], y, batch_size=32, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], losses
    head = model.layers[-1]
    assert int(head.iterations.numpy()) == 4 * 8  # once per step


@pytest.mark.parametrize("mode, weight_normalization", MODES_AND_WEIGHT_NORMALIZATIONS)
def test_xla_compiled_fit_takes_the_same_steps(mode, weight_normalization):
    """jit_compile=True is Keras' "auto" on a TensorFlow GPU: every op must have an XLA
    kernel there, and the compiled steps must be the uncompiled ones."""
    if keras.backend.backend() == "torch":
        pytest.skip("jit_compile on PyTorch is torch.compile, not XLA")
    x, y = clustered_features(4, 64)
    runs = []
    for jit_compile in (False, True):
        keras.utils.set_random_seed(0)
        head = MarginSoftmax(4, mode=mode, weight_normalization=weight_normalization, seed=0)
        model = model_with_head(head)
        model.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        losses = model.fit([x, y], y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        runs.append((losses.history["loss"], keras.ops.convert_to_numpy(head.kernel)))
    (eager_losses, eager_kernel), (xla_losses, xla_kernel) = runs
    np.testing.assert_allclose(xla_losses, eager_losses, rtol=1e-4)
    np.testing.assert_allclose(xla_kernel, eager_kernel, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("initializer", ["glorot_uniform", "random_normal"])
def test_projected_kernel_keeps_the_initializers_norm_through_fit_and_loading(
    initializer, tmp_path
):
    x, y = clustered_features(4, 256)
    if initializer == "glorot_uniform":  # Var = 2 / (fan_in + fan_out): E‖W_c‖² = 8 · 2 / 12
        initializer = keras.initializers.GlorotUniform(seed=3)
        rho = np.sqrt(8 * 2 / (8 + 4))
    else:  # no formula: the RMS column norm of the (seeded, so repeatable) draw
        initializer = keras.initializers.RandomNormal(stddev=0.05, seed=3)
        rho = np.sqrt(np.mean(np.sum(keras.ops.convert_to_numpy(initializer((8, 4)))**2, 0)))
    draw = keras.ops.convert_to_numpy(initializer((8, 4))).astype(np.float64)
    head = MarginSoftmax(4, mode="arcface", scale=16.0, weight_normalization="projected",
                         kernel_initializer=initializer, name="head")
    model = model_with_head(head)
    norms = lambda w: np.linalg.norm(keras.ops.convert_to_numpy(w), axis=0)  # noqa: E731
    assert head.centre_norm == pytest.approx(rho, rel=1e-6)
    before = keras.ops.convert_to_numpy(head.kernel).copy()
    np.testing.assert_allclose(before, draw / np.linalg.norm(draw, axis=0) * rho, atol=1e-6)
    model.compile(keras.optimizers.SGD(0.5, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit([x, y], y, batch_size=32, epochs=2, verbose=0)
    after = keras.ops.convert_to_numpy(head.kernel)
    assert np.abs(after - before).max() > 0.05  # it trained
    np.testing.assert_allclose(norms(after), rho, rtol=1e-5)  # the constraint renormalized
    # a kernel saved with other norms comes back projected, with the same logits
    rng = np.random.default_rng(0)
    head.kernel.assign(after * rng.uniform(0.3, 3.0, 4).astype(np.float32))
    path = tmp_path / "projected.keras"
    model.save(path)
    restored = keras.saving.load_model(path).get_layer("head")
    assert restored.centre_norm == head.centre_norm
    np.testing.assert_allclose(norms(restored.kernel), rho, rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored.kernel), after, atol=1e-5)
    features = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    head.kernel.assign(after)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(features)), keras.ops.convert_to_numpy(head(features)),
        rtol=1e-5, atol=1e-5,
    )


@pytest.mark.parametrize("mode", ["sphereface", "cosface"])
def test_projected_step_turns_the_centres_as_the_reparametrized_step(mode):
    """At column norm ρ, an SGD step of the projected head (the plain gradient of x·W/ρ, then
    the projection back to norm ρ) turns every class centre as the exact step through W/‖W‖
    does, to first order in the learning rate: the directions after one step differ by
    O(lr²) while each moved by O(lr)."""
    rho = 0.4
    x, w, _, y = problem(seed=4)
    w = (w / np.linalg.norm(w, axis=0) * rho).astype(np.float32)

    def gradient(weight_normalization):
        options = {"centre_norm": rho} if weight_normalization == "projected" else {}
        layer = built_layer(mode, w, weight_normalization=weight_normalization, **options)
        return loss_and_gradients(layer, x, y)[2].astype(np.float64)

    def direction_after_one_step(grad_w, lr):  # SGD without momentum, then unit directions
        stepped = w.astype(np.float64) - lr * grad_w
        return stepped / np.linalg.norm(stepped, axis=0)

    grad_projected, grad_reparametrized = gradient("projected"), gradient("reparametrized")
    relative_error = {}
    for lr in (1e-4, 1e-5):
        reparametrized = direction_after_one_step(grad_reparametrized, lr)
        moved = np.abs(reparametrized - w / rho).max()
        assert moved > 1e-5
        differ = np.abs(direction_after_one_step(grad_projected, lr) - reparametrized).max()
        relative_error[lr] = differ / moved
    assert relative_error[1e-5] < 1e-2
    assert relative_error[1e-5] < relative_error[1e-4] / 5  # first order: it falls with lr


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_gives_float32_logits(policy):
    x, w, b, y = problem()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        layer = built_layer("arcface", w)
        dense = keras.layers.Dense(FEATURE_DIM, kernel_initializer="identity")
        half_features = dense(x)  # features in the policy's compute dtype
        assert keras.backend.standardize_dtype(half_features.dtype) == policy.split("_")[1]
        logits = layer([half_features, y])
    finally:
        keras.config.set_dtype_policy(previous)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert layer.compute_dtype == "float32" and layer.kernel.dtype == "float32"
    x_rounded = keras.ops.convert_to_numpy(keras.ops.cast(half_features, "float32"))
    want = reference_logits("arcface", x_rounded, w, b, y, 0.5, 64.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), want, rtol=1e-4, atol=0.1)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"mode": "largemargin"}, "'sphereface'"),
        ({"mode": "sphereface", "margin": 2.5}, "integer margin"),
        ({"mode": "lsoftmax", "margin": 0}, "integer margin"),
        ({"mode": "cosface", "margin": -0.1}, "margin m in"),
        ({"mode": "arcface", "margin": 4.0}, "margin m in"),
        ({"mode": "combined", "margin": (1.0, 0.3)}, "(m1, m2, m3)"),
        ({"mode": "combined", "margin": (1.0, -0.3, 0.0)}, "(m1, m2, m3)"),
        ({"mode": "normface", "margin": 0.3}, "margin=None"),
        ({"mode": "softmax", "scale": 30.0}, "scale=None"),
        ({"mode": "cosface", "scale": 0.0}, "scale"),
        ({"mode": "cosface", "easy_margin": True}, "easy_margin"),
        ({"mode": "arcface", "sample_rate": 0.0}, "sample_rate"),
        ({"mode": "sphereface", "lambda_min": -1}, "lambda_min"),
    ],
)
def test_invalid_arguments_say_what_is_expected_and_received(kwargs, fragment):
    with pytest.raises(UserInputError, match="Expected") as info:
        MarginSoftmax(10, **kwargs)
    message = str(info.value)
    assert fragment in message and "Received" in message
    assert isinstance(info.value, ValueError)


def test_margin_function_for_plots():
    cos = np.linspace(-1.0, 1.0, 201).astype(np.float32)
    theta = np.arccos(cos.astype(np.float64))
    arc = MarginSoftmax(3, mode="arcface", margin=0.5)
    got = keras.ops.convert_to_numpy(arc.margin_function(cos))
    want = np.where(theta + 0.5 <= np.pi, np.cos(theta + 0.5), cos + math.cos(0.5) - 1.0)
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert np.all(np.diff(got) >= -1e-6)  # monotone in cos θ: the threshold rule keeps it so
    sphere = MarginSoftmax(3, mode="sphereface")
    psi = keras.ops.convert_to_numpy(sphere.margin_function(cos, lambda_value=0.0))
    assert np.all(np.diff(psi) >= -1e-5)  # ψ decreases with θ on [0, π]
    np.testing.assert_allclose(psi[[0, -1]], [-7.0, 1.0], atol=1e-3)


# ---------------------------------------------------------------------- Partial FC (issue 9)
def test_partial_fc_rate_one_is_exactly_the_full_layer():
    x, w, b, y = problem()
    full = built_layer("arcface", w)
    partial = built_layer("arcface", w, sample_rate=1.0)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(partial([x, y], training=True)),
        keras.ops.convert_to_numpy(full([x, y], training=True)),
    )
    # a rate whose ceil(r·C) is C goes through the sampling code and keeps every class
    sampled_all = built_layer("arcface", w, sample_rate=0.95, seed=1)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(sampled_all([x, y], training=True)),
        keras.ops.convert_to_numpy(full([x, y], training=True)),
        rtol=1e-6,
        atol=1e-5,
    )


@pytest.mark.parametrize("mode", ["sphereface", "cosface", "curricularface", "softmax"])
def test_partial_fc_keeps_positives_and_samples_the_rest(mode):
    rng = np.random.default_rng(4)
    num_classes, batch = 60, 8
    w = rng.standard_normal((5, num_classes)).astype(np.float32)
    b = rng.standard_normal(num_classes).astype(np.float32)
    y = rng.integers(0, num_classes, batch).astype(np.int32)
    x = rng.standard_normal((batch, 5)).astype(np.float32)
    full = built_layer(mode, w, b)
    partial = built_layer(mode, w, b, sample_rate=0.25, seed=3)
    sampled_sets = set()
    for _ in range(3):  # both layers advance λ (sphereface) and t (curricularface) alike
        want_full = keras.ops.convert_to_numpy(full([x, y], training=True))
        got = keras.ops.convert_to_numpy(partial([x, y], training=True))
        sampled = np.flatnonzero(got[0] > -1e8)
        assert len(sampled) == math.ceil(0.25 * num_classes)
        assert (got[:, sampled] > -1e8).all() and (got[:, np.setdiff1d(np.arange(60), sampled)] == -1e9).all()
        assert set(y) <= set(sampled)  # every positive class centre is used
        np.testing.assert_allclose(got[:, sampled], want_full[:, sampled], rtol=1e-5, atol=1e-4)
        sampled_sets.add(tuple(sampled))
    assert len(sampled_sets) > 1  # negatives are re-drawn every step
    # inference calls see every class
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(partial([x, y])), keras.ops.convert_to_numpy(full([x, y])),
        rtol=1e-6, atol=1e-5,
    )


def test_partial_fc_gradient_and_sgd_update_touch_only_sampled_class_centres():
    rng = np.random.default_rng(5)
    num_classes, batch = 200, 32
    y = rng.integers(0, num_classes, batch).astype(np.int32)
    x = rng.standard_normal((batch, 6)).astype(np.float32)
    w = rng.standard_normal((6, num_classes)).astype(np.float32)
    layer = built_layer("cosface", w, sample_rate=0.05, seed=0)
    loss, _, grad_w = loss_and_gradients(layer, x, y)
    touched = np.flatnonzero(np.abs(grad_w).sum(axis=0) > 0)
    assert set(y) <= set(touched) and len(touched) <= batch  # max(ceil(0.05·200), 32) sampled
    # through model.fit (TensorFlow: unknown batch size in the graph), plain SGD
    features = keras.Input((6,))
    labels = keras.Input((), dtype="int32")
    head = MarginSoftmax(num_classes, mode="cosface", sample_rate=0.05, seed=0)
    model = keras.Model([features, labels], head([features, labels]))
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = head.kernel.numpy().copy()
    model.fit([x, y], y, batch_size=batch, epochs=1, verbose=0)
    changed = np.flatnonzero(np.any(head.kernel.numpy() != before, axis=0))
    assert set(y) <= set(changed) and len(changed) == batch


@pytest.mark.parametrize(
    "mode, weight_normalization",
    [(m, wn) for m in ("normface", "sphereface", "arcface", "curricularface")
     for wn in ("projected", "reparametrized")] + [("lsoftmax", None)],
)
def test_gradients_equal_autodiff_of_the_plain_normalized_formula(mode, weight_normalization):
    """The layer's hand-written gradients against the backend's autodiff of the formula.

    "reparametrized": the exact gradient through W / ‖W‖ (unequal column norms).
    "projected": the kernel holds columns of norm ρ (0.5 here) and its gradient is the
    formula's with ‖W‖ held constant (the radial part stays in; the constraint's
    renormalization removes it after the optimizer step), so it differs from the exact one."""
    x, w, b, y = problem(seed=6)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))
    theta = np.arccos(np.clip(cos[np.arange(len(y)), y], -1, 1))
    inside = (theta > 0.05) & (theta < np.pi - 0.6)  # away from the clip and the θ_b rule
    x, y = x[inside], y[inside]
    projected = weight_normalization == "projected"
    options = {"weight_normalization": weight_normalization}
    if projected:
        w = w / np.linalg.norm(w, axis=0) * 0.5
        options["centre_norm"] = 0.5
    layer = built_layer(mode, w, **options)
    _, grad_x, grad_w = loss_and_gradients(layer, x, y)
    ops = keras.ops
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    margin, scale = DEFAULTS[mode]

    def plain_loss(x, w):
        w_norm = ops.sqrt(ops.sum(w * w, axis=0, keepdims=True))
        if projected:
            w_norm = ops.stop_gradient(w_norm)
        x_norm = ops.sqrt(ops.sum(x * x, axis=1, keepdims=True))
        cos = ops.matmul(x / x_norm, w / w_norm)
        one_hot = ops.one_hot(y, NUM_CLASSES)
        cos_y = ops.sum(cos * one_hot, axis=1, keepdims=True)
        if mode == "normface":
            target = cos_y
        elif mode in ("arcface", "curricularface"):
            target = ops.cos(ops.arccos(ops.clip(cos_y, -1 + 1e-7, 1 - 1e-7)) + margin)
        else:  # λ = 1000 at iteration 0: (ψ + λ cos) / (1 + λ), ψ by Chebyshev for m = 4
            theta = ops.arccos(ops.clip(cos_y, -1 + 1e-7, 1 - 1e-7))
            k = ops.floor(4 * theta / np.pi)
            psi = (1 - 2 * (k % 2)) * (8 * cos_y**4 - 8 * cos_y**2 + 1) - 2 * k
            target = (psi + 1000.0 * cos_y) / 1001.0
        if mode == "curricularface":  # t after the first step: 0.01 · mean cos θ_y, no gradient
            t = 0.01 * ops.mean(ops.stop_gradient(cos_y))
            cos = ops.where(cos > ops.stop_gradient(target), cos * (t + cos), cos)
        radius = {"lsoftmax": x_norm * w_norm, "sphereface": x_norm}.get(mode, scale)
        logits = radius * ops.where(one_hot > 0, target, cos)
        return loss_fn(y, logits)

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        xt, wt = tf.constant(x), tf.constant(w)
        with tf.GradientTape() as tape:
            tape.watch([xt, wt])
            loss = plain_loss(xt, wt)
        want_x, want_w = tape.gradient(loss, [xt, wt])
    elif keras.backend.backend() == "jax":
        import jax

        want_x, want_w = jax.grad(plain_loss, argnums=(0, 1))(x, w)
    else:  # PyTorch: the layer has no hand-written gradient there (autograd), still compared
        import torch

        xt = torch.tensor(x, requires_grad=True)
        wt = torch.tensor(w, requires_grad=True)
        plain_loss(xt, wt).backward()
        want_x, want_w = xt.grad, wt.grad
    np.testing.assert_allclose(grad_x, ops.convert_to_numpy(want_x), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(grad_w, ops.convert_to_numpy(want_w), rtol=1e-3, atol=1e-5)
    if projected:  # the radial part is really there: the kernel gradient is not tangential
        radial = np.abs(np.sum(grad_w * w, axis=0))
        assert radial.max() > 1e-3 * np.abs(grad_w).max()


# ---------------------------------------------------------------------- output_mode="loss" (issue 9)
def numpy_cross_entropy(logits, y):
    logits = logits.astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return log_sum - logits[np.arange(len(y)), y]


@pytest.mark.parametrize("mode", ["sphereface", "arcface", "curricularface", "softmax"])
def test_loss_output_is_the_cross_entropy_of_the_margin_logits(mode):
    x, w, b, y = problem()
    margin, scale = DEFAULTS[mode]
    layer = built_layer(mode, w, b, output_mode="loss")
    got = keras.ops.convert_to_numpy(layer([x, y]))
    lam = 1000.0 if mode == "sphereface" else 0.0
    want = numpy_cross_entropy(reference_logits(mode, x, w, b, y, margin, scale, lam=lam), y)
    assert got.shape == (len(x),)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    # inference without labels still gives the (batch, classes) logits
    assert keras.ops.convert_to_numpy(layer(x)).shape == (len(x), NUM_CLASSES)


@pytest.mark.parametrize("mode", ["cosface", "sphereface"])
def test_partial_fc_loss_output_equals_the_masked_logits_path(mode):
    """Same seed, same sampled classes: output_mode="loss" gives the cross-entropy of the
    (batch, classes) logits with −1e9 outside the sample, and the same gradients."""
    rng = np.random.default_rng(7)
    num_classes, batch = 80, 12
    w = rng.standard_normal((5, num_classes)).astype(np.float32)
    y = rng.integers(0, num_classes, batch).astype(np.int32)
    x = rng.standard_normal((batch, 5)).astype(np.float32)
    as_logits = built_layer(mode, w, sample_rate=0.3, seed=5)
    as_loss = built_layer(mode, w, sample_rate=0.3, seed=5, output_mode="loss")
    logits = keras.ops.convert_to_numpy(as_logits([x, y], training=True))
    losses = keras.ops.convert_to_numpy(as_loss([x, y], training=True))
    assert (logits == -1e9).any(axis=1).all()  # the sample really left classes out
    np.testing.assert_allclose(losses, numpy_cross_entropy(logits, y), rtol=1e-4, atol=1e-4)
    # the next step samples again, identically in both layers; gradients agree
    loss_a, grad_x_a, grad_w_a = loss_and_gradients(as_logits, x, y)
    loss_b, grad_x_b, grad_w_b = loss_and_gradients(as_loss, x, y)
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5)
    np.testing.assert_allclose(grad_x_b, grad_x_a, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_w_b, grad_w_a, rtol=1e-4, atol=1e-6)


def test_loss_output_trains_with_precomputed_loss_and_round_trips(tmp_path):
    from keras_sphereface.margins import precomputed_loss

    x, y = clustered_features(40, 512)
    head = MarginSoftmax(40, mode="cosface", scale=16.0, sample_rate=0.25, seed=0,
                         output_mode="loss", name="head")
    model = model_with_head(head)
    assert tuple(model.output.shape) == (None,)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=precomputed_loss)
    history = model.fit([x, y], y, batch_size=32, epochs=4, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0], history.history
    path = tmp_path / "partial_fc.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored([x[:16], y[:16]])),
        keras.ops.convert_to_numpy(model([x[:16], y[:16]])),
        rtol=1e-6,
    )
    assert restored.get_layer("head").get_config() == head.get_config()


def test_partial_fc_loss_output_memory_scales_with_the_sample():
    """XLA's own accounting of the compiled loss + gradient (JAX): with output_mode="loss" the
    temporaries hold (batch, sampled) logits, not (batch, classes) ones."""
    if keras.backend.backend() != "jax":
        pytest.skip("XLA memory analysis of a jitted step: JAX backend")
    import jax

    num_classes, batch, dim = 20_000, 256, 8
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, dim)).astype(np.float32)
    y = rng.integers(0, num_classes, batch).astype(np.int32)

    def temporary_bytes(**options):
        layer = MarginSoftmax(num_classes, mode="cosface", seed=0, **options)
        layer.build([(None, dim), (None,)])
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss_of(trainable, x):
            outputs, _ = layer.stateless_call(trainable, non_trainable, [x, y], training=True)
            return keras.ops.mean(outputs) if layer.output_mode == "loss" else loss_fn(y, outputs)

        trainable = [v.value for v in layer.trainable_variables]
        compiled = jax.jit(jax.grad(loss_of)).lower(trainable, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    masked = temporary_bytes(sample_rate=0.05)
    sampled = temporary_bytes(sample_rate=0.05, output_mode="loss")
    full = temporary_bytes()
    logits_bytes = batch * num_classes * 4
    assert masked >= logits_bytes and full >= logits_bytes  # (batch, classes) buffers
    assert sampled < 0.25 * logits_bytes, (sampled, masked, full)


def test_invalid_output_and_weight_normalization_are_refused():
    with pytest.raises(UserInputError, match="Expected output_mode") as info:
        MarginSoftmax(10, output_mode="probabilities")
    assert "Received: output_mode='probabilities'" in str(info.value)
    with pytest.raises(UserInputError, match="weight_normalization=None for mode 'softmax'"):
        MarginSoftmax(10, mode="softmax", weight_normalization="projected")
    with pytest.raises(UserInputError, match="Received: weight_normalization='unit'"):
        MarginSoftmax(10, mode="cosface", weight_normalization="unit")
    with pytest.raises(UserInputError, match="centre_norm=None unless weight_normalization="):
        MarginSoftmax(10, mode="cosface", weight_normalization="reparametrized", centre_norm=1.0)
    with pytest.raises(UserInputError, match="centre_norm=None unless"):
        MarginSoftmax(10, mode="lsoftmax", centre_norm=1.0)
    for bad in (0.0, -1.0, float("nan"), "1"):
        with pytest.raises(UserInputError, match="finite number > 0. Received: centre_norm="):
            MarginSoftmax(10, mode="cosface", weight_normalization="projected", centre_norm=bad)
