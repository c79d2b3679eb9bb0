"""MarginSoftmax: one Keras 3 layer for the angular-margin softmax family.

Notation: x the feature, W_j the class-j column of `kernel`, θ_j the angle between them,
y the true class, s the scale. Every mode computes the plain logits of the table below for
all classes and then replaces the true-class entry (one value per sample) by its margin
version; CurricularFace also re-weights the hard negatives.

| mode                  | ‖W‖=1 | ‖x‖=1 | true-class logit               | other logits  |
|-----------------------|-------|-------|--------------------------------|---------------|
| softmax               | no    | no    | W_y·x + b_y                    | W_j·x + b_j   |
| lsoftmax              | no    | no    | ‖W_y‖‖x‖ Ψ(θ_y)                | W_j·x         |
| sphereface/a-softmax  | yes   | no    | ‖x‖ Ψ(θ_y)                     | ‖x‖ cos θ_j   |
| normface              | yes   | yes   | s cos θ_y                      | s cos θ_j     |
| cosface/am-softmax    | yes   | yes   | s (cos θ_y − m)                | s cos θ_j     |
| arcface               | yes   | yes   | s cos(θ_y + m)                 | s cos θ_j     |
| combined              | yes   | yes   | s (cos(m1 θ_y + m2) − m3)      | s cos θ_j     |
| curricularface        | yes   | yes   | s cos(θ_y + m)                 | s N(t, cos θ_j) |

Papers: L-Softmax (Liu et al., ICML 2016), SphereFace (Liu et al., CVPR 2017), NormFace
(Wang et al., ACM MM 2017), CosFace (Wang et al., CVPR 2018), ArcFace (Deng et al., CVPR
2019; "combined" is its eq. 4), CurricularFace (Huang et al., CVPR 2020).

A-Softmax / L-Softmax: ψ(θ) = (−1)^k cos(mθ) − 2k for θ ∈ [kπ/m, (k+1)π/m] with cos(mθ)
from the Chebyshev polynomial T_m(cos θ), annealed as in the original Caffe layer:
Ψ(θ) = (ψ(θ) + λ cos θ) / (1 + λ), λ = max(λ_min, base·(1 + γ·iteration)^(−power)).
The iteration counter is a non-trainable layer variable (saved with the model) that advances
once per call with `training=True`; `current_lambda()` reads λ.

Angular modes (arcface, combined, curricularface): when m1·θ_y + m2 > π the cosine would
start rising again with θ_y, rewarding a feature for moving away from its centre. Past
that threshold θ_b = (π − m2)/m1 we use the continuous, monotone extension
cos θ_y − cos θ_b − 1 (minus m3), i.e. a constant penalty 1 + cos θ_b. (insightface uses
cos θ_y − m·sin m there; both only differ for θ_y > π − m, a feature almost opposite its
centre.) `easy_margin=True` instead applies the margin only where cos θ_y > 0.

Defaults: the papers' margins (sphereface/lsoftmax m=4, cosface 0.35, arcface 0.5,
combined (1.0, 0.3, 0.2), curricularface 0.5) and s=64; normface s=30 (no margin: a lower
scale keeps its softmax from saturating). sphereface has no scale by default (the feature
norm ‖x‖ plays its role, as in the paper); giving one normalizes the features too.

Unit class centres (`weight_normalization`, the modes with ‖W‖=1):
- "reparametrized" (default, right for any optimizer, and what `training.train` uses), as
  PyTorch heads that call F.normalize: W / ‖W‖ is computed in every call and the gradient is
  exact through it (its radial part removed); each column keeps the norm the initializer
  gave it, which the steps then grow and weight decay shrinks. On the TensorFlow CPU backend
  the norms and the radial term cost 14-24 % over a Dense head in forward+backward
  (bench/margin_overhead.py).
- "projected": the kernel's columns are kept at one norm ρ (`centre_norm`), so W/ρ holds the
  unit centres. The initial kernel is projected onto norm ρ and the kernel's constraint
  renormalizes the columns after every optimizer step (Keras optimizers apply constraints),
  so the logits are a plain matmul, features·W with 1/ρ folded into the (B, D) feature
  scaling (1-7 % over a Dense head; the renormalization is paid in the optimizer step), and
  the kernel gradient is the plain one, whose radial part the renormalization removes. Under
  SGD a step then turns a centre by lr·g/ρ², as the "reparametrized" step does at column
  norm ρ, to first order in the learning rate (a test checks it). Adam-like optimizers scale
  each coordinate of the gradient, its radial part included, so there the two differ (the
  demo's digits with Adam: projected A-Softmax and ArcFace verified 96.0 / 91.0 %,
  reparametrized 98.7 / 97.7 %). ρ defaults to the initializer's RMS column norm
  (`expected_column_norm`: 0.51 from glorot_uniform at 128 × 854, 0.30 at 512 × 10,575), so
  both modes take the same SGD steps from the same initialization; centre_norm=1.0 is the
  original SphereFace Caffe layer, whose centres then learn ρ⁻² times more slowly (the
  README's LFW check: 1-2 points lower). Only the first steps are the same: each
  reparametrized step lengthens the columns, so later turns shrink, while ρ stays; with many
  classes glorot's ρ is small (0.22 at 128 × 5,314) and CosFace did not learn with it
  (README).
Either way the matmul has a hand-fused gradient (`matmul_with_true_logits`) that also
hands out the B true-class logits; the margin (with its acos/cos) runs on those B values
only and one scatter writes them back. All maths is float32, whatever the dtype policy.

Partial FC (`sample_rate` r < 1, An et al., "Partial FC", 2021/2022): in training calls
with labels, the logits are computed for the batch's positive classes plus uniformly
sampled negatives, ceil(r·C) classes in all (at least the batch size), with the same
margin maths; the loss is the cross-entropy over the sampled classes. The kernel gradient
is zero outside the sampled columns, so plain SGD moves only those (momentum or weight
decay in the optimizer still move the others, as in insightface's Partial FC v2). With
output_mode="logits" the layer keeps its contract with `SparseCategoricalCrossentropy`: the
unsampled classes get a logit of −1e9 (zero probability) in a (batch, classes) tensor,
so only the matmul scales with r. With output_mode="loss" the layer returns the per-sample
cross-entropy of the (batch, sampled) logits, and nothing of size batch × classes is
built: memory and compute of the head scale with r·C (the kernel, its gradient and the
optimizer state stay C-sized, sharded over devices by `margin_softmax_distribution`).
r = 1 is exactly the full layer; inference calls and calls without `training=True`
always use every class.
"""

