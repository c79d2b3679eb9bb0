"""`demo`: the margin family end to end on scikit-learn's bundled digits, in about a minute.

Open-set like face recognition: the tiny models train on digits 0-6 only; verification is
measured on pairs of new images of 0-6 ("seen") and on pairs of digits 7-9, which no model
has ever seen ("unseen", the honest figure: LFW identities are unseen too). The threshold
protocol is LFW's (10 folds, threshold from the other 9).
"""

import json
import os
import time

import click

# (name, file name, MarginSoftmax mode, margin, scale, extra options): the face-training
# settings scaled to a 2-D / 3-D embedding (a small scale s, as in GUIDE §1's visualization
# table); A-Softmax's λ is annealed from 1000 to 5 within the first ~200 of ~420 steps.
DEMO_MODES = (
    ("softmax", "softmax", "softmax", None, None, {}),
    ("A-Softmax m=4", "a_softmax", "sphereface", 4, None, {"lambda_gamma": 1.0}),
    ("CosFace m=0.2", "cosface", "cosface", 0.2, 8.0, {}),
    ("ArcFace m=0.3", "arcface", "arcface", 0.3, 8.0, {}),
)
TRAIN_CLASSES = tuple(range(7))
MARKER = "demo_results.json"


def _check_output(output):
    """Refuse to replace a directory that is not an earlier demo's output."""
    from keras_sphereface.errors import UserInputError

    if os.path.exists(output) and (
        not os.path.isdir(output)
        or (os.listdir(output) and not os.path.isfile(os.path.join(output, MARKER)))
    ):
        raise UserInputError(
            f"Expected --output to be a new or empty directory, or an earlier demo's output "
            f"(holding {MARKER}). Received: {output}"
        )


def _table(rows):
    header = ("model", "seen 0-6 acc %", "unseen 7-9 acc %", "align", "uniform", "train s")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        seen, unseen = row["seen"], row["unseen"]
        lines.append(
            f"| {row['name']} | {100 * seen['accuracy_mean']:.1f} ± {100 * seen['accuracy_std']:.1f} "
            f"| {100 * unseen['accuracy_mean']:.1f} ± {100 * unseen['accuracy_std']:.1f} "
            f"| {unseen['alignment']:.3f} | {unseen['uniformity']:.3f} | {row['train_seconds']:.1f} |"
        )
    return "\n".join(lines)


@click.command()
@click.option("--output", default="demo_output", show_default=True,
              type=click.Path(file_okay=False), help="Folder for every artefact (replaced whole).")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1),
              help="Training epochs per model.")
@click.option("--embedding-dim", default=2, show_default=True, type=click.Choice(["2", "3"]),
              help="Feature dimension: 2 draws the circle, 3 the sphere.")
