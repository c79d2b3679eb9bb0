"""`evaluate`: face verification accuracy on LFW (View 2) or another pair list."""

import click


def format_report(report):
    """The short table printed after an evaluation."""
    lines = [
        f"{report['num_pairs']} pairs ({report['num_matched']} matched / "
        f"{report['num_mismatched']} mismatched), {report['num_folds']} folds, "
        f"mean subtraction {'on' if report['mean_subtraction'] else 'off'}",
        f"{'fold':>4}  {'accuracy':>8}  {'threshold':>9}",
    ]
    for fold, (accuracy, threshold) in enumerate(
        zip(report["fold_accuracies"], report["thresholds"]), start=1
    ):
        lines.append(f"{fold:>4}  {100 * accuracy:7.2f}%  {threshold:9.4f}")
    lines.append(
        f"accuracy {100 * report['accuracy_mean']:.2f}% ± {100 * report['accuracy_std']:.2f}%   "
        f"AUC {report['auc']:.4f}   EER {100 * report['eer']:.2f}%"
    )
    for key, entry in report["tar_at_far"].items():
        allowed = entry["false_accepts_allowed"]
        lines.append(
            f"TAR@FAR={key}: {100 * entry['tar']:.2f}%  ({entry['negative_pairs']} negative "
            f"pairs: at most {allowed} false accept{'s' if allowed != 1 else ''})"
        )
    extraction = report.get("extraction")
    if extraction:
        speed = extraction["images_per_second"]
        lines.append(
            f"embedded {extraction['images_computed']} images "
            f"({extraction['images_from_cache']} from cache) in {extraction['seconds']:.1f} s"
            + (f", {speed:.1f} images/s" if speed else "")
        )
        if extraction["fallback_alignment"]:
            lines.append(
                f"{len(extraction['fallback_alignment'])} images had no landmarks and were "
                "aligned with the mean LFW landmarks at the centre (listed in the report)"
            )
    lines.append(f"wall time {report['wall_seconds']:.1f} s")
    return "\n".join(lines)


@click.command()
@click.option("--lfw", is_flag=True, help="Evaluate on LFW View 2 (pairs.txt, 6,000 pairs).")
@click.option(
    "--lfw-dir",
    type=click.Path(file_okay=False),
    help="LFW folder with pairs.txt and lfw-deepfunneled/ (default: $LFW_DIR, then "
    "~/.keras/datasets/lfw).",
)
@click.option(
    "--pairs",
    "pairs_path",
    type=click.Path(dir_okay=False),
    help="Another pair list in the pairs.txt format (instead of --lfw).",
)
@click.option(
    "--images", "images_dir", type=click.Path(file_okay=False), help="Images folder for --pairs."
)
@click.option(
    "--model",
    type=click.Path(),
    help="A .keras file, a training run directory, an exported SavedModel or a .tflite file.",
)
@click.option(
    "--embeddings",
    type=click.Path(dir_okay=False),
    help="Precomputed embeddings: .npz {relative image path: vector}.",
)
@click.option("--flip/--no-flip", default=True, show_default=True, help="Also embed the mirror.")
@click.option(
    "--fusion",
    type=click.Choice(["concat", "sum"]),
    default="concat",
    show_default=True,
    help="How image and mirror embeddings are combined.",
)
@click.option(
    "--mean-subtraction/--no-mean-subtraction",
    default=True,
    show_default=True,
    help="Subtract the training folds' mean feature before cosine scoring (SphereFace code).",
)
@click.option(
    "--landmarks",
    type=click.Path(dir_okay=False),
    help="Landmarks file to align with (default for LFW: the one shipped with the package).",
)
@click.option(
    "--aligned",
    is_flag=True,
    help="The images are already aligned crops of the model's input size.",
)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write JSON here.")
@click.option("--roc", "roc_path", type=click.Path(dir_okay=False), help="Write a ROC PNG here.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--cache",
    type=click.Path(dir_okay=False),
    help="Embeddings cache (.npz): resumed if present, usable later with --embeddings.",
)
def evaluate(
    lfw,
    lfw_dir,
    pairs_path,
    images_dir,
    model,
    embeddings,
    flip,
    fusion,
    mean_subtraction,
    landmarks,
    aligned,
    report_path,
    roc_path,
    batch_size,
    cache,
):
    """Verification accuracy (10-fold), AUC, EER and TAR@FAR of a model on a pair list.

    \b
    python cli/main.py evaluate --lfw --model runs/sphere20 --report lfw.json --roc lfw.png
    python cli/main.py evaluate --lfw --embeddings my_model_lfw.npz
    python cli/main.py evaluate --pairs my_pairs.txt --images crops/ --aligned --model m.keras
    """
    import json
    import os

    from keras_sphereface.atomic import atomic_path
    from keras_sphereface.errors import UserInputError
    from keras_sphereface.evaluation import evaluate_lfw

    if lfw == bool(pairs_path):
        raise UserInputError(
            f"Expected either --lfw or --pairs FILE. Received: --lfw={lfw}, --pairs={pairs_path}"
        )
    if images_dir and not pairs_path:
        raise UserInputError(
            f"Expected --images only together with --pairs. Received: --images {images_dir}"
        )
    if (model is None) == (embeddings is None):
        raise UserInputError(
            "Expected exactly one of --model PATH and --embeddings FILE.npz. "
            f"Received: --model={model}, --embeddings={embeddings}"
        )
    for output in (report_path, roc_path, cache):  # fail before the long extraction, not after
        if output:
            os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    report = evaluate_lfw(
        model=model,
        embeddings=embeddings,
        lfw_dir=lfw_dir,
        pairs_path=pairs_path,
        images_dir=images_dir,
        landmarks=landmarks,
        aligned=aligned,
        flip=flip,
        fusion=fusion,
        mean_subtraction=mean_subtraction,
        batch_size=batch_size,
        cache=cache,
        roc_path=roc_path,
    )
    click.echo(format_report(report))
    if report_path:
        with atomic_path(report_path) as tmp:
            with open(tmp, "w") as f:
                json.dump(report, f, indent=2)
        click.echo(f"report: {report_path}")
    if roc_path:
        click.echo(f"ROC: {roc_path}")
