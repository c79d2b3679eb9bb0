"""Embedding extraction for evaluation: load a model, align faces, embed in batches, cache.

The embedder interface used across the project: a callable `embedder(images)` taking uint8
RGB [N, H, W, 3] and returning float32 [N, D], with attribute `input_size` = (H, W).
`load_embedder(path)` turns a `.keras` file, a training run directory, an exported SavedModel
or a `.tflite` file into one.

Flip fusion (SphereFace evaluation code, Liu et al. 2017): embed the face and its horizontal
mirror and concatenate ([e, e_flip], 2D) or sum (e + e_flip, D) the two vectors.

The cache is an `.npz` whose keys are image paths relative to the images folder (the format
`--embeddings` reads), plus a `__settings__` entry recording the model and preprocessing it
was made with. It is rewritten atomically every `save_every` seconds, so a killed run resumes
where the last save left off.
"""

import concurrent.futures
import json
import os
import sys
import time
import zipfile

import numpy as np

from keras_sphereface.alignment.detect import UnreadableImage, read_image
from keras_sphereface.alignment.folder import align_image
from keras_sphereface.atomic import atomic_path
from keras_sphereface.errors import UserInputError
from keras_sphereface.evaluation.protocol import l2_normalize

FUSIONS = ("concat", "sum")
SETTINGS_KEY = "__settings__"


class KerasEmbedder:
    """Wrap a Keras embedding model (uint8/float RGB in) as an embedder.

    Returns L2-normalized embeddings, like the exported SavedModel and TFLite signatures, so
    that every format goes through the protocol (flip fusion, mean subtraction) identically.
    """

    def __init__(self, model, source=None):
        self.model = model
        shape = model.input_shape
        if not (isinstance(shape, tuple) and len(shape) == 4 and shape[3] == 3 and all(shape[1:3])):
            raise UserInputError(
                f"Expected an embedding model taking RGB images (None, H, W, 3). Received: "
                f"{source or repr(model.name)} with input shape {shape}"
            )
        height, width = shape[1:3]
        self.input_size = (int(height), int(width))

    def __call__(self, images):
        features = self.model.predict_on_batch(np.asarray(images))
        return l2_normalize(np.asarray(features)).astype(np.float32)


def _is_saved_model(path):
    """A SavedModel directory, or a TF Serving export directory of numbered versions."""
    if not os.path.isdir(path):
        return False
    candidates = [path] + [os.path.join(path, n) for n in os.listdir(path) if n.isdigit()]
    return any(os.path.isfile(os.path.join(c, "saved_model.pb")) for c in candidates)


def load_embedder(path):
    """An embedder from a `.keras` file, a training run directory, a SavedModel or a `.tflite`.

    An object that already follows the embedder interface (callable with `input_size`) is
    returned as is; a `keras.Model` is wrapped in `KerasEmbedder`.
    """
    if callable(path) and hasattr(path, "input_size"):
        return path
    if hasattr(path, "input_shape") and hasattr(path, "predict_on_batch"):
        return KerasEmbedder(path)
    path = os.fspath(path)
    if path.endswith(".tflite") and os.path.isfile(path):
        from keras_sphereface.export import LiteRTEmbedder

        return LiteRTEmbedder(path)
    if (path.endswith(".keras") and os.path.isfile(path)) or (
        os.path.isfile(os.path.join(path, "checkpoint.keras"))
    ):
        from keras_sphereface.models import load_embedding_model

        return KerasEmbedder(load_embedding_model(path), source=path)
    if _is_saved_model(path):
        from keras_sphereface.export import load_saved_model_embedder

        return load_saved_model_embedder(path)
    raise UserInputError(
        "Expected a model: a .keras file, a training run directory (with checkpoint.keras), "
        "an exported SavedModel (a directory with saved_model.pb, or numbered versions of one) "
        f"or a .tflite file. Received: {path}"
    )


class FacePreparer:
    """Turn an image file into the model's input crop.

    With `landmarks` ({relative path: (5, 2)}), the face is warped onto the SphereFace
    template by `alignment.align_image`; an image missing from the landmarks (no face found)
    is aligned with the mean LFW landmarks at the image centre and recorded in
    `fallback_paths`, so every pair is still scored and the report names those images.
    Without landmarks the images must already be aligned crops of the model's input size.
    """

    def __init__(self, images_dir, input_size, landmarks=None):
        self.images_dir = os.fspath(images_dir)
        self.input_size = tuple(int(v) for v in input_size)
        self.landmarks = landmarks
        self.fallback_paths = []

    def __call__(self, relpath):
        path = os.path.join(self.images_dir, relpath)
        if self.landmarks is not None:
            record, crop = align_image(
                path, relpath, size=self.input_size, landmarks_table=self.landmarks
            )
            if crop is None:
                raise UserInputError(
                    f"Expected a readable image. Received: {path} ({record.reason})"
                )
            if record.status == "fallback":
                self.fallback_paths.append(relpath)
            return crop
        try:
            image, _ = read_image(path)
        except UnreadableImage as error:
            raise UserInputError(f"Expected a readable image. Received: {path} ({error})") from None
        if image.shape[:2] != self.input_size:
            raise UserInputError(
                f"Expected an aligned face crop of {self.input_size[0]}x{self.input_size[1]} "
                f"(the model's input size), or a landmarks file to align from. "
                f"Received: a {image.shape[0]}x{image.shape[1]} image, {path}"
            )
        return image