@click.option("--seed", default=0, show_default=True, type=int)
def demo(output, epochs, embedding_dim, seed):
    """Train softmax, A-Softmax, CosFace and ArcFace on digits; verify, draw, export."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.time()
    output = os.path.abspath(output)
    _check_output(output)
    embedding_dim = int(embedding_dim)

    import matplotlib

    matplotlib.use("Agg")
    import keras
    import matplotlib.pyplot as plt
    import numpy as np

    from keras_sphereface import digits, hypersphere
    from keras_sphereface.atomic import atomic_directory
    from keras_sphereface.export import export_saved_model, load_saved_model_embedder
    from keras_sphereface.export.parity import embedding_parity, keras_embeddings
    from keras_sphereface.models import embedding_model

    images, labels = digits.load_digits_rgb()
    split = digits.open_set_split(labels, TRAIN_CLASSES, seed=seed)
    click.echo(
        f"Digits: training on {len(split['train'])} images of digits 0-6; verifying on "
        f"{len(split['seen_test'])} new images of 0-6 and {len(split['unseen'])} images of "
        f"the unseen digits 7-9 (backend: {keras.backend.backend()})."
    )

    class Progress(keras.callbacks.Callback):
        def __init__(self, bar):
            super().__init__()
            self.bar = bar

        def on_epoch_end(self, epoch, logs=None):
            self.bar.update(1)

    rows, backbones = [], {}
    with atomic_directory(output, overwrite=True) as tmp:
        os.makedirs(os.path.join(tmp, "models"))
        with click.progressbar(length=epochs * len(DEMO_MODES), label="training",
                               show_pos=True, width=30) as bar:
            for name, slug, mode, margin, scale, options in DEMO_MODES:
                bar.label = f"training {name:<14}"
                tick = time.time()
                model = digits.train_digits_model(
                    images[split["train"]], labels[split["train"]], len(TRAIN_CLASSES),
                    mode=mode, margin=margin, scale=scale, embedding_dim=embedding_dim,
                    epochs=epochs, callbacks=[Progress(bar)], seed=seed, **options,
                )
                train_seconds = time.time() - tick
                backbone = embedding_model(model)
                seen, _ = digits.verify_digits(
                    backbone, images[split["seen_test"]], labels[split["seen_test"]], seed=seed
                )
                unseen, _ = digits.verify_digits(
                    backbone, images[split["unseen"]], labels[split["unseen"]], seed=seed
                )
                model.save(os.path.join(tmp, "models", f"{slug}.keras"))
                backbones[name] = (backbone, model)
                rows.append({"name": name, "mode": mode, "margin": margin, "scale": scale,
                             "seen": seen, "unseen": unseen, "train_seconds": train_seconds,
                             "model_file": os.path.join("models", f"{slug}.keras")})

        # pictures: test features of the seen digits (coloured, with the learned class-centre
        # directions) and of the unseen digits 7-9 (in their own colours, no centre).
        shown = np.concatenate([split["seen_test"], split["unseen"]])
        figure = plt.figure(figsize=(4 * len(rows), 4.6), layout="constrained")
        for column, row in enumerate(rows):
            backbone, model = backbones[row["name"]]
            features = digits.embed(backbone, images[shown])
            kernel = keras.ops.convert_to_numpy(digits.margin_head(model).kernel)
            ax = figure.add_subplot(1, len(rows), column + 1,
                                    projection="3d" if embedding_dim == 3 else None)
            hypersphere.plot_features(
                ax, features, labels[shown], centres=hypersphere.class_centre_directions(kernel),
                title=f"{row['name']}\nunseen 7-9: {100 * row['unseen']['accuracy_mean']:.1f} %",
                class_names=[str(d) for d in range(10)] if column == 0 else None,
            )
        figure.suptitle("Digits 0-6 (trained, lines = class centres) and unseen 7-9", fontsize=10)
        figure.savefig(os.path.join(tmp, "features.png"), dpi=110)
        plt.close(figure)

        # export the SphereFace (A-Softmax) embedding as a SavedModel and check the reload
        exported = next(row for row in rows if row["mode"] == "sphereface")
        backbone, _ = backbones[exported["name"]]
        saved_model_dir = os.path.join(tmp, "saved_model")
        version_dir = export_saved_model(backbone, saved_model_dir)
        reloaded = load_saved_model_embedder(saved_model_dir)
        probe = images[split["unseen"]][:64]
        parity = embedding_parity(keras_embeddings(backbone, probe), reloaded(probe))
        if not parity["max_abs_diff"] <= 1e-4:
            raise RuntimeError(
                f"Expected the reloaded SavedModel to reproduce the Keras embeddings within "
                f"1e-4. Received: {parity}"
            )

        table = _table(rows)
        with open(os.path.join(tmp, "report.md"), "w", encoding="utf-8") as f:
            f.write(f"# Demo on digits (train 0-6, {epochs} epochs, {embedding_dim}-D features)"
                    f"\n\n{table}\n")
        results = {
            "train_classes": list(TRAIN_CLASSES), "epochs": epochs, "seed": seed,
            "embedding_dim": embedding_dim, "backend": keras.backend.backend(),
            "models": rows, "exported": exported["name"],
            "saved_model": os.path.relpath(version_dir, tmp), "saved_model_parity": parity,
            "seconds": time.time() - started,
        }
        with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)

    click.echo("\nVerification on digit pairs (10-fold LFW protocol, mean ± std over folds;"
               "\nalign / uniform: Wang & Isola on the unseen digits, lower is better):\n")
    click.echo(table)
    click.echo(
        f"\nExported the {exported['name']} embedding as a SavedModel; reloaded, it "
        f"matches Keras to {parity['max_abs_diff']:.1e} (max |difference| of unit embeddings)."
    )
    click.echo(f"\nArtefacts in {output}:")
    for path, what in (
        ("features.png", "feature pictures with class-centre directions"),
        ("report.md", "the table above"),
        (MARKER, "every figure, fold accuracies, ROC summaries"),
        ("models/", "the four training models (.keras)"),
        ("saved_model/", f"embedding SavedModel of {exported['name']} (TF Serving layout)"),
    ):
        click.echo(f"  {os.path.join(output, path):<60} {what}")
    click.echo(f"Done in {time.time() - started:.0f} s.")
