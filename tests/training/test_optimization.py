"""CoupledWeightDecaySGD against the SGD formulas written out in NumPy."""

import keras
import numpy as np
import pytest

from keras_sphereface import MarginSoftmax
from keras_sphereface.training.optimization import CoupledWeightDecaySGD, paper_step_schedule

pytestmark = pytest.mark.multi_backend


def numpy_sgd(w, gradients, lr, momentum, wd, updated_columns=None):
    """m ← μ·m − lr·(g + wd·w); w ← w + m, optionally only in `updated_columns`."""
    w, m = w.astype(np.float64), np.zeros_like(w, dtype=np.float64)
    for g in gradients:
        new_m = momentum * m - lr * (g + wd * w)
        mask = np.ones(w.shape[1], bool) if updated_columns is None else updated_columns(g)
        m = np.where(mask, new_m, m)
        w = w + np.where(mask, new_m, 0.0)
    return w


def run_optimizer(optimizer, w, gradients):
    variable = keras.Variable(w, name="kernel")
    optimizer.build([variable])
    for g in gradients:
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
    return keras.ops.convert_to_numpy(variable)


def problem():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 6)).astype(np.float32)
    gradients = []
    for step in range(3):
        g = rng.standard_normal((3, 6)).astype(np.float32)
        g[:, [1, 4] if step % 2 else [1, 2]] = 0.0  # class 1 never sampled, 2 and 4 sometimes
        gradients.append(g)
    return w, gradients


def test_coupled_weight_decay_enters_the_momentum():
    w, gradients = problem()
    got = run_optimizer(
        CoupledWeightDecaySGD(0.1, momentum=0.9, coupled_weight_decay=0.01), w, gradients
    )
    np.testing.assert_allclose(got, numpy_sgd(w, gradients, 0.1, 0.9, 0.01), rtol=1e-5, atol=1e-6)


def test_sampled_columns_keep_unsampled_centres_and_their_momentum():
    w, gradients = problem()
    optimizer = CoupledWeightDecaySGD(
        0.1, momentum=0.9, coupled_weight_decay=0.01, sampled_columns=("kernel",)
    )
    got = run_optimizer(optimizer, w, gradients)
    want = numpy_sgd(w, gradients, 0.1, 0.9, 0.01, lambda g: np.any(g != 0, axis=0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[:, 1], w[:, 1])  # never sampled: bit-identical
    # without the option, momentum and weight decay move every column
    plain = run_optimizer(CoupledWeightDecaySGD(0.1, momentum=0.9, coupled_weight_decay=0.01),
                          w, gradients)
    assert not np.array_equal(plain[:, 1], w[:, 1])
    assert CoupledWeightDecaySGD.from_config(optimizer.get_config()).sampled_columns == ("kernel",)


@pytest.mark.parametrize("weight_normalization", ["reparametrized", "projected"])
def test_partial_fc_fit_moves_only_the_sampled_class_centres(weight_normalization):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    num_classes, batch = 400, 16
    x = rng.standard_normal((batch, 6)).astype(np.float32)
    y = rng.integers(0, num_classes, batch).astype(np.int32)
    features = keras.Input((6,))
    labels = keras.Input((), dtype="int32")
    head = MarginSoftmax(num_classes, mode="cosface", sample_rate=0.1, seed=0, name="head",
                         weight_normalization=weight_normalization)
    model = keras.Model([features, labels], head([features, labels]))
    model.compile(
        CoupledWeightDecaySGD(0.1, momentum=0.9, sampled_columns=("head/kernel",)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = keras.ops.convert_to_numpy(head.kernel).copy()
    model.fit([x, y], y, batch_size=batch, epochs=1, verbose=0)  # one step: ceil(0.1·400) = 40
    changed = np.flatnonzero(np.any(keras.ops.convert_to_numpy(head.kernel) != before, axis=0))
    assert set(y) <= set(changed) and len(changed) == 40


@pytest.mark.multi_backend
@pytest.mark.parametrize("warmup", [0, 5])
def test_step_schedule_ramps_up_linearly_then_steps_and_survives_serialization(warmup):
    total, lr = 28, 0.1
    schedule = paper_step_schedule(total, lr, warmup)
    schedules = keras.optimizers.schedules
    restored = schedules.deserialize(schedules.serialize(schedule))

    def expected(step):  # the paper's steps at 16 and 24 of 28, times the ramp (step + 1) / warmup
        base = lr if step < 16 else lr / 10 if step < 24 else lr / 100
        return base * (min(1.0, (step + 1) / warmup) if warmup else 1.0)

    for step in range(total + 2):
        assert float(schedule(step)) == pytest.approx(expected(step), rel=1e-6)
        assert float(restored(step)) == pytest.approx(expected(step), rel=1e-6)