import contextlib
import math

import keras
from keras import ops

from keras_sphereface.errors import UserInputError

# mode -> (normalize weights, normalize features, default margin, default scale)
_MODES = {
    "softmax": (False, False, None, None),
    "lsoftmax": (False, False, 4, None),
    "sphereface": (True, False, 4, None),
    "normface": (True, True, None, 30.0),
    "cosface": (True, True, 0.35, 64.0),
    "arcface": (True, True, 0.5, 64.0),
    "combined": (True, True, (1.0, 0.3, 0.2), 64.0),
    "curricularface": (True, True, 0.5, 64.0),
}
_ALIASES = {"a-softmax": "sphereface", "am-softmax": "cosface"}
_ANNEALED_MODES = ("lsoftmax", "sphereface")
_ANGULAR_MODES = ("arcface", "combined", "curricularface")
_WEIGHT_NORMALIZATIONS = ("projected", "reparametrized")

# cos θ is clipped to [−1 + ε, 1 − ε] before acos, so d acos / d cos stays finite
_COS_EPSILON = 1e-7
# floor of ‖x‖ and ‖W_j‖: a zero vector gets a zero cosine and finite gradients
_NORM_EPSILON = 1e-6
# squared column norms this close to ρ² (relative) count as at ρ (float32 rounding)
_UNIT_TOLERANCE = 1e-5
# logit of the classes Partial FC did not sample (zero probability after softmax)
_UNSAMPLED_LOGIT = -1e9


def chebyshev_cos_multiple(cos_theta, m):
    """cos(m·θ) from cos θ by the Chebyshev recurrence T_{n+1} = 2c·T_n − T_{n−1}."""
    previous, current = ops.ones_like(cos_theta), cos_theta
    for _ in range(m - 1):
        previous, current = current, 2.0 * cos_theta * current - previous
    return current if m >= 1 else previous


def sphereface_psi(cos_theta, m):
    """A-Softmax ψ(θ) = (−1)^k cos(mθ) − 2k, k = floor(m·θ/π) (SphereFace eq. 7).

    Monotonically decreasing on [0, π]; `cos_theta` must lie in [−1, 1].
    """
    theta = ops.arccos(ops.clip(cos_theta, -1.0 + _COS_EPSILON, 1.0 - _COS_EPSILON))
    k = ops.stop_gradient(ops.clip(ops.floor(m * theta / math.pi), 0.0, m - 1.0))
    sign = 1.0 - 2.0 * ops.mod(k, 2.0)
    return sign * chebyshev_cos_multiple(cos_theta, m) - 2.0 * k


def angular_margin(cos_theta, m1, m2, m3, easy_margin=False):
    """cos(m1·θ + m2) − m3 (ArcFace eq. 4), with the θ_b rule of the module docstring."""
    theta = ops.arccos(ops.clip(cos_theta, -1.0 + _COS_EPSILON, 1.0 - _COS_EPSILON))
    target = ops.cos(m1 * theta + m2) - m3
    if easy_margin:
        return ops.where(cos_theta > 0.0, target, cos_theta)
    theta_b = (math.pi - m2) / m1
    if theta_b >= math.pi:
        return target
    beyond = cos_theta - math.cos(theta_b) - 1.0 - m3
    return ops.where(theta > theta_b, beyond, target)


def _custom_gradient(forward):
    """`ops.custom_gradient`, except on PyTorch, where Keras' custom gradient takes a single
    output: there autograd differentiates the same forward (the gradient is the same
    function, only computed with more passes)."""
    if keras.backend.backend() == "torch":
        return lambda *args: forward(*args)[0]
    return ops.custom_gradient(forward)


