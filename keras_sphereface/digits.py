"""Face recognition in miniature on scikit-learn's bundled digits (no download).

The 1,797 8×8 digit images of scikit-learn stand in for faces: each digit is an "identity".
Used by `python cli/main.py demo` and `examples/visualize_margins.py` to train the margin
family in seconds on a CPU, with the same pieces as the face pipeline (a backbone taking RGB
0..255, `models.build_training_model` with a `MarginSoftmax` head, the embedder interface).

Open-set split (the face-recognition setting): the model trains on some digits and is
verified on pairs of digits it never saw, like LFW identities absent from the training set.
Backend-agnostic: Keras and NumPy only, no TensorFlow import.
"""

import numpy as np

from keras_sphereface.errors import UserInputError

IMAGE_SIZE = (8, 8)


def load_digits_rgb():
    """The 1,797 digits as uint8 RGB images [N, 8, 8, 3] (0..16 scaled to 0..255) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1), digits.target.astype(np.int32)


def open_set_split(labels, train_classes, test_fraction=0.3, seed=0):
    """Index arrays {"train", "seen_test", "unseen"} for an open-set experiment.

    "train": (1 − test_fraction) of the images of `train_classes`, stratified per class;
    "seen_test": the rest of those images (new images of known identities);
    "unseen": every image of the other classes (identities never seen in training).
    """
    labels = np.asarray(labels)
    train_classes = np.asarray(sorted(set(int(c) for c in train_classes)))
    unknown = np.setdiff1d(train_classes, labels)
    if train_classes.size < 2 or unknown.size:
        raise UserInputError(
            f"Expected at least 2 training classes among the labels {sorted(set(labels.tolist()))}. "
            f"Received: {train_classes.tolist()}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise UserInputError(f"Expected 0 < test_fraction < 1. Received: {test_fraction}")
    rng = np.random.default_rng(seed)
    train, seen_test = [], []
    for label in train_classes:
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(len(members) * (1.0 - test_fraction)))
        train.append(members[:cut])
        seen_test.append(members[cut:])
    return {
        "train": np.sort(np.concatenate(train)),
        "seen_test": np.sort(np.concatenate(seen_test)),
        "unseen": np.flatnonzero(~np.isin(labels, train_classes)),
    }


def sample_pairs(labels, pairs_per_fold=30, num_folds=10, seed=0):
    """LFW-style verification pairs among `labels`: (first, second, is_same, folds).

    Each fold holds `pairs_per_fold` matched pairs (same label, distinct images) and as many
    mismatched pairs, drawn at random without repeating a pair; `first`/`second` index into
    `labels`.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if classes.size < 2:
        raise UserInputError(
            f"Expected at least 2 classes to build mismatched pairs. Received: {classes.tolist()}"
        )
    rng = np.random.default_rng(seed)
    wanted = pairs_per_fold * num_folds
    seen = set()
    matched, mismatched = [], []
    attempts = 0
    while len(matched) < wanted or len(mismatched) < wanted:
        attempts += 1
        if attempts > 100 * wanted:
            raise UserInputError(
                f"Expected enough images for {wanted} distinct pairs of each kind. "
                f"Received: {labels.size} images in {classes.size} classes"
            )
        i, j = (int(v) for v in rng.choice(labels.size, size=2, replace=False))
        key = (min(i, j), max(i, j))
        if key in seen:
            continue
        same = labels[i] == labels[j]
        bucket = matched if same else mismatched
        if len(bucket) < wanted:
            seen.add(key)
            bucket.append(key)
    first, second, is_same, folds = [], [], [], []
    for fold in range(num_folds):
        block = slice(fold * pairs_per_fold, (fold + 1) * pairs_per_fold)
        for kind, bucket in ((True, matched), (False, mismatched)):
            for i, j in bucket[block]:
                first.append(i)
                second.append(j)
                is_same.append(kind)
                folds.append(fold)
    return np.array(first), np.array(second), np.array(is_same), np.array(folds)


def digits_backbone(embedding_dim=2, width=32, name="digits_cnn"):
    """A tiny CNN backbone: uint8/float RGB [N, 8, 8, 3] in 0..255 → embedding [N, D].

    Conv(width) → Conv(2·width, stride 2) → Conv(2·width) → Dense(4·width) → Dense(D), ReLU
    and batch normalization between; the last layer is linear (un-normalized embedding, as
    the sphere backbones' fc5).
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=(*IMAGE_SIZE, 3), name="images")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    for filters, strides in ((width, 1), (2 * width, 2), (2 * width, 1)):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(4 * width, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    outputs = layers.Dense(embedding_dim, name="embedding")(x)
    return keras.Model(inputs, outputs, name=name)


def train_digits_model(
    images,
    labels,
    num_classes,
    mode="softmax",
    margin=None,
    scale=None,
    embedding_dim=2,
    width=32,
    epochs=30,
    batch_size=64,
    learning_rate=3e-3,
    callbacks=None,
    seed=0,
    **margin_options,
):
    """Train `digits_backbone` under a `MarginSoftmax(mode, margin, scale, **margin_options)`.

    Adam with a cosine-decayed learning rate, sparse cross-entropy on the margin logits.
    Returns the training model (`models.embedding_model(model)` is its backbone).
    """
    import keras

    from keras_sphereface.models import build_training_model

    keras.utils.set_random_seed(seed)
    backbone = digits_backbone(embedding_dim=embedding_dim, width=width)
    model = build_training_model(
        backbone, num_classes, mode=mode, margin=margin, scale=scale, **margin_options
    )
    steps = epochs * int(np.ceil(len(images) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1))
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(
        {"images": images, "labels": labels},
        labels,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    return model


def verify_digits(backbone, images, labels, pairs_per_fold=30, num_folds=10, seed=0):
    """Verification and hypersphere diagnostics of `backbone` on digit `images`.

    Pairs from `sample_pairs`, scored by `evaluation.protocol.verification_protocol` (the
    LFW protocol: threshold chosen on the other folds, mean-feature subtraction). Returns
    (report, features): the protocol's report plus "alignment" and "uniformity" of the
    features (Wang & Isola 2020).
    """
    from keras_sphereface.evaluation.protocol import verification_protocol
    from keras_sphereface.hypersphere import alignment_and_uniformity

    features = embed(backbone, images)
    first, second, is_same, folds = sample_pairs(
        labels, pairs_per_fold=pairs_per_fold, num_folds=num_folds, seed=seed
    )
    report, _ = verification_protocol(features[first], features[second], is_same, folds)
    report.update(alignment_and_uniformity(features, labels))
    return report, features


def margin_head(model):
    """The `MarginSoftmax` layer of a training model (its kernel holds the class centres)."""
    from keras_sphereface.margins import MarginSoftmax

    return next(layer for layer in model.layers if isinstance(layer, MarginSoftmax))


def embed(backbone, images):
    """The embeddings [N, D] of `images` as float32 NumPy: one inference-mode forward pass
    (the digits are small enough; no `predict` loop, so no retracing per model)."""
    import keras

    features = backbone(np.asarray(images, dtype=np.float32), training=False)
    return np.asarray(keras.ops.convert_to_numpy(features), dtype=np.float32)
