"""`export`: the embedding backbone as a TF Serving SavedModel or a TFLite file, with parity."""

import os

import click

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
TFLITE_NAMES = {"none": "float32", "float16": "float16", "dynamic": "dynamic", "int8": "int8"}
PARITY_FACES = 16
REPRESENTATIVE_LIMIT = 200


def parity_faces(lfw_dir, representative, input_size):
    """(uint8 faces, description): real aligned LFW faces if LFW is found, else the
    representative set, else (None, reason)."""
    from keras_sphereface.errors import UserInputError
    from keras_sphereface.evaluation.lfw import resolve_lfw_dir
    from keras_sphereface.export.images import lfw_faces

    try:
        lfw_dir = resolve_lfw_dir(lfw_dir)
    except UserInputError:
        if lfw_dir is not None:
            raise
        lfw_dir = None
    if lfw_dir is not None:
        return lfw_faces(lfw_dir, input_size, count=PARITY_FACES), f"{PARITY_FACES} LFW faces"
    if representative is not None:
        return representative, f"{len(representative)} representative faces"
    return None, "no faces: set LFW_DIR or pass --representative DIR"


@click.command()
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(exists=True),
    help="A training run directory (checkpoint.keras) or a .keras file.",
)
@click.option(
    "--format",
    "export_format",
    type=click.Choice(["saved_model", "tflite"]),
    default="saved_model",
    show_default=True,
)
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZATIONS),
    default="none",
    show_default=True,
    help="TFLite post-training quantization; int8 needs --representative.",
)
@click.option(
    "--representative",
    type=click.Path(exists=True, file_okay=False),
    help="Folder of aligned face crops (the model's input size) to calibrate int8.",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(),
    help="SavedModel: the export directory (versions go below it). TFLite: a .tflite file, "
    "or a directory to write model_<float32|float16|dynamic|int8>.tflite into.",
)
@click.option("--version", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--input-dtype",
    type=click.Choice(["uint8", "float32"]),
    default="uint8",
    show_default=True,
    help="dtype of the `images` input of the exported signatures.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing version / file.")
@click.option(
    "--lfw-dir",
    type=click.Path(file_okay=False),
    help="LFW folder for the parity faces (default: $LFW_DIR, then ~/.keras/datasets/lfw).",
)
def export(
    model_path,
    export_format,
    quantize,
    representative,
    output,
    version,
    input_dtype,
    overwrite,
    lfw_dir,
):
    """Export the embedding model (no margin head) and print its signature and parity."""
    import numpy as np

    from keras_sphereface.errors import UserInputError
    from keras_sphereface.evaluation.lfw import resolve_lfw_dir
    from keras_sphereface.export import (
        LiteRTEmbedder,
        describe_saved_model,
        describe_tflite,
        export_saved_model,
        export_tflite,
        load_saved_model_embedder,
    )
    from keras_sphereface.export.images import read_aligned_faces
    from keras_sphereface.export.parity import embedding_parity, keras_embeddings
    from keras_sphereface.export.saved_model import input_size_of
    from keras_sphereface.models import load_embedding_model

    if export_format == "saved_model" and quantize != "none":
        raise UserInputError(
            f"Expected --quantize none for --format saved_model (quantization is a TFLite "
            f"option). Received: --quantize {quantize}"
        )
    if quantize == "int8" and representative is None:
        raise UserInputError(
            "Expected --representative DIR (aligned faces) for --quantize int8. Received: none"
        )
    if lfw_dir is not None:  # a wrong --lfw-dir is refused before anything is written
        resolve_lfw_dir(lfw_dir)
    model = load_embedding_model(model_path)
    input_size = input_size_of(model)
    representative_images = (
        read_aligned_faces(representative, input_size, limit=REPRESENTATIVE_LIMIT)
        if representative
        else None
    )

    if export_format == "saved_model":
        path = export_saved_model(
            model, output, version=version, overwrite=overwrite, input_dtype=input_dtype
        )
        click.echo(describe_saved_model(path))
        embedders = {
            "serving_default": load_saved_model_embedder(path),
            "serving_flip": load_saved_model_embedder(path, signature="serving_flip"),
        }
    else:
        path = output
        if not output.endswith(".tflite"):
            path = os.path.join(output, f"model_{TFLITE_NAMES[quantize]}.tflite")
        export_tflite(
            model,
            path,
            quantization=quantize,
            representative_images=representative_images,
            overwrite=overwrite,
            input_dtype=input_dtype,
        )
        click.echo(describe_tflite(path))
        embedders = {"serving_default": LiteRTEmbedder(path)}

    faces, source = parity_faces(lfw_dir, representative_images, input_size)
    if faces is None:
        click.echo(f"\nparity: skipped ({source})")
        return
    plain = keras_embeddings(model, faces)
    references = {
        "serving_default": plain,
        "serving_flip": plain + keras_embeddings(model, faces[:, :, ::-1]),
    }
    click.echo(f"\nparity with the Keras model on {source} (L2-normalized embeddings):")
    for name, embedder in embedders.items():
        figures = embedding_parity(references[name], embedder(np.ascontiguousarray(faces)))
        click.echo(
            f"  {name}: max abs diff {figures['max_abs_diff']:.3g}, "
            f"min cosine {figures['min_cosine']:.7f}"
        )
    click.echo(f"\nwritten: {path}")