def columns_at_norm(kernel, norm):
    """kernel with every column rescaled to the norm ρ = `norm`, the projection of
    weight_normalization="projected".

    Columns already within float32 rounding of it (|‖W_c‖²/ρ² − 1| ≤ 1e-5) are left
    bit-identical, so a column the optimizer step did not move stays as it was; a zero
    column stays zero.
    """
    norms = _column_norms(kernel)
    at_norm = ops.abs(ops.square(norms / norm) - 1.0) <= _UNIT_TOLERANCE
    return kernel * ops.where(at_norm, 1.0, norm / norms)


def _column_norms(kernel):
    """max(‖kernel columns‖, ε), where no automatic differentiation needs to flow through
    them (the projection, and forwards whose gradient is written by hand). On TensorFlow
    without XLA the fused Euclidean-norm reduction reads the (D, C) kernel once, where
    square + sum make an extra (D, C) pass; XLA has no kernel for it (and fuses square + sum
    itself), so there and on the other backends `_l2_norm`, whose floor sits under the
    square root because PyTorch differentiates the hand-written forwards with autograd."""
    if keras.backend.backend() == "tensorflow" and not _tensorflow_xla_context():
        import tensorflow as tf

        return ops.maximum(tf.math.reduce_euclidean_norm(kernel, axis=0), _NORM_EPSILON)
    return _l2_norm(kernel, 0)


def _tensorflow_xla_context():
    """Whether TensorFlow is tracing for XLA (jit_compile=True, Keras' "auto" on a GPU).
    A private query; should it move, the answer is True, the form that runs everywhere."""
    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util

        return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())
    except (ImportError, AttributeError):
        return True


def expected_column_norm(initializer, shape):
    """The RMS column norm of the (D, C) kernels `initializer` draws, ρ of the projected mode.

    For the variance-scaling family (glorot, he, lecun; Keras' default glorot_uniform) it is
    the expectation sqrt(D·scale/fan), e.g. sqrt(2D/(D + C)) for glorot, so no kernel is
    drawn; for any other initializer it is measured on one draw.
    """
    rows, columns = shape
    if isinstance(initializer, keras.initializers.VarianceScaling):
        fan = {"fan_in": rows, "fan_out": columns, "fan_avg": (rows + columns) / 2}
        return math.sqrt(rows * initializer.scale / fan[initializer.mode])
    with _eager_scope():
        draw = initializer(shape)
        mean_square = ops.mean(ops.sum(ops.square(draw), axis=0))
        return float(ops.convert_to_numpy(ops.sqrt(mean_square))) or 1.0


def _eager_scope():
    """On TensorFlow, `tf.init_scope()`: what runs in it runs eagerly, even inside a
    tf.function being traced (as when Keras creates variables); elsewhere nothing."""
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.init_scope()


def _fused(function):
    """`function` compiled with XLA on the TensorFlow backend, so that its element-wise ops
    make one pass over the (B, C) logits instead of one pass each (Keras runs TensorFlow on
    CPU without XLA); JAX's jit fuses them already and PyTorch runs them as they are."""
    if keras.backend.backend() != "tensorflow":
        return function
    import tensorflow as tf

    return tf.function(function, jit_compile=True)


def matmul_with_true_logits(features, kernel, labels=None, normalize_columns=False):
    """features @ kernel (columns normalized if asked), with a hand-fused exact gradient.

    With `labels` it returns (logits, true_logits): the (B,) entries logits[b, labels[b]],
    whose gradient is added into the logits' gradient in place (one scatter) instead of
    through a separate gather (a densified (B, C) gradient and a (B, C) sum).

    With `normalize_columns` (weight_normalization="reparametrized") the product is
    features @ (kernel / ‖kernel columns‖): the matmul's (B, C) result is scaled by the
    inverse column norms, so the (D, C) kernel is only read for its norms, never
    normalized element-wise. Backward, with G the upstream gradient and L the output:
        d features = (G / ‖W‖) Wᵀ,
        d W = featuresᵀ (G / ‖W‖) − W · Σ_b(G ∘ L) / ‖W‖²,
    the exact gradient of the normalized product (the second term removes the radial
    part), in two (D, C) element-wise passes where automatic differentiation of
    sqrt(sum(W²)) takes five on the TensorFlow CPU backend.
    """
    true_index = None if labels is None else _true_index(labels)

    @_custom_gradient
    def forward(features, kernel):
        logits = ops.matmul(features, kernel)
        if normalize_columns:
            norm = _column_norms(kernel)
            inverse_norm = 1.0 / norm
            logits = logits * inverse_norm
        outputs = logits if labels is None else (logits, _entries(logits, labels))

        def gradient(*args, upstream=None):
            if upstream is None:  # TensorFlow: one argument per output; JAX: one structure
                upstream = args if len(args) > 1 else args[0]
            if labels is not None:
                upstream, upstream_true = upstream
                upstream = ops.scatter_update(
                    upstream, true_index, _entries(upstream, labels) + upstream_true
                )
            if not normalize_columns:
                return (
                    ops.matmul(upstream, ops.transpose(kernel)),
                    ops.matmul(ops.transpose(features), upstream),
                )
            scaled, radial = _scaled_and_radial(upstream, logits, inverse_norm, norm)
            return (
                ops.matmul(scaled, ops.transpose(kernel)),
                _plus_scaled_columns(
                    ops.matmul(ops.transpose(features), scaled), kernel, -radial
                ),
            )

        return outputs, gradient

    return forward(features, kernel)


