"""The paper's optimizer: SGD, momentum 0.9, weight decay 5e-4 (coupled), lr 0.1 ÷10 twice.

Weight decay is the Caffe kind (coupled L2): the gradient becomes g + wd·w *before* the
momentum update, exactly as in the SphereFace release. Keras' own `weight_decay` argument is
decoupled (w ← w − lr·wd·w outside the momentum buffer, as in AdamW/SGDW); with momentum 0.9
its steady-state pull is 1/(1 − 0.9) = 10× weaker than the paper's, so 5e-4 there would not
be the paper's 5e-4. An L2 regularizer on every layer would give the same maths but would
ride along in the exported backbone; an optimizer keeps the models clean.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_sphereface")
class CoupledWeightDecaySGD(keras.optimizers.SGD):
    """SGD with momentum whose weight decay enters the gradient (Caffe/PyTorch `SGD` style).

    m ← μ·m − lr·(g + wd·w);  w ← w + m  (Nesterov as in `keras.optimizers.SGD`).
    Every trainable variable is decayed (weights, biases and PReLU slopes), as Caffe's
    default `decay_mult: 1` does.

    Partial FC (`MarginSoftmax(sample_rate=r)`): a class centre that was not sampled gets a
    zero gradient column, but momentum and weight decay would still move it. For the
    variables named in `sampled_columns`, a column whose gradient is all zero keeps its
    value and its momentum (only the sampled centres are updated, as in Partial FC v1).

    Args:
        coupled_weight_decay: wd ≥ 0 (paper: 5e-4).
        sampled_columns: fragments of variable paths (e.g. ("margin_softmax/kernel",))
            whose columns are updated only where their gradient is non-zero.
        learning_rate, momentum, nesterov, **kwargs: as `keras.optimizers.SGD`.
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        coupled_weight_decay=5e-4,
        nesterov=False,
        sampled_columns=(),
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
        if not coupled_weight_decay >= 0:
            raise ValueError(f"Expected coupled_weight_decay >= 0. Received: {coupled_weight_decay}")
        if isinstance(sampled_columns, str) or not all(
            isinstance(name, str) for name in sampled_columns
        ):
            raise ValueError(
                "Expected sampled_columns to be a list of variable path fragments. "
                f"Received: {sampled_columns!r}"
            )
        self.coupled_weight_decay = float(coupled_weight_decay)
        self.sampled_columns = tuple(sampled_columns)

    def update_step(self, gradient, variable, learning_rate):
        gradient = ops.cast(gradient, variable.dtype)
        sampled = None
        # TensorFlow hands the backend variable here: its Keras variable has the path
        path = self._trainable_variables[self._get_variable_index(variable)].path
        if len(variable.shape) == 2 and any(name in path for name in self.sampled_columns):
            sampled = ops.any(ops.not_equal(gradient, 0.0), axis=0)  # before the decay term
        if self.coupled_weight_decay:
            gradient = ops.add(
                gradient, ops.multiply(ops.cast(self.coupled_weight_decay, variable.dtype), variable)
            )
        if sampled is None:
            return super().update_step(gradient, variable, learning_rate)
        learning_rate = ops.cast(learning_rate, variable.dtype)
        step = ops.multiply(gradient, -learning_rate)
        if self.momentum != 0:
            m = self.momentums[self._get_variable_index(variable)]
            old_m = ops.convert_to_tensor(m)
            momentum = ops.cast(self.momentum, variable.dtype)
            new_m = ops.add(ops.multiply(old_m, momentum), step)
            self.assign(m, ops.where(sampled, new_m, old_m))
            step = ops.add(ops.multiply(new_m, momentum), step) if self.nesterov else new_m
        self.assign_add(variable, ops.where(sampled, step, 0.0))

    def get_config(self):
        config = super().get_config()
        config["coupled_weight_decay"] = self.coupled_weight_decay
        config["sampled_columns"] = list(self.sampled_columns)
        return config


@keras.saving.register_keras_serializable(package="keras_sphereface")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule`, scaled by min(1, (step + 1) / warmup_steps): a linear ramp from
    lr / warmup_steps at step 0 to the full lr at step warmup_steps − 1 (Goyal et al. 2017)."""

    def __init__(self, schedule, warmup_steps):
        if not (isinstance(warmup_steps, int) and warmup_steps >= 1):
            raise ValueError(
                f"Expected warmup_steps to be an integer >= 1. Received: {warmup_steps!r}"
            )
        self.schedule = schedule
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        ramp = ops.minimum(1.0, (ops.cast(step, "float32") + 1.0) / self.warmup_steps)
        return self.schedule(step) * ramp

    def get_config(self):
        return {
            "schedule": keras.optimizers.schedules.serialize(self.schedule),
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_config(cls, config):
        schedule = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(schedule, config["warmup_steps"])


def paper_step_schedule(total_steps, learning_rate=0.1, warmup_steps=0):
    """The SphereFace schedule scaled to `total_steps`: lr, lr/10 from 16/28 of the run,
    lr/100 from 24/28 (the paper: 0.1 → 0.01 at 16k → 0.001 at 24k, stop at 28k), with a
    `LinearWarmup` over the first `warmup_steps` if > 0.

    Steps count from 0 like Caffe's "multistep": with 28,000 steps, steps 0 … 15,999 use lr.
    """
    total_steps = int(total_steps)
    if total_steps < 1:
        raise ValueError(f"Expected total_steps >= 1. Received: {total_steps}")
    first = max(1, round(total_steps * 16 / 28))
    second = max(first + 1, round(total_steps * 24 / 28))
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries=[first - 1, second - 1],
        values=[learning_rate, learning_rate / 10, learning_rate / 100],
    )
    return LinearWarmup(schedule, int(warmup_steps)) if warmup_steps else schedule
