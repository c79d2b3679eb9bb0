"""Class-sharded MarginSoftmax (keras_sphereface.distribution) on simulated devices.

The backend and the device count are fixed when Keras / JAX / TensorFlow start, so the
sharded checks run in a fresh Python process (this file, run as a script):
  * JAX: 8 CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8), the model
    built under `margin_softmax_distribution`, compared with the same weights on one device;
  * TensorFlow: `tf.distribute.MirroredStrategy` over 4 logical CPUs (data parallel, W
    replicated: Keras 3 has no class-sharded variables on TensorFlow).
Expected values are the single-device run and a NumPy CosFace loss written here.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from keras_sphereface.distribution import margin_softmax_distribution, memory_per_device
from keras_sphereface.errors import UserInputError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FEATURE_DIM, NUM_CLASSES, BATCH, INPUT_DIM = 16, 64, 16, 8
SCALE, MARGIN = 30.0, 0.35
EIGHT_CPU_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


# ---------------------------------------------------------------- in-process checks
@pytest.mark.multi_backend
def test_memory_per_device_counts_the_class_dependent_buffers():
    sizes = memory_per_device(2_000_000, num_devices=8, batch_size=1024, feature_dim=512)
    per_device_classes = 2_000_000 // 8
    assert sizes["kernel"] == 512 * per_device_classes * 4
    assert sizes["momentum"] == sizes["gradient"] == sizes["kernel"]
    assert sizes["logits"] == 1024 * per_device_classes * 4
    assert sizes["total"] == 3 * sizes["kernel"] + sizes["logits"]
    # Partial FC with output_mode="loss": only the logits shrink, to r·C/N columns
    partial = memory_per_device(2_000_000, 8, 1024, 512, sample_rate=0.1)
    assert partial["logits"] == 1024 * (per_device_classes // 10) * 4
    assert partial["kernel"] == sizes["kernel"] and partial["momentum"] == sizes["momentum"]


@pytest.mark.multi_backend
def test_num_classes_must_split_evenly_over_devices():
    devices = [f"cpu:{i}" for i in range(8)]
    with pytest.raises(UserInputError, match="multiple of the 8 devices.*num_classes=1001"):
        margin_softmax_distribution(1001, devices=devices)
    with pytest.raises(UserInputError, match="at least one device"):
        margin_softmax_distribution(8, devices=[])


def _run_worker(worker, backend, extra_env):
    env = dict(os.environ, KERAS_BACKEND=backend, **extra_env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, __file__, worker],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


@pytest.mark.slow
def test_jax_sharded_kernel_matches_single_device():
    pytest.importorskip("jax")
    out = _run_worker("jax", "jax", EIGHT_CPU_DEVICES)
    assert "jax sharded == single device: sample_rate=1.0, 0.5, 0.5 with output_mode='loss'" in out


@pytest.mark.slow
def test_jax_sharded_head_needs_a_fraction_of_the_memory():
    pytest.importorskip("jax")
    out = _run_worker("jax-memory", "jax", EIGHT_CPU_DEVICES)
    assert "per-device memory of the sharded head <= 1/4 of one device's" in out


@pytest.mark.slow
def test_tf_mirrored_strategy_matches_single_device():
    out = _run_worker("tensorflow", "tensorflow", {})
    assert "tensorflow mirrored == single device" in out


# ---------------------------------------------------------------- shared by both workers
def _data(seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(BATCH, INPUT_DIM)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, size=BATCH).astype("int32")
    return inputs, labels


def _build_model(sample_rate=1.0, output_mode="logits"):
    """inputs → Dense (a stand-in backbone) → MarginSoftmax (CosFace) → logits."""
    import keras

    from keras_sphereface.margins import MarginSoftmax

    inputs = keras.Input((INPUT_DIM,), name="inputs")
    labels = keras.Input((), dtype="int32", name="labels")
    features = keras.layers.Dense(FEATURE_DIM, name="backbone")(inputs)
    logits = MarginSoftmax(
        NUM_CLASSES, mode="cosface", margin=MARGIN, scale=SCALE, sample_rate=sample_rate, seed=7,
        output_mode=output_mode, weight_normalization="projected", centre_norm=1.0,
        name="margin_softmax",
    )([features, labels])
    return keras.Model({"inputs": inputs, "labels": labels}, logits)


def _initial_weights():
    """Fixed weights, so the sharded and the single-device model start equal."""
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(FEATURE_DIM, NUM_CLASSES))
    return {
        "backbone/kernel": rng.normal(size=(INPUT_DIM, FEATURE_DIM)).astype("float32"),
        "backbone/bias": rng.normal(size=(FEATURE_DIM,)).astype("float32"),
        # unit class centres: what a projected head with centre_norm=1 holds
        "margin_softmax/kernel": (kernel / np.linalg.norm(kernel, axis=0)).astype("float32"),
    }


def _set_weights(model):
    weights = _initial_weights()
    for variable in model.trainable_variables:
        variable.assign(weights[variable.path])


def _numpy_cosface_loss(inputs, labels):
    """Mean cross-entropy of s·(cos θ − m·onehot) for the initial weights."""
    w = _initial_weights()
    features = inputs @ w["backbone/kernel"] + w["backbone/bias"]
    kernel = w["margin_softmax/kernel"]
    cos = (features / np.linalg.norm(features, axis=1, keepdims=True)) @ (
        kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    )
    logits = SCALE * (cos - MARGIN * np.eye(NUM_CLASSES)[labels])
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(BATCH), labels].mean()


def _assert_close(name, actual, expected):
    np.testing.assert_allclose(
        np.asarray(actual), np.asarray(expected), rtol=2e-5, atol=2e-6, err_msg=name
    )


# ---------------------------------------------------------------- JAX worker
def _jax_loss_and_gradients(model, inputs, labels):
    """Loss, d loss / d trainable variables and d loss / d features (the backbone output)."""
    import jax
    import keras

    head = model.get_layer("margin_softmax")
    backbone = model.get_layer("backbone")
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def mean_loss(outputs, labels):  # output_mode="loss" already gives per-sample losses
        if head.output_mode == "loss":
            return keras.ops.mean(outputs)
        return keras.ops.mean(
            keras.losses.sparse_categorical_crossentropy(labels, outputs, from_logits=True)
        )

    def model_loss(trainable, inputs, labels):
        outputs, _ = model.stateless_call(
            trainable, non_trainable, {"inputs": inputs, "labels": labels}, training=True
        )
        return mean_loss(outputs, labels)

    def head_loss(features, labels):
        head_state = [v.value for v in head.non_trainable_variables]
        outputs, _ = head.stateless_call(
            [head.kernel.value], head_state, [features, labels], training=True
        )
        return mean_loss(outputs, labels)

    loss, grads = jax.jit(jax.value_and_grad(model_loss))(trainable, inputs, labels)
    features = backbone(inputs)
    feature_grads = jax.jit(jax.grad(head_loss))(features, labels)
    paths = [v.path for v in model.trainable_variables]
    return float(loss), dict(zip(paths, grads)), feature_grads


def _jax_worker():
    import jax
    import keras

    assert keras.backend.backend() == "jax"
    devices = keras.distribution.list_devices()
    assert len(devices) == 8, devices
    inputs, labels = _data()
    sampled_losses = []
    for sample_rate, output_mode in ((1.0, "logits"), (0.5, "logits"), (0.5, "loss")):
        single = _build_model(sample_rate, output_mode)
        _set_weights(single)
        expected = _jax_loss_and_gradients(single, inputs, labels)
        if sample_rate == 1.0:
            _assert_close("loss vs NumPy", expected[0], _numpy_cosface_loss(inputs, labels))
        else:  # the same seed samples the same classes: both output modes, one loss
            sampled_losses.append(expected[0])

        distribution = margin_softmax_distribution(NUM_CLASSES, devices=devices)
        with distribution.scope():
            sharded = _build_model(sample_rate, output_mode)
            _set_weights(sharded)
            kernel = sharded.get_layer("margin_softmax").kernel.value
            # the class axis is split in 8 contiguous slices, one per device
            assert tuple(kernel.sharding.spec) == (None, "batch"), kernel.sharding
            shards = sorted(kernel.addressable_shards, key=lambda s: s.index[1].start)
            assert len({s.device for s in shards}) == 8
            per_device = NUM_CLASSES // 8
            full_kernel = _initial_weights()["margin_softmax/kernel"]
            for i, shard in enumerate(shards):
                assert shard.data.shape == (FEATURE_DIM, per_device)
                columns = slice(i * per_device, (i + 1) * per_device)
                _assert_close(f"shard {i}", shard.data, full_kernel[:, columns])
            backbone_kernel = sharded.get_layer("backbone").kernel.value
            assert backbone_kernel.sharding.is_fully_replicated
            data_layout = distribution.get_data_layout((BATCH,)).backend_layout
            actual = _jax_loss_and_gradients(
                sharded,
                jax.device_put(inputs, distribution.get_data_layout(inputs.shape).backend_layout),
                jax.device_put(labels, data_layout),
            )
        name = f"r={sample_rate} {output_mode}"
        _assert_close(f"loss {name}", actual[0], expected[0])
        for path, grad in expected[1].items():
            _assert_close(f"d loss / d {path}, {name}", actual[1][path], grad)
        _assert_close(f"d loss / d features, {name}", actual[2], expected[2])
        if sample_rate < 1.0 and output_mode == "logits":  # classes really dropped (−1e9)
            logits = single({"inputs": inputs, "labels": labels}, training=True)
            assert np.mean(np.asarray(logits) < -1e8) > 0.3
    _assert_close("sampled loss, logits vs loss output", sampled_losses[1], sampled_losses[0])
    _jax_fit_step_matches(inputs, labels, devices)
    print("jax sharded == single device: sample_rate=1.0, 0.5, 0.5 with output_mode='loss'")


def _compiled_head_bytes(mode, sample_rate, distribution=None):
    """Bytes per device (arguments + temporaries) that XLA plans for the loss and gradients
    of a MarginSoftmax with 16,384 classes, batch 64, 32-d features."""
    import contextlib

    import jax
    import keras

    from keras_sphereface.margins import MarginSoftmax

    num_classes, batch, dim = 16384, 64, 32
    rng = np.random.default_rng(0)
    features = rng.normal(size=(batch, dim)).astype("float32")
    labels = rng.integers(0, num_classes, size=batch).astype("int32")
    kernel_sharding = None
    with distribution.scope() if distribution else contextlib.nullcontext():
        head = MarginSoftmax(
            num_classes, mode=mode, sample_rate=sample_rate, seed=1, name="margin_softmax"
        )
        head.build([(None, dim), (None,)])
        if distribution:
            features, labels = (
                jax.device_put(x, distribution.get_data_layout(x.shape).backend_layout)
                for x in (features, labels)
            )
            kernel_sharding = head.kernel.value.sharding
        state = [v.value for v in head.non_trainable_variables]

        def loss(kernel, features, labels):
            logits, _ = head.stateless_call([kernel], state, [features, labels], training=True)
            return keras.ops.mean(
                keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            )

        # the kernel gradient keeps the kernel's layout, as in the optimizer update of `fit`
        step = jax.jit(
            jax.value_and_grad(loss, argnums=(0, 1)),
            out_shardings=(None, (kernel_sharding, None)) if distribution else None,
        )
        analysis = step.lower(head.kernel.value, features, labels).compile().memory_analysis()
    return analysis.argument_size_in_bytes + analysis.temp_size_in_bytes


def _jax_memory_worker():
    """On 8 devices the sharded head must need far less than one device's memory (ideal 1/8):
    a layer op that gathers the whole (batch, classes) logits onto every device fails this."""
    import keras

    devices = keras.distribution.list_devices()
    for mode, sample_rate in (("cosface", 1.0), ("sphereface", 1.0), ("cosface", 0.1)):
        single = _compiled_head_bytes(mode, sample_rate)
        sharded = _compiled_head_bytes(
            mode, sample_rate, margin_softmax_distribution(16384, devices=devices)
        )
        print(f"{mode} r={sample_rate}: {sharded / 2**20:.1f} MiB per device sharded, "
              f"{single / 2**20:.1f} MiB on one device")
        assert sharded <= single / 4, (mode, sample_rate, sharded, single)
    print("per-device memory of the sharded head <= 1/4 of one device's")


def _compiled_for_training(model):
    import keras

    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _jax_fit_step_matches(inputs, labels, devices):
    """Two `fit` steps (SGD with momentum) give the same weights; the momentum of W is sharded."""
    x = {"inputs": inputs, "labels": labels}
    single = _compiled_for_training(_build_model())
    _set_weights(single)
    single.fit(x, labels, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    with margin_softmax_distribution(NUM_CLASSES, devices=devices).scope():
        sharded = _compiled_for_training(_build_model())
        _set_weights(sharded)
        sharded.fit(x, labels, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    # the weights, the λ iteration counter and the sampler's seed state
    for expected, actual in zip(single.variables, sharded.variables):
        _assert_close(f"{actual.path} after 2 fit steps", actual.value, expected.value)
    (momentum,) = [v for v in sharded.optimizer.variables if "margin_softmax_kernel" in v.path]
    assert tuple(momentum.value.sharding.spec) == (None, "batch"), momentum.value.sharding


# ---------------------------------------------------------------- TensorFlow worker
def _tf_worker():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)
    import keras

    assert keras.backend.backend() == "tensorflow"
    inputs, labels = _data()
    x = {"inputs": inputs, "labels": labels}

    def loss_and_gradients(model, inputs, labels, global_batch):
        with tf.GradientTape() as tape:
            logits = model({"inputs": inputs, "labels": labels}, training=True)
            per_sample = keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True
            )
            loss = tf.reduce_sum(per_sample) / global_batch
        return loss, tape.gradient(loss, model.trainable_variables)

    single = _build_model()
    _set_weights(single)
    expected_loss, expected_grads = loss_and_gradients(single, inputs, labels, BATCH)
    _assert_close("loss vs NumPy", expected_loss, _numpy_cosface_loss(inputs, labels))

    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(4)])
    with strategy.scope():
        mirrored = _build_model()
        _set_weights(mirrored)
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(BATCH)
    per_replica_inputs, per_replica_labels = next(
        iter(strategy.experimental_distribute_dataset(dataset))
    )
    loss, grads = strategy.run(
        loss_and_gradients, args=(mirrored, per_replica_inputs, per_replica_labels, BATCH)
    )
    _assert_close("loss", strategy.reduce("SUM", loss, axis=None), expected_loss)
    for variable, grad, expected in zip(mirrored.trainable_variables, grads, expected_grads):
        summed = strategy.reduce("SUM", grad, axis=None)
        _assert_close(f"d loss / d {variable.path}", summed, expected)

    single = _compiled_for_training(_build_model())
    _set_weights(single)
    single.fit(x, labels, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    with strategy.scope():
        mirrored = _compiled_for_training(_build_model())
        _set_weights(mirrored)
    mirrored.fit(x, labels, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    # the weights and the λ iteration counter (2 steps, not 2 × 4 replica steps)
    for expected, actual in zip(single.variables, mirrored.variables):
        _assert_close(f"{actual.path} after 2 fit steps", actual.value, expected.value)
    # W is replicated, not sharded: one full copy per replica
    kernel = mirrored.get_layer("margin_softmax").kernel.value
    kernel_copies = strategy.experimental_local_results(kernel)
    assert [tuple(k.shape) for k in kernel_copies] == [(FEATURE_DIM, NUM_CLASSES)] * 4
    print("tensorflow mirrored == single device")


if __name__ == "__main__":
    {"jax": _jax_worker, "jax-memory": _jax_memory_worker, "tensorflow": _tf_worker}[sys.argv[1]]()