@_fused
def _scaled_and_radial(upstream, logits, inverse_norm, norm):
    """G / ‖W‖ and the radial coefficients Σ_b(G ∘ L) / ‖W‖² (0 below the norm floor)."""
    radial = ops.sum(upstream * logits, axis=0) * ops.square(inverse_norm)
    return upstream * inverse_norm, ops.where(norm > _NORM_EPSILON, radial, 0.0)


@_fused
def _plus_scaled_columns(kernel_gradient, kernel, coefficients):
    """kernel_gradient + kernel · coefficients (one (C,) coefficient per column), one pass."""
    return kernel_gradient + kernel * coefficients


def matmul_with_true_column_norms(features, kernel, labels):
    """(features @ kernel, its (B,) true-class entries, the (B,) norms ‖W_{y_b}‖), L-Softmax.

    The norms come from the (D, B) gathered true columns. Hand-written exact gradient: the
    norms' gradient is W_c·α_c for every column c (α_c the sum of g_b / ‖W_c‖ over the
    samples of class c, scattered into a (classes,) vector), added to the matmul's kernel
    gradient in one fused pass, where automatic differentiation of the column gather builds
    a dense (classes, D) gradient, transposes it and adds it. (Adding W_c·α_c to the batch's
    columns only, by a scatter of D·B entries, is slower on the TensorFlow CPU backend, with
    XLA or without: at 10k classes 31 and 46 ms against 29 for the fused add, 25 for the
    matmul alone.)
    """
    true_index = _true_index(labels)

    @_custom_gradient
    def forward(features, kernel):
        logits = ops.matmul(features, kernel)
        norms = _column_norms(ops.take(kernel, labels, axis=1))  # gradient written below

        def gradient(*args, upstream=None):
            if upstream is None:  # TensorFlow: one argument per output; JAX: one structure
                upstream = args if len(args) > 1 else args[0]
            upstream, upstream_true, upstream_norms = upstream
            upstream = ops.scatter_update(
                upstream, true_index, _entries(upstream, labels) + upstream_true
            )
            # d‖W_c‖ / dW_c = W_c / ‖W_c‖ (0 below the floor): column c gains W_c·α_c with
            # α_c the sum of g_b / ‖W_c‖ over the samples of class c
            per_sample = ops.where(norms > _NORM_EPSILON, upstream_norms / norms, 0.0)
            alpha = ops.scatter(ops.expand_dims(labels, 1), per_sample, (ops.shape(kernel)[1],))
            kernel_gradient = _plus_scaled_columns(
                ops.matmul(ops.transpose(features), upstream), kernel, alpha
            )
            return ops.matmul(upstream, ops.transpose(kernel)), kernel_gradient

        return (logits, _entries(logits, labels), norms), gradient

    return forward(features, kernel)


@_fused
def _curricular_forward(logits, threshold, t, scale):
    hard = logits > ops.expand_dims(threshold, 1)
    return ops.where(hard, logits * (t + logits * (1.0 / scale)), logits)


@_fused
def _curricular_backward(upstream, logits, threshold, t, scale):
    hard = logits > ops.expand_dims(threshold, 1)
    return upstream * ops.where(hard, t + logits * (2.0 / scale), 1.0)


def curricular_reweight(logits, threshold, t, scale):
    """CurricularFace on logits L = s cos θ: L (t + L/s) where L > threshold (B,), else L.

    The gradient is the autodiff one (none reaches `threshold` or `t`), hand-written as
    G · where(hard, t + 2L/s, 1); forward and backward are each one fused pass over the
    (B, C) logits.
    """
    threshold, t = ops.stop_gradient(threshold), ops.stop_gradient(t)

    @_custom_gradient
    def reweight(logits):
        def gradient(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            return _curricular_backward(upstream, logits, threshold, t, scale)

        return _curricular_forward(logits, threshold, t, scale), gradient

    return reweight(logits)


def _true_index(labels):
    """The (B, 2) index pairs (b, labels[b])."""
    return ops.stack([ops.arange(ops.shape(labels)[0], dtype="int32"), labels], axis=1)


def _entries(matrix, labels):
    """matrix[b, labels[b]] for every row b, as a (B,) tensor.

    A gather along the class axis (not through a flattened (B·C,) view), so that under a
    class-sharded layout XLA keeps the (B, C) matrix sharded instead of all-gathering it.
    """
    return ops.take_along_axis(matrix, ops.expand_dims(labels, 1), axis=1)[:, 0]


def _l2_norm(x, axis):
    return ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis), _NORM_EPSILON**2))


