"""Diagnostics of an embedding on the hypersphere: alignment, uniformity and pictures.

Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere", ICML 2020. With f(x) the L2-normalized feature:

    L_align   = E_{(x, y) positive pairs} ‖f(x) − f(y)‖₂^α             (α = 2; lower is better)
    L_uniform = log E_{(x, y) all pairs} exp(−t ‖f(x) − f(y)‖₂²)        (t = 2; lower is better)

Alignment says how close same-identity features sit, uniformity how evenly all features
spread over the sphere (its minimum, for many points on S^{d-1}, approaches −t·2 = −4 in high
dimension). Both work on NumPy arrays of extracted embeddings, on any backend.

The plotting helper draws 2-D features in the plane (with the class-centre directions, the
normalized columns of the classifier's weight matrix, as rays from the origin) and 3-D
features on the unit sphere: the pictures of the SphereFace paper (Fig. 2 and 5).
"""

import numpy as np

from keras_sphereface.errors import UserInputError
from keras_sphereface.evaluation.protocol import l2_normalize


def _as_matrix(features, name):
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise UserInputError(
            f"Expected `{name}` as a non-empty 2-D array (samples, dimensions). "
            f"Received: shape {features.shape}"
        )
    return features


def alignment_loss(features_a, features_b, alpha=2.0):
    """L_align = mean over pairs i of ‖f(a_i) − f(b_i)‖₂^α, rows L2-normalized first.

    `features_a[i]` and `features_b[i]` are the two members of positive pair i.
    """
    features_a = _as_matrix(features_a, "features_a")
    features_b = _as_matrix(features_b, "features_b")
    if features_a.shape != features_b.shape:
        raise UserInputError(
            f"Expected the two sides of the positive pairs to have the same shape. "
            f"Received: {features_a.shape} and {features_b.shape}"
        )
    distances = np.linalg.norm(l2_normalize(features_a) - l2_normalize(features_b), axis=-1)
    return float(np.mean(distances**alpha))


def uniformity_loss(features, t=2.0, chunk_size=2048):
    """L_uniform = log of the mean over pairs i < j of exp(−t‖f(x_i) − f(x_j)‖₂²).

    Rows are L2-normalized first; for unit vectors ‖u − v‖² = 2 − 2 u·v. Computed in row
    chunks so that tens of thousands of features fit in memory.
    """
    features = l2_normalize(_as_matrix(features, "features"))
    count = features.shape[0]
    if count < 2:
        raise UserInputError(f"Expected at least 2 features for uniformity. Received: {count}")
    total = 0.0
    for start in range(0, count, chunk_size):
        block = features[start : start + chunk_size]
        squared = np.maximum(2.0 - 2.0 * block @ features.T, 0.0)
        # keep only pairs (i, j) with j > i, i the global row index
        rows = np.arange(start, start + block.shape[0])[:, None]
        upper = np.arange(count)[None, :] > rows
        total += float(np.sum(np.exp(-t * squared) * upper))
    return float(np.log(total / (count * (count - 1) / 2)))


def class_alignment_loss(features, labels, alpha=2.0):
    """L_align over every pair of distinct samples sharing a label."""
    features = _as_matrix(features, "features")
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != features.shape[0]:
        raise UserInputError(
            f"Expected one label per feature row. Received: {labels.shape[0]} labels for "
            f"{features.shape[0]} rows"
        )
    first, second = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        i, j = np.triu_indices(len(members), k=1)
        first.append(members[i])
        second.append(members[j])
    first, second = np.concatenate(first), np.concatenate(second)
    if first.size == 0:
        raise UserInputError("Expected at least one label with 2 or more samples. Received: none")
    return alignment_loss(features[first], features[second], alpha=alpha)


def alignment_and_uniformity(features, labels, alpha=2.0, t=2.0):
    """Both diagnostics of a labelled embedding: {"alignment": …, "uniformity": …}."""
    return {
        "alignment": class_alignment_loss(features, labels, alpha=alpha),
        "uniformity": uniformity_loss(features, t=t),
    }


def class_centre_directions(kernel):
    """Unit class-centre directions (num_classes, dim) from a (dim, num_classes) weight matrix."""
    kernel = _as_matrix(kernel, "kernel")
    return l2_normalize(np.asarray(kernel).T)


def plot_features(ax, features, labels, centres=None, title=None, class_names=None):
    """Scatter 2-D features in the plane or 3-D features on the unit sphere.

    `ax` is a matplotlib axis (a 3-D one, `projection="3d"`, for 3-D features). `centres`
    are the class-centre directions (num_classes, dim), drawn as rays from the origin in the
    colour of their class. 2-D features are drawn as they are (their norm is part of what
    softmax learns); 3-D features are normalized onto the sphere, the A-Softmax picture.
    """
    features = np.asarray(_as_matrix(features, "features"), dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    dim = features.shape[1]
    if dim not in (2, 3):
        raise UserInputError(f"Expected 2-D or 3-D features to plot. Received: {dim}-D")
    import matplotlib.pyplot as plt

    classes = np.unique(labels) if centres is None else np.arange(len(centres))
    classes = np.union1d(classes, np.unique(labels))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    colour_of = {label: colours(i % colours.N) for i, label in enumerate(classes)}
    point_colours = [colour_of[label] for label in labels]

    if dim == 2:
        ax.scatter(features[:, 0], features[:, 1], c=point_colours, s=3, alpha=0.6, linewidths=0)
        reach = float(np.percentile(np.linalg.norm(features, axis=1), 98)) or 1.0
        if centres is not None:
            for label, direction in enumerate(l2_normalize(centres)):
                ax.plot([0, reach * direction[0]], [0, reach * direction[1]],
                        color=colour_of[label], linewidth=1.5)
        ax.set_xlim(-1.1 * reach, 1.1 * reach)
        ax.set_ylim(-1.1 * reach, 1.1 * reach)
        ax.set_aspect("equal")
        ax.axhline(0, color="0.85", linewidth=0.5, zorder=0)
        ax.axvline(0, color="0.85", linewidth=0.5, zorder=0)
    else:
        points = l2_normalize(features)
        u, v = np.mgrid[0 : 2 * np.pi : 25j, 0 : np.pi : 13j]
        ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v),
                          color="0.85", linewidth=0.3)
        ax.scatter(points[:, 0], points[:, 1], points[:, 2], c=point_colours, s=3, alpha=0.8,
                   linewidths=0, depthshade=False)
        if centres is not None:
            for label, direction in enumerate(l2_normalize(centres)):
                ax.plot([0, 1.3 * direction[0]], [0, 1.3 * direction[1]], [0, 1.3 * direction[2]],
                        color=colour_of[label], linewidth=1.5)
        ax.set_box_aspect((1, 1, 1))
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_zlim(-1, 1)
    ax.set_xticks([])
    ax.set_yticks([])
    if dim == 3:
        ax.set_zticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if class_names is not None:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=colour_of[label],
                              label=str(class_names[i]))
                   for i, label in enumerate(classes) if i < len(class_names)]
        ax.legend(handles=handles, fontsize=6, loc="upper right", markerscale=0.8,
                  handletextpad=0.1, borderpad=0.2, labelspacing=0.2)
    return ax
