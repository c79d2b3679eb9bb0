"""Train a Sphere-N backbone with a MarginSoftmax head on an identity folder, with `model.fit`.

The paper's recipe (SphereFace, CVPR 2017): SGD momentum 0.9, coupled weight decay 5e-4,
lr 0.1 ÷10 at 16/28 and 24/28 of the run, horizontal flips (`jitter` adds random similarity
transforms). Everything a run produces lives in its run directory:

    RUN_DIR/config.json       the arguments of `train` (+ data facts), read back by `resume`
    RUN_DIR/label_map.json    class index → identity name
    RUN_DIR/checkpoint.keras  the full training model after the last good epoch (atomic)
    RUN_DIR/log.csv           per-epoch loss, accuracy, learning_rate, lambda
    RUN_DIR/tensorboard/      the same for TensorBoard

Exact resume: the data order of epoch e is a pure function of (seed, e) (see
`keras_sphereface.data.epoch_order`), the checkpoint holds the optimizer state (momentum,
step counter) and MarginSoftmax's iteration counter (λ), and the epoch to continue from is
the optimizer step counter ÷ steps per epoch. Two epochs straight and one epoch + resume +
one epoch give the same weights.
"""

import dataclasses
import importlib.util
import json
import math
import os

import keras

from keras_sphereface import data as data_lib
from keras_sphereface.alignment.warp import parse_size, template_for
from keras_sphereface.atomic import atomic_path, remove_temporaries
from keras_sphereface.backbones import get_backbone
from keras_sphereface.errors import UserInputError
from keras_sphereface.margins import MarginSoftmax
from keras_sphereface.models import CHECKPOINT_NAME, build_training_model, load_model_file
from keras_sphereface.training.callbacks import EpochCheckpoint, MarginLogger
from keras_sphereface.training.optimization import CoupledWeightDecaySGD, paper_step_schedule

CONFIG_NAME = "config.json"
LABEL_MAP_NAME = "label_map.json"
LOG_NAME = "log.csv"
TENSORBOARD_NAME = "tensorboard"

MIXED_PRECISION_POLICIES = {None: None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@dataclasses.dataclass
class TrainingResult:
    """What a `train` / `resume` call did.

    `epochs_done`: completed epochs saved in the checkpoint; `stopped`: None (finished),
    "interrupted" (KeyboardInterrupt) or "nan" (loss became NaN/inf); `history`: Keras'
    per-epoch logs of this call.
    """

    run_dir: str
    epochs_done: int
    epochs: int
    stopped: str = None
    history: dict = dataclasses.field(default_factory=dict)


def _tensorflow_available():
    """tf.data and TensorBoard need TensorFlow; a JAX or PyTorch GPU machine may lack it.

    Without it, training reads with `FaceDataset` (OpenCV, the same batches as tf.data)
    and logs to CSV only.
    """
    return importlib.util.find_spec("tensorflow") is not None


def _check_positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserInputError(f"Expected {name} to be an integer >= 1. Received: {value!r}")


def _load_index(data, skip_bad, image_size, landmarks, verbose):
    data = os.fspath(data)
    if os.path.isfile(data):
        index = data_lib.read_list_file(data)
    elif os.path.isdir(data):
        index = data_lib.scan_identity_folder(data)
    else:
        raise UserInputError(
            f"Expected --data to be a folder with one sub-folder of images per identity, or a "
            f"list file of 'relative/path label' lines. Received: {data!r}, which does not exist."
        )
    data_lib.check_min_identities(index, 2)
    index, skipped = data_lib.validate_images(
        index,
        skip_bad=skip_bad,
        decoder="tensorflow" if _tensorflow_available() else "opencv",
        image_size=None if landmarks else image_size,
    )
    if verbose:
        for relpath, reason in skipped:
            print(f"skipped {relpath}: {reason}")
    data_lib.check_min_identities(index, 2)
    return index, skipped


def _compile(model, optimizer, jit_compile, steps_per_execution=1):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )


def mixed_precision_policy(mixed_precision):
    """The Keras dtype policy for `train`'s `mixed_precision`: None → None (float32),
    "bfloat16" → "mixed_bfloat16", "float16" → "mixed_float16"; anything else is a
    UserInputError."""
    if mixed_precision not in MIXED_PRECISION_POLICIES:
        raise UserInputError(
            f"Expected mixed_precision in {list(MIXED_PRECISION_POLICIES)}. Received: {mixed_precision!r}"
        )
    return MIXED_PRECISION_POLICIES[mixed_precision]


def default_learning_rate(batch_size):
    """The paper's 0.1 at batch 256 scaled linearly to `batch_size` (Goyal et al. 2017):
    0.1 itself at batch 64 drives the un-normalized Sphere nets to NaN."""
    return 0.1 * batch_size / 256


def default_warmup_epochs(mode, scale=None):
    """2 where the head normalizes the features (normface, cosface, arcface, ..., and
    sphereface given a scale), else 0.

    Their loss gradient on a feature x is s/‖x‖ times a unit-scale term: at s = 30 and the
    ‖x‖ ≈ 1 of a freshly initialized Sphere net, the first full-lr steps blow the backbone's
    weights (and ‖x‖) up by orders of magnitude, and every later step is then s/‖x‖ small
    (CosFace on 5,314 LFW identities: ‖x‖ ≈ 3·10⁵ after 4 epochs, training accuracy 0; with
    2 epochs of warmup it learns, README). A-Softmax warms up through its λ annealing.
    """
    return 2 if MarginSoftmax(2, mode=mode, scale=scale).normalize_features else 0


def compiled_training_model(
    backbone,
    num_classes,
    total_steps,
    mode="sphereface",
    margin=None,
    scale=None,
    learning_rate=0.1,
    momentum=0.9,
    weight_decay=5e-4,
    mixed_precision=None,
    jit_compile="auto",
    steps_per_execution=1,
    weight_normalization=None,
    warmup_steps=0,
):
    """The compiled model `train` fits: `backbone` + `MarginSoftmax(mode, margin, scale,
    weight_normalization)` (`build_training_model`), `CoupledWeightDecaySGD` with the paper's
    step schedule over `total_steps` after `warmup_steps` of linear warmup
    (`paper_step_schedule`), sparse cross-entropy from logits, accuracy.

    `backbone` is a backbone model built with `dtype=mixed_precision_policy(mixed_precision)`;
    "float16" also wraps the optimizer in `LossScaleOptimizer`. `jit_compile` and
    `steps_per_execution` are `Model.compile`'s. Used by `train` and bench/train_throughput.py,
    so the benchmark times the training step users get.
    """
    mixed_precision_policy(mixed_precision)  # validates
    model = build_training_model(
        backbone, num_classes, mode=mode, margin=margin, scale=scale,
        weight_normalization=weight_normalization,
    )
    optimizer = CoupledWeightDecaySGD(
        paper_step_schedule(total_steps, learning_rate, warmup_steps),
        momentum=momentum,
        coupled_weight_decay=weight_decay,
    )
    if mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    _compile(model, optimizer, jit_compile, steps_per_execution)
    return model


def _write_json(path, content):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(content, f, indent=1)