def _float32_policy(dtype):
    """The layer computes in float32; a mixed policy (float32 variables) becomes float32."""
    policy = keras.dtype_policies.get(dtype) if dtype is not None else keras.config.dtype_policy()
    if policy.compute_dtype != "float32" and policy.variable_dtype == "float32":
        return "float32"
    return dtype


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@keras.saving.register_keras_serializable(package="keras_sphereface")
class MarginSoftmax(keras.layers.Layer):
    """Classification head with an (angular) margin on the true class; see module docstring.

    Args:
        num_classes: number of identities C.
        mode: one of "softmax", "lsoftmax", "sphereface" ("a-softmax"), "normface",
            "cosface" ("am-softmax"), "arcface", "combined", "curricularface".
        margin: the mode's margin; None gives the paper's value (sphereface/lsoftmax m=4,
            an integer ≥ 1; cosface 0.35; arcface 0.5; combined (m1, m2, m3) =
            (1.0, 0.3, 0.2); curricularface 0.5). softmax and normface take none.
        scale: s. None gives 64 (cosface, arcface, combined, curricularface) or 30
            (normface). sphereface with scale=None keeps the feature norm ‖x‖ as scale
            (the paper); a number normalizes the features and uses s instead.
            softmax and lsoftmax take none.
        lambda_base, lambda_gamma, lambda_power, lambda_min: the λ annealing of
            sphereface/lsoftmax (Caffe defaults). lambda_base=0, lambda_min=0 gives pure ψ.
        easy_margin: arcface/combined/curricularface only: margin only where cos θ_y > 0.
        t_momentum: curricularface: t ← momentum·t + (1 − momentum)·mean(cos θ_y).
        sample_rate: Partial FC fraction r ∈ (0, 1] of class centres used per training step.
        weight_normalization: how ‖W‖=1 is kept in the modes that normalize W:
            "reparametrized" (None's default there: W / ‖W‖ in every call, exact gradient
            through it, for any optimizer) or "projected" (columns kept at norm ρ by a
            constraint, plain matmul, faster; the same first steps under SGD); see the
            module docstring. None for softmax and lsoftmax.
        centre_norm: ρ, the column norm of a "projected" kernel. None: the initializer's
            RMS column norm (the steps of "reparametrized" from the same initialization);
            1.0: the SphereFace Caffe layer. Only with weight_normalization="projected".
        output_mode: "logits" (train with SparseCategoricalCrossentropy(from_logits=True)) or
            "loss": calls with labels return the per-sample cross-entropy (batch,) instead
            (train with `precomputed_loss`); with `sample_rate` < 1 this loss comes from
            the (batch, sampled) logits alone, so the (batch, num_classes) logit tensor is
            never built and the head's memory and compute scale with r·C.
        kernel_initializer, kernel_regularizer: for `kernel` (feature_dim, num_classes).
        seed: seed of the Partial FC sampler.
        **kwargs: Keras layer arguments (name, dtype, ...). A mixed policy such as
            "mixed_bfloat16" becomes "float32" for this layer (its variables are float32
            under it anyway): logits and margin maths stay float32.

    State: `iterations` (calls with training=True; drives λ) and, for curricularface,
    `curricular_t`; both non-trainable, saved with the model.

    Call: `layer([features, labels])` → float32 logits (batch, num_classes) with the margin
    on the true class (labels: integer class indices, shape (batch,) or (batch, 1)), or
    with output_mode="loss" their per-sample cross-entropy (batch,); `layer(features)` → the
    logits without margin (inference, accuracy).
    """

    def __init__(
        self,
        num_classes,
        mode="sphereface",
        margin=None,
        scale=None,
        lambda_base=1000.0,
        lambda_gamma=0.12,
        lambda_power=1.0,
        lambda_min=5.0,
        easy_margin=False,
        t_momentum=0.99,
        sample_rate=1.0,
        weight_normalization=None,
        centre_norm=None,
        output_mode="logits",
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        seed=None,
        **kwargs,
    ):
        kwargs["dtype"] = _float32_policy(kwargs.get("dtype"))
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise UserInputError(
                f"Expected num_classes to be a positive integer. Received: {num_classes!r}"
            )
        self.num_classes = num_classes
        self.mode = _canonical_mode(mode)
        self.normalize_weights, self.normalize_features, default_margin, default_scale = _MODES[
            self.mode
        ]
        self.margin = _check_margin(self.mode, default_margin if margin is None else margin)
        self.scale = _check_scale(self.mode, scale, default_scale)
        if self.scale is not None:
            self.normalize_features = True
        for name, value in (
            ("lambda_base", lambda_base),
            ("lambda_gamma", lambda_gamma),
            ("lambda_power", lambda_power),
            ("lambda_min", lambda_min),
        ):
            if not _is_number(value) or value < 0:
                raise UserInputError(
                    f"Expected {name} to be a number >= 0. Received: {value!r}"
                )
        self.lambda_base = float(lambda_base)
        self.lambda_gamma = float(lambda_gamma)
        self.lambda_power = float(lambda_power)
        self.lambda_min = float(lambda_min)
        if easy_margin and self.mode not in _ANGULAR_MODES:
            raise UserInputError(
                f"Expected easy_margin=False for mode {self.mode!r} (it applies to "
                f"{', '.join(_ANGULAR_MODES)}). Received: easy_margin={easy_margin!r}"
            )
        self.easy_margin = bool(easy_margin)
        if not _is_number(t_momentum) or not 0.0 <= t_momentum <= 1.0:
            raise UserInputError(
                f"Expected t_momentum to be a number in [0, 1]. Received: {t_momentum!r}"
            )
        self.t_momentum = float(t_momentum)
        if not _is_number(sample_rate) or not 0.0 < sample_rate <= 1.0:
            raise UserInputError(
                f"Expected sample_rate to be a number in (0, 1]. Received: {sample_rate!r}"
            )
        self.sample_rate = float(sample_rate)
        self.weight_normalization = _check_weight_normalization(
            self.mode, self.normalize_weights, weight_normalization
        )
        self.centre_norm = _check_centre_norm(self.weight_normalization, centre_norm)
        if output_mode not in ("logits", "loss"):
            raise UserInputError(
                "Expected output_mode to be 'logits' or 'loss'. "
                f"Received: output_mode={output_mode!r}"
            )
        self.output_mode = output_mode
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.sample_rate < 1.0 else None

    def build(self, input_shape):
        features_shape = input_shape[0] if _is_pair_shape(input_shape) else input_shape
        feature_dim = features_shape[-1]
        shape = (feature_dim, self.num_classes)
        projected = self.weight_normalization == "projected"
        initializer = self.kernel_initializer
        if projected:
            if self.centre_norm is None:
                self.centre_norm = expected_column_norm(initializer, shape)
            initializer = lambda shape, dtype=None: self._project_columns(  # noqa: E731
                self.kernel_initializer(shape, dtype)
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=shape,
            initializer=initializer,
            regularizer=self.kernel_regularizer,
            constraint=self._project_columns if projected else None,
        )
        self.bias = None
        if self.mode == "softmax":
            self.bias = self.add_weight(name="bias", shape=(self.num_classes,), initializer="zeros")
        self.iterations = self.add_weight(
            name="iterations", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        self.curricular_t = None
        if self.mode == "curricularface":
            self.curricular_t = self.add_weight(
                name="curricular_t", shape=(), initializer="zeros", trainable=False
            )

    def _project_columns(self, kernel):
        """The kernel's constraint in the projected mode: columns back at norm ρ."""
        return columns_at_norm(kernel, self.centre_norm)

    def load_own_variables(self, store):
        """Loads the weights; a `projected` kernel saved with other column norms (e.g. by
        a "reparametrized" layer) is projected onto norm ρ, which leaves its logits
        unchanged."""
        super().load_own_variables(store)
        if self.weight_normalization == "projected":
            self.kernel.assign(self._project_columns(self.kernel))

    # ------------------------------------------------------------------ λ schedule
    def lambda_at(self, iteration):
        """λ(iteration) = max(λ_min, base·(1 + γ·iteration)^(−power)) (sphereface, lsoftmax)."""
        iteration = ops.cast(iteration, "float32")
        decayed = self.lambda_base * ops.power(1.0 + self.lambda_gamma * iteration, -self.lambda_power)
        return ops.maximum(decayed, self.lambda_min)

    def current_lambda(self):
        """The λ the next training call uses, as a Python float (0.0 for modes without λ).

        For logging (e.g. a callback writing it to the training logs each epoch); the
        iteration counter behind it is the non-trainable variable `iterations`, which
        counts training calls in every mode and is saved with the model.
        """
        if self.mode not in _ANNEALED_MODES:
            return 0.0
        iteration = self.iterations if self.built else 0
        return float(ops.convert_to_numpy(self.lambda_at(iteration)))

    # ------------------------------------------------------------------ margin hooks
    def margin_function(self, cos_theta, lambda_value=None):
        """The true-class cosine after the margin (before any scale), e.g. for plotting.

        sphereface/lsoftmax: Ψ(θ) with `lambda_value` (default: `current_lambda()`);
        cosface: cos θ − m; angular modes: cos(m1θ + m2) − m3 with the θ_b rule;
        softmax/normface: cos θ.
        """
        cos_theta = ops.convert_to_tensor(cos_theta, "float32")
        if self.mode in _ANNEALED_MODES:
            if lambda_value is None:
                lambda_value = self.current_lambda()
            psi = sphereface_psi(cos_theta, self.margin)
            return (psi + lambda_value * cos_theta) / (1.0 + lambda_value)
        if self.mode == "cosface":
            return cos_theta - self.margin
        if self.mode in _ANGULAR_MODES:
            m1, m2, m3 = self.margin if self.mode == "combined" else (1.0, self.margin, 0.0)
            return angular_margin(cos_theta, m1, m2, m3, self.easy_margin)
        return cos_theta

    def _reweight_hard_negatives(self, logits, target_cos, cos_y, training):
        """CurricularFace N(t, cos θ_j): cos θ_j (t + cos θ_j) where cos θ_j > target."""
        t = self.curricular_t
        if training:
            batch_mean = ops.stop_gradient(ops.mean(cos_y))
            t_new = self.t_momentum * t + (1.0 - self.t_momentum) * batch_mean
            self.curricular_t.assign(t_new)
            t = t_new
        return curricular_reweight(logits, self.scale * target_cos, ops.cast(t, "float32"), self.scale)

    # ------------------------------------------------------------------ forward
    def call(self, inputs, training=None):
        if isinstance(inputs, (list, tuple)):
            features, labels = inputs
            labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        else:
            features, labels = inputs, None
        features = ops.cast(features, "float32")
        kernel = ops.cast(self.kernel, "float32")
        bias = None if self.bias is None else ops.cast(self.bias, "float32")
        if labels is None:
            return self._plain_logits(features, kernel, bias)[0]
        if training and self.sample_rate < 1.0:
            logits, targets, sampled = self._sampled_logits(features, labels, kernel, bias, training)
            if self.output_mode == "logits":
                logits, targets = _unsampled_filled(logits, sampled, self.num_classes), labels
        else:
            logits, targets = self._margin_logits(features, labels, kernel, bias, training), labels
        if training:
            self.iterations.assign_add(1)
        if self.output_mode == "loss":  # −log softmax(logits)[target], stable
            return ops.logsumexp(logits, axis=1) - _entries(logits, targets)
        return logits

    def _plain_logits(self, features, kernel, bias, labels=None):
        """Logits without margin (the table's "other logits"); with labels also (B,) true ones."""
        # projected: the columns have norm ρ, so W/ρ is unit; 1/ρ scales the (B, D) features
        inverse_centre_norm = 1.0 if self.centre_norm is None else 1.0 / self.centre_norm
        if self.normalize_features:
            features = features * ops.expand_dims(
                (self.scale * inverse_centre_norm) / _l2_norm(features, 1), 1
            )
        elif inverse_centre_norm != 1.0:
            features = features * inverse_centre_norm
        if self.normalize_weights:
            reparametrized = self.weight_normalization == "reparametrized"
            if labels is None:
                return matmul_with_true_logits(features, kernel, None, reparametrized), None
            return matmul_with_true_logits(features, kernel, labels, reparametrized)
        logits = ops.matmul(features, kernel)
        if bias is not None:
            logits = logits + bias
        return logits, None if labels is None else _entries(logits, labels)

    def _margin_logits(self, features, labels, kernel, bias, training):
        if self.mode in ("softmax", "normface"):
            return self._plain_logits(features, kernel, bias)[0]
        if self.mode == "lsoftmax":  # logit = ‖x‖ ‖W_y‖ cos θ
            logits, true_logit, true_norm = matmul_with_true_column_norms(features, kernel, labels)
            radius = _l2_norm(features, 1) * true_norm
        else:
            logits, true_logit = self._plain_logits(features, kernel, bias, labels)
        if self.scale is not None:  # logit = s cos θ
            radius = ops.full_like(true_logit, self.scale)
        elif self.mode == "sphereface":  # logit = ‖x‖ cos θ
            radius = _l2_norm(features, 1)
        cos_y = ops.clip(true_logit / radius, -1.0, 1.0)
        lambda_value = self.lambda_at(self.iterations) if self.mode in _ANNEALED_MODES else None
        target_cos = self.margin_function(cos_y, lambda_value)
        if self.mode == "curricularface":
            logits = self._reweight_hard_negatives(logits, target_cos, cos_y, training)
        return ops.scatter_update(logits, _true_index(labels), radius * target_cos)

    def _sampled_logits(self, features, labels, kernel, bias, training):
        """Partial FC: margin logits (B, S) over the positives + sampled negatives.

        Returns them with the labels' columns among them (B,) and the sampled classes (S,).
        """
        num_classes = self.num_classes
        batch_size = ops.shape(labels)[0]
        num_sampled = max(1, math.ceil(self.sample_rate * num_classes))
        # at least the batch size, so that every positive class fits
        if isinstance(batch_size, int):
            num_sampled = min(num_classes, max(num_sampled, batch_size))
        else:  # TensorFlow graph with an unknown batch size
            num_sampled = ops.minimum(ops.maximum(num_sampled, batch_size), num_classes)
        # random scores in [0, 1); positives get 2 so top-k keeps them all
        scores = keras.random.uniform((num_classes,), seed=self.seed_generator)
        positives = ops.scatter(
            ops.expand_dims(labels, 1), ops.ones_like(labels, dtype="float32"), (num_classes,)
        )
        scores = ops.where(positives > 0, 2.0, scores)
        _, sampled = ops.top_k(scores, num_sampled, sorted=False)
        sampled = ops.cast(sampled, "int32")
        # column of each sampled class among the sampled ones (labels are all sampled)
        position = ops.scatter(
            ops.expand_dims(sampled, 1), ops.arange(num_sampled, dtype="int32"), (num_classes,)
        )
        targets = ops.take(position, labels)
        sampled_logits = self._margin_logits(
            features,
            targets,
            ops.take(kernel, sampled, axis=1),
            None if bias is None else ops.take(bias, sampled),
            training,
        )
        return sampled_logits, targets, sampled

    def compute_output_shape(self, input_shape):
        if _is_pair_shape(input_shape):
            batch_shape = tuple(input_shape[0][:-1])
            return batch_shape if self.output_mode == "loss" else batch_shape + (self.num_classes,)
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def compute_output_spec(self, inputs, training=None):
        if isinstance(inputs, (list, tuple)):
            shape = [tuple(tensor.shape) for tensor in inputs]
        else:
            shape = tuple(inputs.shape)
        return keras.KerasTensor(self.compute_output_shape(shape), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "mode": self.mode,
                "margin": list(self.margin) if isinstance(self.margin, tuple) else self.margin,
                "scale": self.scale,
                "lambda_base": self.lambda_base,
                "lambda_gamma": self.lambda_gamma,
                "lambda_power": self.lambda_power,
                "lambda_min": self.lambda_min,
                "easy_margin": self.easy_margin,
                "t_momentum": self.t_momentum,
                "sample_rate": self.sample_rate,
                "weight_normalization": self.weight_normalization,
                "centre_norm": self.centre_norm,
                "output_mode": self.output_mode,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "seed": self.seed,
            }
        )
        return config


