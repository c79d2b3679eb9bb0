"""Training callbacks: λ / learning-rate logging and the atomic per-epoch checkpoint."""

import logging
import math

import keras
import numpy as np
from keras import ops

from keras_sphereface.atomic import atomic_path
from keras_sphereface.margins import MarginSoftmax

logger = logging.getLogger(__name__)


def find_margin_layer(model):
    """The first `MarginSoftmax` in `model` (searching nested models), or None."""
    for layer in model.layers:
        if isinstance(layer, MarginSoftmax):
            return layer
        if isinstance(layer, keras.Model):
            found = find_margin_layer(layer)
            if found is not None:
                return found
    return None


class MarginLogger(keras.callbacks.Callback):
    """Adds `lambda` (A-Softmax λ, `MarginSoftmax.current_lambda()`) and `learning_rate` to
    the epoch logs, so the progress bar's epoch line, `CSVLogger` and `TensorBoard` show them.

    Both are read after the epoch's last step, i.e. the values the next step will use. Put
    this callback before the loggers in the list: callbacks see the logs in order. Epoch
    level only: on JAX the layer variables are synced at epoch ends, not after each batch
    (and a per-batch read would stall a GPU).
    """

    def on_train_begin(self, logs=None):
        self._margin = find_margin_layer(self.model)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self._margin is not None:
            logs["lambda"] = self._margin.current_lambda()
        logs["learning_rate"] = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))


def _all_finite(logs, model):
    loss = (logs or {}).get("loss")
    if loss is not None and not math.isfinite(float(loss)):
        return False
    return all(np.isfinite(ops.convert_to_numpy(w)).all() for w in model.weights)


class EpochCheckpoint(keras.callbacks.Callback):
    """Save the whole training model (weights, optimizer state, MarginSoftmax counters) to
    `path` at every epoch end, atomically (temporary file, then rename): a crash or Ctrl-C at
    any moment leaves the previous complete checkpoint.

    An epoch whose loss or any weight is NaN/inf is not saved, so after a divergence (with
    `keras.callbacks.TerminateOnNaN`) the file holds the last good epoch. `last_saved_epoch`
    counts completed epochs (1-based) of the last save in this run, None before one.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.last_saved_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        if not _all_finite(logs, self.model):
            logger.warning(
                "Epoch %d ended with a non-finite loss or weights; %s keeps the last good "
                "checkpoint.", epoch + 1, self.path,
            )
            return
        try:
            with atomic_path(self.path) as tmp:
                self.model.save(tmp)
        except OSError as error:  # e.g. disk full: say which file, and that nothing is lost
            raise OSError(
                error.errno,
                f"{error.strerror or error} while writing the epoch {epoch + 1} checkpoint; "
                f"{self.path} still holds the previous one (free space, then resume)",
            ) from error
        self.last_saved_epoch = epoch + 1