def train(
    data,
    output,
    backbone="sphere20",
    mode="sphereface",
    margin=None,
    scale=None,
    epochs=1,
    batch_size=256,
    learning_rate=None,
    momentum=0.9,
    weight_decay=5e-4,
    width_multiplier=1.0,
    embedding_dim=512,
    batch_norm=False,
    image_size=(112, 96),
    landmarks=None,
    mixed_precision=None,
    jit_compile="auto",
    skip_bad=False,
    cache=False,
    seed=0,
    verbose=1,
    callbacks=(),
    weight_normalization=None,
    warmup_epochs=None,
    jitter=0.0,
):
    """Train `backbone` + `MarginSoftmax(mode, margin, scale)` on `data` into the run dir `output`.

    Args:
        data: identity folder (ROOT/NAME/*.jpg) or list file (`relative/path label`).
        output: run directory; must not hold a previous run (continue one with `resume`).
        backbone, width_multiplier, embedding_dim, batch_norm: the Sphere-N backbone
            (`get_backbone`); `batch_norm` the SFNet variant with batch norm.
        mode, margin, scale: the MarginSoftmax head (A-Softmax m=4 by default).
        weight_normalization: the head's unit class centres, "reparametrized" (None: the
            layer's default) or "projected" (normalized modes only; see `MarginSoftmax`).
        epochs, batch_size: epochs of `len(images) // batch_size` full batches each.
        learning_rate, momentum, weight_decay: SGD with coupled weight decay and the paper's
            step schedule scaled to `epochs × steps per epoch`. `learning_rate=None`:
            `default_learning_rate(batch_size)`, 0.1 × batch_size / 256.
        warmup_epochs: epochs (a float is fine) of linear learning-rate warmup before the
            steps; None: `default_warmup_epochs(mode, scale)`, 2 where the features are
            normalized.
        jitter: random scale, rotation and shift per image and epoch, j in [0, 0.5): scale
            1 ± j, rotation ± j·90°, shift ± j × the crop size (`data.jitter_matrices`),
            on top of the horizontal flips; 0: flips only (the paper's recipe).
        image_size: (height, width) or "112x96" / "112x112".
        landmarks: landmarks file to align the images on the fly; None: aligned crops.
        mixed_precision: None, "bfloat16" or "float16" (float16 adds loss scaling).
        jit_compile: XLA for the train step: "auto" (Keras: on for TensorFlow with a GPU,
            JAX always), True or False.
        skip_bad: drop unreadable images (each one listed) instead of stopping.
        cache: keep the encoded image files in memory after the first epoch.
        seed: initialization and the per-epoch data order.
        callbacks: extra Keras callbacks.

    Returns a `TrainingResult`. A Ctrl-C or a NaN loss stops cleanly with the last completed
    epoch in `output/checkpoint.keras`.
    """
    image_size = parse_size(image_size) if isinstance(image_size, str) else tuple(image_size)
    template_for(image_size)  # validates the size
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        _check_positive(name, value)
    if learning_rate is None:
        learning_rate = default_learning_rate(batch_size)
    if warmup_epochs is None:
        warmup_epochs = default_warmup_epochs(mode, scale)
    if not (isinstance(warmup_epochs, (int, float)) and 0 <= warmup_epochs < float("inf")):
        raise UserInputError(f"Expected warmup_epochs >= 0. Received: {warmup_epochs!r}")
    data_lib.check_jitter(jitter)
    policy = mixed_precision_policy(mixed_precision)
    output = os.path.abspath(os.fspath(output))
    if os.path.isdir(output) and os.listdir(output):
        raise UserInputError(
            f"Expected --output to be a new or empty folder. Received: {output!r}, which holds "
            f"files (continue that run with --resume, or choose another folder)."
        )
    if os.path.exists(output) and not os.path.isdir(output):
        raise UserInputError(f"Expected --output to be a folder. Received: {output!r}, a file.")
    os.makedirs(os.path.dirname(output), exist_ok=True)  # a bad parent fails before the data check
    # the model's arguments are checked before the (long) check of every image
    keras.utils.set_random_seed(seed)
    net = get_backbone(
        backbone,
        input_shape=(*image_size, 3),
        embedding_dim=embedding_dim,
        width_multiplier=width_multiplier,
        batch_norm=batch_norm,
        dtype=policy,
    )
    MarginSoftmax(  # validates the head's arguments before any data is read
        2, mode=mode, margin=margin, scale=scale, weight_normalization=weight_normalization
    )
    index, skipped = _load_index(data, skip_bad, image_size, landmarks, verbose)
    if len(index) < batch_size:
        raise UserInputError(
            f"Expected batch_size <= number of images ({len(index)}). Received: {batch_size}"
        )
    steps = data_lib.steps_per_epoch(len(index), batch_size)
    config = {
        "data": os.path.abspath(os.fspath(data)),
        "backbone": backbone,
        "mode": mode,
        "margin": margin,
        "scale": scale,
        "weight_normalization": weight_normalization,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "warmup_epochs": warmup_epochs,
        "jitter": jitter,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "width_multiplier": width_multiplier,
        "embedding_dim": embedding_dim,
        "batch_norm": batch_norm,
        "image_size": list(image_size),
        "landmarks": os.path.abspath(landmarks) if landmarks else None,
        "mixed_precision": mixed_precision,
        "jit_compile": jit_compile,
        "skip_bad": skip_bad,
        "cache": cache,
        "seed": seed,
        # facts of the data, checked again on resume
        "num_images": len(index),
        "num_classes": index.num_classes,
        "steps_per_epoch": steps,
        "skipped_images": [relpath for relpath, _ in skipped],
        "keras_backend": keras.backend.backend(),
    }

    model = compiled_training_model(
        net,
        index.num_classes,
        epochs * steps,
        mode=mode,
        margin=margin,
        scale=scale,
        learning_rate=learning_rate,
        momentum=momentum,
        weight_decay=weight_decay,
        mixed_precision=mixed_precision,
        jit_compile=jit_compile,
        weight_normalization=weight_normalization,
        warmup_steps=round(warmup_epochs * steps),
    )
    os.makedirs(output, exist_ok=True)
    data_lib.save_label_map(os.path.join(output, LABEL_MAP_NAME), index.class_names)
    _write_json(os.path.join(output, CONFIG_NAME), config)
    # an epoch-0 checkpoint: even a Ctrl-C in the first epoch leaves a usable, resumable run
    with atomic_path(os.path.join(output, CHECKPOINT_NAME)) as tmp:
        model.save(tmp)
    return _fit(model, index, config, output, 0, verbose, callbacks)