def _unsampled_filled(sampled_logits, sampled, num_classes):
    """(B, C) logits: the sampled classes' columns from `sampled_logits`, −1e9 elsewhere."""
    batch_size = ops.shape(sampled_logits)[0]
    # class-major so that each sampled class is one contiguous row write
    unsampled = ops.full((num_classes, batch_size), _UNSAMPLED_LOGIT, dtype="float32")
    by_class = ops.scatter_update(
        unsampled, ops.expand_dims(sampled, 1), ops.transpose(sampled_logits)
    )
    return ops.transpose(by_class)


@keras.saving.register_keras_serializable(package="keras_sphereface")
def precomputed_loss(y_true, y_pred):
    """The loss for a model ending in `MarginSoftmax(output_mode="loss")`: its output already is
    the per-sample cross-entropy, which Keras then averages (y_true is not used)."""
    del y_true
    return y_pred


def _is_pair_shape(input_shape):
    return isinstance(input_shape, (list, tuple)) and len(input_shape) == 2 and isinstance(
        input_shape[0], (list, tuple)
    )


def _canonical_mode(mode):
    name = mode.lower() if isinstance(mode, str) else mode
    name = _ALIASES.get(name, name)
    if name not in _MODES:
        accepted = ", ".join(repr(m) for m in list(_MODES) + list(_ALIASES))
        raise UserInputError(f"Expected mode to be one of {accepted}. Received: mode={mode!r}")
    return name


