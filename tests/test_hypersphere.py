"""Alignment / uniformity (Wang & Isola 2020) against NumPy formulas written here, and the
feature plot."""

import itertools
import math

import numpy as np
import pytest

from keras_sphereface import hypersphere
from keras_sphereface.errors import UserInputError


def _unit(rows):
    return [np.array(r, dtype=np.float64) / math.sqrt(sum(v * v for v in r)) for r in rows]


def _reference_uniformity(features, t=2.0):
    # log( 1/#pairs * sum_{i<j} exp(-t * |u_i - u_j|^2) ), plain loops over pairs
    units = _unit(features)
    terms = [
        math.exp(-t * float(np.sum((units[i] - units[j]) ** 2)))
        for i, j in itertools.combinations(range(len(units)), 2)
    ]
    return math.log(sum(terms) / len(terms))


def _reference_alignment(first, second, alpha=2.0):
    distances = [
        math.sqrt(float(np.sum((a - b) ** 2))) ** alpha for a, b in zip(_unit(first), _unit(second))
    ]
    return sum(distances) / len(distances)


@pytest.mark.multi_backend
def test_uniformity_matches_pairwise_formula():
    features = np.random.default_rng(0).normal(size=(37, 5)) * 3.0
    expected = _reference_uniformity(features.tolist())
    assert hypersphere.uniformity_loss(features) == pytest.approx(expected, rel=1e-10)
    # chunking must not change the result
    assert hypersphere.uniformity_loss(features, chunk_size=4) == pytest.approx(expected, rel=1e-10)
    assert hypersphere.uniformity_loss(features, t=0.5) == pytest.approx(
        _reference_uniformity(features.tolist(), t=0.5), rel=1e-10
    )


def test_uniformity_known_configurations():
    # all on one point: every distance 0 -> log(1) = 0, the worst value
    assert hypersphere.uniformity_loss(np.ones((6, 3))) == pytest.approx(0.0, abs=1e-12)
    # two antipodal points: |u - v|^2 = 4 -> log(exp(-8)) = -8
    assert hypersphere.uniformity_loss(np.array([[0.0, 2.0], [0.0, -5.0]])) == pytest.approx(-8.0)


@pytest.mark.multi_backend
def test_alignment_matches_formula_and_ignores_norm():
    rng = np.random.default_rng(1)
    first, second = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
    expected = _reference_alignment(first.tolist(), second.tolist())
    assert hypersphere.alignment_loss(first, second) == pytest.approx(expected, rel=1e-10)
    assert hypersphere.alignment_loss(first * 7.0, second * 0.1) == pytest.approx(expected, rel=1e-10)
    assert hypersphere.alignment_loss(first, second, alpha=1.0) == pytest.approx(
        _reference_alignment(first.tolist(), second.tolist(), alpha=1.0), rel=1e-10
    )
    assert hypersphere.alignment_loss(first, first * 3.0) == pytest.approx(0.0, abs=1e-12)


def test_class_alignment_uses_every_same_label_pair():
    features = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [5.0, 5.0], [1.0, 1.0]])
    labels = np.array([0, 0, 0, 1, 2])
    # class 0 pairs: (0,1): 2, (0,2): 4, (1,2): 2 ; class 1 and 2 have no pair
    assert hypersphere.class_alignment_loss(features, labels) == pytest.approx(8.0 / 3.0)
    with pytest.raises(UserInputError, match="one label per feature"):
        hypersphere.class_alignment_loss(features, labels[:3])


def test_bad_shapes_are_user_errors():
    with pytest.raises(UserInputError, match="Expected the two sides"):
        hypersphere.alignment_loss(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(UserInputError, match="at least 2 features"):
        hypersphere.uniformity_loss(np.ones((1, 2)))
    with pytest.raises(UserInputError, match="non-empty 2-D"):
        hypersphere.uniformity_loss(np.ones(5))


def test_class_centre_directions_are_unit_columns():
    kernel = np.array([[3.0, 0.0, 1.0], [4.0, -2.0, 1.0]])
    centres = hypersphere.class_centre_directions(kernel)
    np.testing.assert_allclose(centres, [[0.6, 0.8], [0.0, -1.0], [2**-0.5, 2**-0.5]])


@pytest.mark.parametrize("dim", [2, 3])
def test_plot_features_draws_points_and_centre_rays(dim, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(30, dim)), np.arange(30) % 3
    centres = hypersphere.class_centre_directions(rng.normal(size=(dim, 3)))
    figure = plt.figure()
    ax = figure.add_subplot(projection="3d" if dim == 3 else None)
    hypersphere.plot_features(ax, features, labels, centres=centres, title="t")
    assert len(ax.collections) >= 1
    assert len(ax.lines) >= 3  # one ray per class centre
    figure.savefig(tmp_path / "plot.png")
    plt.close(figure)
    assert (tmp_path / "plot.png").stat().st_size > 0