def embed_batch(embedder, images, flip=True, fusion="concat"):
    """Embed uint8 [N, H, W, 3]; with `flip`, fuse with the mirror image (concat or sum)."""
    if fusion not in FUSIONS:
        raise UserInputError(f"Expected a fusion in {FUSIONS}. Received: {fusion!r}")
    if not flip:
        return np.asarray(embedder(images), dtype=np.float32)
    both = np.asarray(embedder(np.concatenate([images, images[:, :, ::-1]])), dtype=np.float32)
    plain, mirrored = both[: len(images)], both[len(images) :]
    if fusion == "concat":
        return np.concatenate([plain, mirrored], axis=1)
    return plain + mirrored


def load_embeddings_file(path):
    """Read an `.npz` {relative image path: vector} → (dict, settings dict or None)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserInputError(f"Expected an existing .npz embeddings file. Received: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            settings = json.loads(str(data[SETTINGS_KEY])) if SETTINGS_KEY in data.files else None
            embeddings = {
                key: np.asarray(data[key], dtype=np.float32).reshape(-1)
                for key in data.files
                if key != SETTINGS_KEY
            }
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # empty, torn, text
        raise UserInputError(
            f"Expected an .npz file of {{relative image path: embedding vector}}. "
            f"Received: {path} ({error})"
        ) from None
    return embeddings, settings


def save_embeddings_file(path, embeddings, settings=None):
    """Write {relative image path: vector} (+ settings) as an `.npz`, atomically."""
    arrays = dict(embeddings)
    if settings is not None:
        arrays[SETTINGS_KEY] = np.array(json.dumps(settings, sort_keys=True))
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def _progress_bar(total, progress):
    if not progress or total == 0:
        return None
    import keras

    return keras.utils.Progbar(total, verbose=1 if sys.stdout.isatty() else 2, unit_name="image")


def extract_embeddings(
    embedder,
    relpaths,
    images_dir,
    landmarks=None,
    flip=True,
    fusion="concat",
    batch_size=64,
    cache_path=None,
    cache_settings=None,
    save_every=30.0,
    progress=True,
):
    """Embed every image of `relpaths` (relative to `images_dir`) → (dict path → vector, info).

    Images already in the cache are not recomputed; a cache made with other
    `cache_settings` (model, flip, fusion, alignment) is refused rather than mixed.
    `info` holds the number of images computed, the seconds spent and the images aligned
    with the fallback landmarks (not in `landmarks`).
    """
    if batch_size < 1:
        raise UserInputError(f"Expected a batch size >= 1. Received: {batch_size}")
    relpaths = sorted(set(relpaths))
    settings = dict(cache_settings or {})
    settings.update(
        input_size=list(embedder.input_size), flip=bool(flip), fusion=fusion if flip else None
    )
    embeddings = {}
    if cache_path is not None and os.path.exists(cache_path):
        embeddings, cached_settings = load_embeddings_file(cache_path)
        if cached_settings != settings:
            raise UserInputError(
                f"Expected the cache {cache_path} to come from the same model and settings "
                f"{settings}. Received: a cache made with {cached_settings}; delete it or "
                f"choose another cache file"
            )
    todo = [p for p in relpaths if p not in embeddings]
    prepare = FacePreparer(images_dir, embedder.input_size, landmarks)
    bar = _progress_bar(len(todo), progress)
    started = last_save = time.perf_counter()
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        pending = [pool.submit(prepare, p) for p in batches[0]] if batches else []
        for index, batch in enumerate(batches):
            images = np.stack([future.result() for future in pending])
            if index + 1 < len(batches):  # decode the next batch while this one runs
                pending = [pool.submit(prepare, p) for p in batches[index + 1]]
            vectors = embed_batch(embedder, images, flip=flip, fusion=fusion)
            embeddings.update(zip(batch, vectors))
            if bar is not None:
                bar.add(len(batch))
            if cache_path is not None and time.perf_counter() - last_save >= save_every:
                save_embeddings_file(cache_path, embeddings, settings)
                last_save = time.perf_counter()
    seconds = time.perf_counter() - started
    if cache_path is not None and (todo or not os.path.exists(cache_path)):
        save_embeddings_file(cache_path, embeddings, settings)
    info = {
        "images": len(relpaths),
        "images_computed": len(todo),
        "images_from_cache": len(relpaths) - len(todo),
        "seconds": seconds,
        "images_per_second": len(todo) / seconds if todo and seconds > 0 else None,
        "fallback_alignment": sorted(
            set(prepare.fallback_paths)
            | ({p for p in relpaths if p not in landmarks} if landmarks is not None else set())
        ),
    }
    return {p: embeddings[p] for p in relpaths}, info
