"""Class-sharded training for millions of identities with `keras.distribution` (JAX backend).

With C identities the class-centre matrix W (feature_dim D × C) of `MarginSoftmax` dominates
memory: 2M × 512 fp32 is 4 GB, as much again for the SGD momentum and the gradient, and the
logits are B × C. `margin_softmax_distribution` lays the model out as in Partial FC (An et
al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW 2021):

* one mesh axis "batch" over all N devices;
* the backbone is data parallel: its variables are replicated, each device runs B/N images;
* W is sharded over the same axis on its class dimension, so device i holds classes
  [i·C/N, (i+1)·C/N) and C grows with N. The optimizer's momentum of W inherits the layout.

XLA (GSPMD) then all-gathers the B × D features (small), computes the B × C/N logits and the
softmax reductions locally, and sums the feature gradients back; W is never gathered
(tests/test_distribution.py checks the per-device memory XLA plans for the head). A
("batch", "model") mesh with W on "model" only (Keras' tensor-parallel pattern) would run the
replicated backbone once per "model" device on the same images, so it is not offered.

`keras.distribution` is implemented for the JAX backend only (its TensorFlow version is
marked "do not use" in Keras 3.15); on TensorFlow, `tf.distribute.MirroredStrategy` gives data
parallelism with a replicated W, see the README.
"""

import math
import re

import keras

from keras_sphereface.errors import UserInputError

MESH_AXIS = "batch"


def margin_softmax_distribution(num_classes, devices=None, layer_name="margin_softmax"):
    """A `keras.distribution.ModelParallel`: data-parallel backbone, class-sharded kernel.

    Args:
        num_classes: C of the MarginSoftmax layer; must be a multiple of the device count
            (JAX shards evenly).
        devices: device names as from `keras.distribution.list_devices()` (default: all).
        layer_name: name of the MarginSoftmax layer (or of layers auto-named
            `<layer_name>_<n>`); its `kernel` (and `bias`) are sharded on the class axis.

    Use with `keras.distribution.set_distribution(...)` or `with distribution.scope():`
    around building the model and training; the global batch must be a multiple of N.
    """
    devices = list(keras.distribution.list_devices() if devices is None else devices)
    if not devices:
        raise UserInputError("Expected at least one device. Received: devices=[]")
    if not isinstance(num_classes, int) or num_classes < 1 or num_classes % len(devices):
        raise UserInputError(
            f"Expected num_classes to be a positive multiple of the {len(devices)} devices, "
            "as the class axis is split evenly (add unused classes to round it up). "
            f"Received: num_classes={num_classes!r}"
        )
    mesh = keras.distribution.DeviceMesh((len(devices),), (MESH_AXIS,), devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layer_path = rf"(.*/)?{re.escape(layer_name)}(_\d+)?"
    layout_map[layer_path + "/kernel"] = (None, MESH_AXIS)
    layout_map[layer_path + "/bias"] = (MESH_AXIS,)  # mode="softmax" only
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name=MESH_AXIS)


def memory_per_device(
    num_classes, num_devices=1, batch_size=256, feature_dim=512, bytes_per_value=4,
    sample_rate=1.0,
):
    """Bytes per device of the margin head under `margin_softmax_distribution`.

    kernel = D·C/N values; SGD momentum and the gradient the same size each; one logit
    buffer B·C/N for the global batch B (the features are all-gathered). `sample_rate` r is
    that of a Partial FC head with output_mode="loss": its logits are B·r·C/N (with
    output_mode="logits" the head builds B × C logits whatever r: leave r at 1). The kernel,
    its gradient (dense over the gathered columns) and the momentum stay C-sized. Not
    counted: the backbone, activations and XLA's further logit-sized temporaries.

    Returns a dict of bytes: kernel, momentum, gradient, logits, total.
    """
    classes_per_device = math.ceil(num_classes / num_devices)
    kernel = feature_dim * classes_per_device * bytes_per_value
    logits = batch_size * math.ceil(sample_rate * classes_per_device) * bytes_per_value
    sizes = {"kernel": kernel, "momentum": kernel, "gradient": kernel, "logits": logits}
    sizes["total"] = sum(sizes.values())
    return sizes