def resume(output, epochs=None, verbose=1, callbacks=()):
    """Continue the run in `output` from its checkpoint, exactly where it stopped.

    `epochs` raises the run's total number of epochs (default: the one it was started
    with). The learning-rate schedule stays the one of the original run length.
    """
    output = os.path.abspath(os.fspath(output))
    config_path = os.path.join(output, CONFIG_NAME)
    checkpoint = os.path.join(output, CHECKPOINT_NAME)
    if not (os.path.isfile(config_path) and os.path.isfile(checkpoint)):
        raise UserInputError(
            f"Expected a training run folder holding {CONFIG_NAME} and {CHECKPOINT_NAME}. "
            f"Received: {output!r}"
        )
    config = read_config(output)
    if epochs is not None:
        _check_positive("epochs", epochs)
        config["epochs"] = epochs
    index, _ = _load_index(
        config["data"], config["skip_bad"], tuple(config["image_size"]), config["landmarks"], verbose
    )
    saved_names = data_lib.load_label_map(os.path.join(output, LABEL_MAP_NAME))
    if list(index.class_names) != saved_names or len(index) != config["num_images"]:
        raise UserInputError(
            f"Expected the data the run started with ({config['num_images']} images of "
            f"{len(saved_names)} identities). Received: {len(index)} images of "
            f"{index.num_classes} identities in {config['data']!r}; resume needs the same data."
        )
    keras.utils.set_random_seed(config["seed"])
    model = load_model_file(checkpoint)  # with the optimizer's state
    _compile(model, model.optimizer, config["jit_compile"])
    done = int(_optimizer_steps(model))
    if done % config["steps_per_epoch"]:
        raise UserInputError(
            f"Expected a checkpoint saved at an epoch end ({config['steps_per_epoch']} steps per "
            f"epoch). Received: {checkpoint!r} after {done} steps."
        )
    _write_json(config_path, config)
    remove_temporaries(output)  # a checkpoint write cut by a kill left its temporary file
    return _fit(model, index, config, output, done // config["steps_per_epoch"], verbose, callbacks)


def read_config(output):
    """The `config.json` of the run directory `output`; a missing or damaged one is a
    UserInputError naming it."""
    path = os.path.join(os.fspath(output), CONFIG_NAME)
    try:
        with open(path) as f:
            config = json.load(f)
        missing = [key for key in ("data", "epochs", "steps_per_epoch", "seed")
                   if key not in config]
    except (OSError, ValueError, TypeError):
        config, missing = None, ["a JSON object"]
    if missing:
        raise UserInputError(
            f"Expected {path} to be the run's configuration written by train (a JSON object "
            f"with data, epochs, seed, ...). Received: a file without {', '.join(missing)}"
        )
    for key, default in (("jitter", 0.0), ("batch_norm", False)):
        config.setdefault(key, default)  # runs written before the setting existed had this
    return config


def _optimizer_steps(model):
    """Optimizer steps taken by `model` (the inner optimizer's counter under loss scaling)."""
    optimizer = model.optimizer
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return keras.ops.convert_to_numpy(optimizer.iterations)


def _fit(model, index, config, output, initial_epoch, verbose, extra_callbacks):
    epochs = config["epochs"]
    if initial_epoch >= epochs:
        if verbose:
            print(f"{output}: already trained {initial_epoch} of {epochs} epochs; nothing to do.")
        return TrainingResult(output, initial_epoch, epochs)
    loader_options = dict(
        image_size=tuple(config["image_size"]),
        landmarks=config["landmarks"],
        training=True,
        seed=config["seed"],
        initial_epoch=initial_epoch,
        jitter=config["jitter"],
    )
    checkpoint = EpochCheckpoint(os.path.join(output, CHECKPOINT_NAME))
    callbacks = [
        MarginLogger(),
        keras.callbacks.TerminateOnNaN(),
        checkpoint,
        keras.callbacks.CSVLogger(os.path.join(output, LOG_NAME), append=True),
    ]
    if _tensorflow_available():
        dataset = data_lib.make_dataset(
            index, config["batch_size"], cache=config["cache"], **loader_options
        )
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(output, TENSORBOARD_NAME)))
    else:
        dataset = data_lib.FaceDataset(index, config["batch_size"], epochs=epochs, **loader_options)
    callbacks.extend(extra_callbacks)
    if verbose:
        print(
            f"training {config['backbone']} ({config['mode']}) on {config['num_images']} images of "
            f"{config['num_classes']} identities: epochs {initial_epoch + 1}..{epochs}, "
            f"{config['steps_per_epoch']} steps of {config['batch_size']} each; run dir {output}"
        )
    stopped = None
    history = {}
    try:
        history = model.fit(
            dataset,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=config["steps_per_epoch"],
            callbacks=callbacks,
            shuffle=False,  # the data set orders each epoch itself (by seed and epoch)
            verbose=verbose,
        ).history
    except KeyboardInterrupt:
        stopped = "interrupted"
    if stopped is None and not all(math.isfinite(v) for v in history.get("loss", [])):
        stopped = "nan"
    done = initial_epoch if checkpoint.last_saved_epoch is None else checkpoint.last_saved_epoch
    if verbose and stopped:
        reason = "interrupted" if stopped == "interrupted" else "stopped: the loss became NaN/inf"
        print(
            f"\n{reason}; {os.path.join(output, CHECKPOINT_NAME)} holds epoch {done} of {epochs} "
            f"(continue with --resume)."
        )
    return TrainingResult(output, done, epochs, stopped, history)
