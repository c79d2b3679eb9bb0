"""TFLite export (float32, float16, dynamic-range or full-int8) and a LiteRT embedder.

The `.tflite` file is converted from the `serving_default` signature of the embedding
SavedModel (same input `images`, same output `embeddings`, L2-normalized), so it runs with
the backbone's preprocessing inside. Quantization modes (TFLite post-training quantization):

- "none": float32 weights and activations.
- "float16": weights stored as float16 (half the size), computed in float32.
- "dynamic": int8 weights, activations quantized on the fly.
- "int8": int8 weights and activations, ranges calibrated on `representative_images`
  (aligned faces, ~100 are enough); the input stays the signature's dtype and the output
  float32.

Inference uses the LiteRT interpreter (`ai_edge_litert`), not the deprecated
`tf.lite.Interpreter`.
"""

import os
import tempfile
import warnings

import numpy as np

from keras_sphereface.atomic import atomic_path
from keras_sphereface.errors import UserInputError
from keras_sphereface.export.images import check_image_batch
from keras_sphereface.export.saved_model import (
    DEFAULT_SIGNATURE,
    INPUT_NAME,
    OUTPUT_NAME,
    as_backbone,
    input_size_of,
    write_saved_model,
)

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")


def float32_copy(model):
    """`model` computing in float32, same weights: a mixed-precision (bfloat16 / float16)
    backbone is cloned layer by layer with a float32 dtype policy, since the TFLite converter
    has no bfloat16 kernels (float16 is `quantization="float16"`'s business)."""
    import keras

    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        return model

    def clone(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def export_tflite(
    model,
    path,
    quantization="none",
    representative_images=None,
    overwrite=False,
    input_dtype="uint8",
):
    """Convert backbone `model` to a `.tflite` file at `path`; returns `path`.

    `representative_images`: uint8 [N, H, W, 3] aligned faces, required for "int8".
    An existing file raises FileExistsError unless `overwrite=True`.
    """
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise UserInputError(
            f"Expected quantization in {QUANTIZATIONS}. Received: {quantization!r}"
        )
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"Expected a path that does not exist yet (pass overwrite=True to replace it). "
            f"Received: {path}"
        )
    model = float32_copy(as_backbone(model))
    if quantization == "int8":
        if representative_images is None:
            raise UserInputError(
                "Expected representative_images (aligned faces) for int8 quantization. "
                "Received: None"
            )
        representative_images = check_image_batch(representative_images, input_size_of(model))

    with tempfile.TemporaryDirectory(prefix="keras_sphereface_tflite_") as saved_model_dir:
        write_saved_model(model, saved_model_dir, input_dtype=input_dtype, flip_signature=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved_model_dir, signature_keys=[DEFAULT_SIGNATURE]
        )
        if quantization != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantization == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

            def representative_dataset():
                for image in representative_images:
                    yield {INPUT_NAME: image[None].astype(input_dtype)}

            converter.representative_dataset = representative_dataset
        with warnings.catch_warnings():
            # The converter's own int8 calibrator still runs tf.lite.Interpreter internally.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            flatbuffer = converter.convert()

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(flatbuffer)
    return path


class LiteRTEmbedder:
    """Embedder over a `.tflite` file: `embedder(uint8 [N, H, W, 3])` -> float32 [N, D].

    Runs the `serving_default` signature with the LiteRT interpreter (its signature runner
    resizes the batch dimension to N).
    """

    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise UserInputError(f"Expected an existing .tflite file. Received: {self.path}")
        try:
            interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        except ValueError as error:
            raise UserInputError(
                f"Expected a TFLite flatbuffer. Received: {self.path} ({error})"
            ) from None
        signatures = interpreter.get_signature_list()
        if signatures.get(DEFAULT_SIGNATURE) != {"inputs": [INPUT_NAME], "outputs": [OUTPUT_NAME]}:
            raise UserInputError(
                f"Expected a '{DEFAULT_SIGNATURE}' signature {INPUT_NAME} -> {OUTPUT_NAME} in "
                f"{self.path}. Received: {signatures}"
            )
        self._interpreter = interpreter
        self._runner = interpreter.get_signature_runner(DEFAULT_SIGNATURE)
        input_detail = self._runner.get_input_details()[INPUT_NAME]
        _, height, width, _ = input_detail["shape_signature"]
        self.input_size = (int(height), int(width))
        self._dtype = input_detail["dtype"]

    def __call__(self, images):
        images = check_image_batch(images, self.input_size)
        outputs = self._runner(**{INPUT_NAME: images.astype(self._dtype)})
        return np.array(outputs[OUTPUT_NAME], dtype=np.float32)


def describe_tflite(path):
    """The signatures of the `.tflite` file at `path`: names, dtypes and shapes (-1 = any)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(path))
    lines = [f"TFLite model: {path} ({os.path.getsize(path):,} bytes)"]
    for key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(key)
        lines.append(f"\nsignature_def['{key}']:")
        for kind, details in (
            ("input", runner.get_input_details()),
            ("output", runner.get_output_details()),
        ):
            for name, detail in sorted(details.items()):
                lines += [
                    f"  {kind}s['{name}']:",
                    f"      dtype: {np.dtype(detail['dtype']).name}",
                    f"      shape: {tuple(int(d) for d in detail['shape_signature'])}",
                ]
    return "\n".join(lines)
