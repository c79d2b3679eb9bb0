"""Embedding-only SavedModel in TF Serving's layout, and an embedder that reads it back.

Layout: `export_dir/<version>/saved_model.pb` + `variables/`, the version written to a
temporary directory and renamed (a kill leaves the previous versions intact, and TF Serving
ignores the temporary name because it is not a number). Signatures:

- `serving_default`: `images` [None, H, W, 3] aligned RGB 0..255 (uint8 by default, or
  float32) -> `embeddings` [None, D] float32, e(x) / |e(x)|; the backbone's preprocessing
  is inside the graph.
- `serving_flip` (flip fusion, as in the SphereFace LFW protocol): u + u' normalized, where
  u, u' are the normalized embeddings of the image and of its horizontal mirror.

Both signatures share one copy of the variables. The graph is traced with
`keras.export.ExportArchive`, so a model on the TensorFlow backend exports as plain TF ops
and one on the JAX backend through jax2tf (one `XlaCallModule` op holding StableHLO; the tests
run it with the TensorFlow runtime and convert it to TFLite). For the most portable artefact,
export a JAX-trained `.keras` file on the TensorFlow backend: the weights are the same.
"""

import os

import numpy as np

from keras_sphereface.atomic import atomic_directory
from keras_sphereface.errors import UserInputError
from keras_sphereface.export.images import check_image_batch

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
DEFAULT_SIGNATURE = "serving_default"
FLIP_SIGNATURE = "serving_flip"
INPUT_DTYPES = ("uint8", "float32")


def as_backbone(model):
    """The embedding backbone of `model`: itself if it maps one image input to [N, D], else the
    backbone nested in a training model (`keras_sphereface.models.embedding_model`)."""
    inputs = model.inputs if hasattr(model, "inputs") else None
    if inputs and len(inputs) == 1 and len(inputs[0].shape) == 4:
        return model
    from keras_sphereface.models import embedding_model

    return embedding_model(model)


def input_size_of(model):
    """(H, W) of a backbone's image input."""
    shape = tuple(model.inputs[0].shape)
    height, width, channels = shape[1:] if len(shape) == 4 else (None, None, None)
    if height is None or width is None or channels != 3:
        raise UserInputError(
            f"Expected a backbone with a fixed RGB input shape (None, H, W, 3). "
            f"Received: {tuple(model.inputs[0].shape)}"
        )
    return int(height), int(width)


def write_saved_model(model, path, input_dtype="uint8", flip_signature=True):
    """Write the embedding SavedModel of backbone `model` at `path` (no versioning, no rename:
    the building block of `export_saved_model` and `export_tflite`)."""
    import keras
    import tensorflow as tf
    from keras import ops

    if input_dtype not in INPUT_DTYPES:
        raise UserInputError(f"Expected input_dtype in {INPUT_DTYPES}. Received: {input_dtype!r}")
    model = as_backbone(model)
    height, width = input_size_of(model)

    def normalize(features):
        features = ops.cast(features, "float32")
        squared = ops.sum(features * features, axis=-1, keepdims=True)
        return features * ops.rsqrt(ops.maximum(squared, 1e-12))

    def embed(images):
        return {OUTPUT_NAME: normalize(model(ops.cast(images, "float32"), training=False))}

    def embed_with_flip(images):
        images = ops.cast(images, "float32")
        unit = normalize(model(images, training=False))
        mirrored = normalize(model(ops.flip(images, axis=2), training=False))
        return {OUTPUT_NAME: normalize(unit + mirrored)}

    archive = keras.export.ExportArchive()
    if keras.backend.backend() != "tensorflow":
        # jax2tf needs the variables registered up front. On the TensorFlow backend this is
        # skipped: the archive finds the variables the functions capture, and tracking the
        # model as well would store every weight twice (Keras variable + its tf.Variable).
        archive.track(model)
    signature = [tf.TensorSpec([None, height, width, 3], input_dtype, name=INPUT_NAME)]
    archive.add_endpoint(DEFAULT_SIGNATURE, embed, input_signature=signature)
    if flip_signature:
        archive.add_endpoint(FLIP_SIGNATURE, embed_with_flip, input_signature=signature)
    archive.write_out(os.fspath(path), verbose=False)