def _check_margin(mode, margin):
    if mode in ("softmax", "normface"):
        if margin is not None:
            raise UserInputError(
                f"Expected margin=None for mode {mode!r} (it has no margin). "
                f"Received: margin={margin!r}"
            )
        return None
    if mode in _ANNEALED_MODES:
        if not _is_number(margin) or margin < 1 or float(margin) != int(margin):
            raise UserInputError(
                f"Expected an integer margin m >= 1 for mode {mode!r} (ψ uses cos(mθ); the "
                f"paper uses 4). Received: margin={margin!r}"
            )
        return int(margin)
    if mode == "combined":
        if (
            not isinstance(margin, (list, tuple))
            or len(margin) != 3
            or not all(_is_number(v) for v in margin)
            or margin[0] <= 0
            or margin[1] < 0
            or margin[2] < 0
        ):
            raise UserInputError(
                "Expected margin=(m1, m2, m3) with m1 > 0, m2 >= 0, m3 >= 0 for mode "
                f"'combined' (default (1.0, 0.3, 0.2)). Received: margin={margin!r}"
            )
        return tuple(float(v) for v in margin)
    upper = math.pi if mode in _ANGULAR_MODES else 2.0
    if not _is_number(margin) or not 0.0 <= margin < upper:
        raise UserInputError(
            f"Expected a margin m in [0, {upper:g}) for mode {mode!r}. Received: margin={margin!r}"
        )
    return float(margin)


