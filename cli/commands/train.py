"""`train`: a Sphere-N backbone with a MarginSoftmax head on an identity folder (model.fit)."""

import click

# options a resumed run takes from its config.json (the data, model and recipe must not change)
_STORED = (
    "data", "backbone", "mode", "margin", "scale", "weight_normalization", "batch_size",
    "learning_rate", "warmup_epochs", "jitter",
    "weight_decay", "width_multiplier", "embedding_dim", "batch_norm", "image_size", "landmarks",
    "mixed_precision", "jit_compile", "skip_bad", "cache", "seed",
)  # fmt: skip


def _conflicts(ctx, config):
    """Options given on the command line that differ from the run's stored configuration."""
    import os

    from keras_sphereface.alignment.warp import parse_size

    found = []
    for name in _STORED:
        if ctx.get_parameter_source(name) != click.core.ParameterSource.COMMANDLINE:
            continue
        given, stored = ctx.params[name], config.get(name)
        if name == "image_size":
            given = list(parse_size(given))
        elif name in ("data", "landmarks") and given is not None:
            given = os.path.abspath(given)
        if given != stored:
            flag = next(p.opts[0] for p in ctx.command.params if p.name == name)
            found.append(f"{flag} {ctx.params[name]} (the run has {stored})")
    return found


@click.command()
@click.option(
    "--data",
    type=click.Path(),
    help="Identity folder (one sub-folder of images per person, like LFW) or a list file of "
    "'relative/path label' lines. Not needed with --resume.",
)
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--backbone", default="sphere20", show_default=True, help="sphere4/10/20/36/64.")
@click.option(
    "--mode",
    default="sphereface",
    show_default=True,
    help="MarginSoftmax mode: softmax, lsoftmax, sphereface, normface, cosface, arcface, ...",
)
@click.option("--margin", type=float, help="Margin m (default: the mode's, e.g. 4 for sphereface).")
@click.option("--scale", type=float, help="Scale s for the normalized modes (default: the mode's).")
@click.option("--weight-normalization", type=click.Choice(["reparametrized", "projected"]),
              help="Unit class centres of the normalized modes: W/‖W‖ with its exact "
                   "gradient (default, reparametrized) or columns kept at the initializer's "
                   "norm by projection (a plain-matmul head, faster; its centre steps stay as "
                   "large as the first ones, too large with many classes).")
@click.option("--epochs", type=click.IntRange(min=1), help="Total epochs of the run.  [default: 1]")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", "learning_rate", type=float,
              help="Initial learning rate; ÷10 at 16/28 and 24/28 of the run (the paper's steps). "
              "Default: 0.1 × batch-size / 256 (the paper's 0.1 at batch 256, scaled linearly).")
@click.option("--warmup-epochs", type=click.FloatRange(min=0),
              help="Epochs of linear learning-rate warmup. Default: 2 for the modes that "
                   "normalize the features (normface, cosface, arcface, ...), else 0.")
@click.option("--jitter", default=0.0, show_default=True, type=click.FloatRange(0, 0.5, max_open=True),
              help="Random scale (1 ± J), rotation (± J·90°) and shift (± J × the crop size) "
                   "per image and epoch, on top of the flips; 0: flips only.")
@click.option("--weight-decay", default=5e-4, show_default=True, type=float,
              help="Coupled (Caffe-style L2) weight decay of the SGD.")
@click.option("--width-multiplier", default=1.0, show_default=True, type=float,
              help="Scale the channel widths (small models for CPUs and tests).")
@click.option("--embedding-dim", default=512, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-norm", is_flag=True,
              help="The backbone's batch-norm variant (OpenSphere's SFNet): batch norm after "
                   "every convolution and after fc5; default: none, as in the paper.")
@click.option("--image-size", default="112x96", show_default=True, help="112x96 or 112x112.")
@click.option("--landmarks", type=click.Path(dir_okay=False),
              help="Landmarks file: align the images on the fly (default: --data holds aligned crops).")
@click.option("--mixed-precision", type=click.Choice(["bfloat16", "float16"]), is_flag=False,
              flag_value="bfloat16", default=None,
              help="Mixed precision compute (bare flag: bfloat16; float16 adds loss scaling).")
@click.option("--xla", "jit_compile", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True, help="XLA-compile the train step (auto: on with a GPU).")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images, listing each one.")
@click.option("--cache", is_flag=True, help="Keep the encoded images in memory after epoch 1.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Initialization and per-epoch data order.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --output exactly where its checkpoint stopped "
              "(--epochs may raise its length).")
@click.pass_context
def train(ctx, data, output, epochs, resume, jit_compile, image_size, **options):
    """Train BACKBONE + MarginSoftmax; writes OUTPUT/{checkpoint.keras, config.json,
    label_map.json, log.csv, tensorboard/}."""
    import os

    from keras_sphereface.errors import UserInputError
    from keras_sphereface.training import resume as resume_run
    from keras_sphereface.training import train as train_run
    from keras_sphereface.training.trainer import CONFIG_NAME, read_config

    jit_compile = {"auto": "auto", "on": True, "off": False}[jit_compile]
    if resume:
        config_path = os.path.join(output, CONFIG_NAME)
        if not os.path.isfile(config_path):
            raise UserInputError(
                f"Expected --output to be a run directory holding {CONFIG_NAME} for --resume. "
                f"Received: {output!r}"
            )
        config = read_config(output)
        ctx.params["jit_compile"] = jit_compile
        conflicts = _conflicts(ctx, config)
        if conflicts:
            raise UserInputError(
                "Expected --resume to continue the run as it was configured (only --epochs may "
                "change). Received: " + "; ".join(conflicts)
            )
        result = resume_run(output, epochs=epochs)
    else:
        if data is None:
            raise UserInputError("Expected --data DIR (or --resume). Received: no --data")
        result = train_run(
            data, output, epochs=epochs or 1, image_size=image_size, jit_compile=jit_compile,
            **options,
        )  # fmt: skip
    if result.stopped:
        ctx.exit(130 if result.stopped == "interrupted" else 1)
    click.echo(f"done: {result.epochs_done} epochs; checkpoint {os.path.join(output, 'checkpoint.keras')}")