def export_saved_model(
    model, export_dir, version=1, overwrite=False, input_dtype="uint8", flip_signature=True
):
    """Export backbone `model` to `export_dir/<version>/` for TF Serving; returns that path.

    `model`: a backbone keras.Model (images RGB 0..255 in, embedding out) or a training model
    holding one. An existing version raises FileExistsError unless `overwrite=True`, and is
    only replaced once the new one is completely written.
    """
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise UserInputError(f"Expected a positive integer version. Received: {version!r}")
    version_dir = os.path.join(os.fspath(export_dir), str(int(version)))
    with atomic_directory(version_dir, overwrite=overwrite) as tmp:
        write_saved_model(model, tmp, input_dtype=input_dtype, flip_signature=flip_signature)
    return version_dir


def resolve_saved_model_dir(path):
    """`path` if it holds saved_model.pb, else its highest numeric version subdirectory."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = []
    if os.path.isdir(path):
        versions = [
            int(name)
            for name in os.listdir(path)
            if name.isdigit() and os.path.isfile(os.path.join(path, name, "saved_model.pb"))
        ]
    if not versions:
        raise UserInputError(
            f"Expected a SavedModel directory (with saved_model.pb) or a TF Serving export "
            f"directory with numeric version subdirectories. Received: {path}"
        )
    return os.path.join(path, str(max(versions)))


def describe_saved_model(path):
    """The signatures of the SavedModel at `path`, in `saved_model_cli show --all`'s format."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    path = resolve_saved_model_dir(path)
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    lines = [f"SavedModel: {path}"]
    for meta_graph in saved_model.meta_graphs:
        tags = ", ".join(meta_graph.meta_info_def.tags)
        lines.append(f"MetaGraphDef with tag-set: '{tags}' contains the following SignatureDefs:")
        for key in sorted(k for k in meta_graph.signature_def if not k.startswith("__")):
            signature = meta_graph.signature_def[key]
            lines.append(f"\nsignature_def['{key}']:")
            for kind, tensors in (("input", signature.inputs), ("output", signature.outputs)):
                lines.append(
                    f"  The given SavedModel SignatureDef contains the following {kind}(s):"
                )
                for name, info in sorted(tensors.items()):
                    shape = tuple(d.size for d in info.tensor_shape.dim)
                    lines += [
                        f"    {kind}s['{name}'] tensor_info:",
                        f"        dtype: {types_pb2.DataType.Name(info.dtype)}",
                        f"        shape: {shape}",
                        f"        name: {info.name}",
                    ]
            lines.append(f"  Method name is: {signature.method_name}")
    return "\n".join(lines)


class SavedModelEmbedder:
    """Embedder over an exported SavedModel: `embedder(uint8 [N, H, W, 3])` -> float32 [N, D].

    `signature`: "serving_default" (plain) or "serving_flip" (flip fusion). Batches are fed
    `batch_size` images at a time.
    """

    def __init__(self, path, signature=DEFAULT_SIGNATURE, batch_size=64):
        import tensorflow as tf

        self.path = resolve_saved_model_dir(path)
        self._loaded = tf.saved_model.load(self.path)
        if signature not in self._loaded.signatures:
            raise UserInputError(
                f"Expected a signature in {sorted(self._loaded.signatures)} of {self.path}. "
                f"Received: {signature!r}"
            )
        self._function = self._loaded.signatures[signature]
        inputs = self._function.structured_input_signature[1]
        outputs = self._function.structured_outputs
        if list(inputs) != [INPUT_NAME] or list(outputs) != [OUTPUT_NAME]:
            raise UserInputError(
                f"Expected the {signature!r} signature of {self.path} to map {INPUT_NAME} -> "
                f"{OUTPUT_NAME} (an export of this package). Received: {sorted(inputs)} -> "
                f"{sorted(outputs)}"
            )
        spec = inputs[INPUT_NAME]
        self.input_size = (int(spec.shape[1]), int(spec.shape[2]))
        self._dtype = spec.dtype
        self.batch_size = batch_size

    def __call__(self, images):
        import tensorflow as tf

        images = check_image_batch(images, self.input_size)
        if len(images) == 0:
            dim = self._function.structured_outputs[OUTPUT_NAME].shape[-1]
            return np.zeros((0, dim), np.float32)
        outputs = []
        for start in range(0, len(images), self.batch_size):
            batch = tf.constant(images[start : start + self.batch_size], self._dtype)
            outputs.append(self._function(**{INPUT_NAME: batch})[OUTPUT_NAME].numpy())
        return np.concatenate(outputs).astype(np.float32)


def load_saved_model_embedder(path, signature=DEFAULT_SIGNATURE, batch_size=64):
    """Embedder over the SavedModel at `path` (a version dir, or the export dir: its highest
    version)."""
    return SavedModelEmbedder(path, signature=signature, batch_size=batch_size)