def _check_weight_normalization(mode, normalize_weights, value):
    if not normalize_weights:
        if value is not None:
            raise UserInputError(
                f"Expected weight_normalization=None for mode {mode!r} (its class centres "
                f"are not normalized). Received: weight_normalization={value!r}"
            )
        return None
    if value is None:
        return "reparametrized"
    if value not in _WEIGHT_NORMALIZATIONS:
        accepted = ", ".join(repr(v) for v in _WEIGHT_NORMALIZATIONS)
        raise UserInputError(
            f"Expected weight_normalization to be one of {accepted} or None. "
            f"Received: weight_normalization={value!r}"
        )
    return value


def _check_centre_norm(weight_normalization, centre_norm):
    if centre_norm is None:
        return None
    if weight_normalization != "projected":
        raise UserInputError(
            "Expected centre_norm=None unless weight_normalization='projected' (only then are "
            f"the columns kept at a norm). Received: centre_norm={centre_norm!r} with "
            f"weight_normalization={weight_normalization!r}"
        )
    if not _is_number(centre_norm) or not centre_norm > 0 or not math.isfinite(centre_norm):
        raise UserInputError(
            f"Expected centre_norm to be a finite number > 0. Received: centre_norm={centre_norm!r}"
        )
    return float(centre_norm)


def _check_scale(mode, scale, default_scale):
    if mode in ("softmax", "lsoftmax"):
        if scale is not None:
            raise UserInputError(
                f"Expected scale=None for mode {mode!r} (its logits are not normalized). "
                f"Received: scale={scale!r}"
            )
        return None
    if scale is None:
        return default_scale
    if not _is_number(scale) or scale <= 0:
        raise UserInputError(f"Expected scale to be a number > 0. Received: scale={scale!r}")
    return float(scale)
