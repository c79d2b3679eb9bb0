"""Face verification evaluation: pair lists, embedding extraction, the 10-fold protocol.

`evaluate_lfw(model=...)` runs LFW View 2 end to end; the pieces are usable on their own:
`read_pairs` (pairs.py), `load_embedder` / `extract_embeddings` (extract.py) and
`verification_protocol` / `plot_roc` (protocol.py, pure NumPy).
"""

from keras_sphereface.evaluation.extract import (
    KerasEmbedder,
    extract_embeddings,
    load_embedder,
    load_embeddings_file,
    save_embeddings_file,
)
from keras_sphereface.evaluation.lfw import evaluate_lfw, resolve_lfw_dir
from keras_sphereface.evaluation.pairs import PairList, read_pairs
from keras_sphereface.evaluation.protocol import (
    best_threshold,
    plot_roc,
    roc_curve,
    verification_protocol,
)
