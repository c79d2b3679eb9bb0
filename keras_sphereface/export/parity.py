"""How closely an exported artefact reproduces the Keras model.

Both sides are compared as L2-normalized embeddings (what the exported signatures return):
max |e_keras - e_export| over all coordinates, and the minimum cosine over the batch,
cos_i = <e_keras_i, e_export_i> / (|e_keras_i| |e_export_i|).
"""

import numpy as np

from keras_sphereface.evaluation.protocol import l2_normalize


def keras_embeddings(model, images, batch_size=32):
    """L2-normalized float64 embeddings of uint8 `images` by the Keras backbone `model`."""
    features = model.predict(np.asarray(images, dtype=np.float32), batch_size=batch_size, verbose=0)
    return l2_normalize(features)


def embedding_parity(reference, candidate):
    """{"max_abs_diff", "min_cosine"} between two [N, D] embedding batches (normalized here)."""
    reference, candidate = l2_normalize(reference), l2_normalize(candidate)
    return {
        "max_abs_diff": float(np.max(np.abs(reference - candidate))),
        "min_cosine": float(np.min(np.sum(reference * candidate, axis=-1))),
    }
