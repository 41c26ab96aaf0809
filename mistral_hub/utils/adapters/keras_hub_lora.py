"""keras_hub's LoRA weights file (`.lora.h5`), read and written.

The file holds `lora/vars/rank` and, for every adapted layer,
`lora/<index>/vars/lora_kernel_a` and `lora_kernel_b`, where `<index>`
counts the backbone's sublayers that have weights in flattening order
(layer names repeat across blocks). `Backbone.save_lora_weights` and
`Backbone.load_lora_weights` call the functions here.
"""

import os
import tempfile

import keras
import numpy as np

def save_lora_weights(backbone, filepath):
    """Implements `Backbone.save_lora_weights` (see its docstring)."""
    filepath = os.fspath(filepath)
    if not filepath.endswith(LORA_WEIGHTS_SUFFIX):
        raise ValueError(
            f"The filename must end in `{LORA_WEIGHTS_SUFFIX}`. "
            f"Received: filepath={filepath}"
        )
    adapted = {
        index: layer
        for index, layer in enumerate(_layers_with_weights(backbone))
        if getattr(layer, "lora_enabled", False)
    }
    if not adapted:
        raise ValueError(
            "There are no LoRA-enabled layers in this model. Call "
            "`enable_lora(rank)` first."
        )
    for layer in adapted.values():
        if not hasattr(layer, "lora_kernel_a"):
            raise ValueError(
                "keras_hub's LoRA file format holds adapters of dense "
                f"kernels only; layer `{layer.path}` "
                f"({type(layer).__name__}) has another kind of adapter."
            )
    ranks = {layer.lora_rank for layer in adapted.values()}
    if len(ranks) != 1:
        raise ValueError(
            "All LoRA adapters must have the same rank to be saved in one "
            f"file. Received ranks: {sorted(ranks)}"
        )
    import h5py

    directory = os.path.dirname(os.path.abspath(filepath))
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=LORA_WEIGHTS_SUFFIX)
    os.close(fd)
    try:
        with h5py.File(tmp_path, "w") as f:
            f.create_group("lora/vars")["rank"] = ranks.pop()
            for index, layer in adapted.items():
                group = f.create_group(f"lora/{index}/vars")
                group["lora_kernel_a"] = keras.ops.convert_to_numpy(layer.lora_kernel_a)
                group["lora_kernel_b"] = (
                    keras.ops.convert_to_numpy(layer.lora_kernel_b) * _lora_scale(layer)
                )
        os.replace(tmp_path, filepath)
    except BaseException:
        os.remove(tmp_path)
        raise


def load_lora_weights(backbone, filepath):
    """Implements `Backbone.load_lora_weights` (see its docstring)."""
    import h5py

    filepath = os.fspath(filepath)
    if not os.path.isfile(filepath):
        raise FileNotFoundError(f"LoRA weights file '{filepath}' does not exist.")
    try:
        f = h5py.File(filepath, "r")
    except OSError as e:
        raise ValueError(
            f"'{filepath}' is not a LoRA weights file (not HDF5: {e})."
        ) from None
    with f:
        rank, kernels = _read_lora_file(f, filepath)
    layers = _layers_with_weights(backbone)
    adapted = {
        index for index, layer in enumerate(layers) if getattr(layer, "lora_enabled", False)
    }
    if adapted:
        enabled_rank = {layers[i].lora_rank for i in adapted}
        if enabled_rank != {rank}:
            raise ValueError(
                f"The LoRA rank of file '{filepath}' is rank={rank}, but "
                f"the model's adapters have rank={sorted(enabled_rank)[0]} "
                "(from `enable_lora`). Both ranks must match."
            )
        targets = adapted
    else:
        # Enable LoRA on the layers the file adapts, chosen by name as
        # `enable_lora` does, and check that this gives the same layers.
        names = {layers[i].name for i in kernels if i < len(layers)}
        targets = {
            i
            for i, layer in enumerate(layers)
            if layer.name in names
            and hasattr(layer, "enable_lora")
            and hasattr(layer, "kernel")
        }
    if targets != set(kernels):
        raise ValueError(
            f"File '{filepath}' holds LoRA weights for the layers "
            f"{_describe_layers(layers, kernels)}, but this model adapts "
            f"{_describe_layers(layers, targets)}."
        )
    for index, values in kernels.items():
        layer = layers[index]
        expected = _lora_shapes(layer, rank)
        received = tuple(tuple(v.shape) for v in values)
        if received != expected:
            raise ValueError(
                f"File '{filepath}' holds LoRA kernels of shapes {received} "
                f"for layer `{layer.path}`, which needs shapes {expected}."
            )
    if not adapted:
        backbone.enable_lora(rank, target_layer_names=sorted(names))
    for index, (lora_a, lora_b) in kernels.items():
        layers[index].lora_kernel_a.assign(lora_a)
        layers[index].lora_kernel_b.assign(lora_b / _lora_scale(layers[index]))


LORA_WEIGHTS_SUFFIX = ".lora.h5"
_LORA_KERNELS = ("lora_kernel_a", "lora_kernel_b")


def _lora_scale(layer):
    # The file format has no `lora_alpha` (keras_hub reads the rank only and
    # uses Keras' default alpha, the rank): files hold `b` scaled by
    # `alpha / rank`, so an adapter with another alpha keeps its output.
    return layer.lora_alpha / layer.lora_rank


def _layers_with_weights(model):
    # keras_hub numbers adapted layers by their position in this list (layer
    # names repeat across blocks); files are interchangeable because the
    # layer structure is the same.
    return [layer for layer in model._flatten_layers(include_self=False) if layer.weights]


def _describe_layers(layers, indices):
    return [
        f"{i}: {layers[i].path}" if i < len(layers) else f"{i}: (no such layer)"
        for i in sorted(indices)
    ]


def _lora_shapes(layer, rank):
    if getattr(layer, "lora_enabled", False):
        return tuple(tuple(getattr(layer, name).shape) for name in _LORA_KERNELS)
    # What `EinsumDense.enable_lora` would create: `a` maps the kernel's
    # input dims to the rank, `b` the rank to its output dims.
    shape = tuple(getattr(layer, "original_kernel_shape", None) or layer.kernel.shape)
    return (shape[:-1] + (rank,), (rank, shape[-1]))


def _read_array(dataset):
    value = dataset[()]
    # Keras before 3.15 made adapters in the layer's dtype; h5py has no
    # bfloat16, so Keras stores raw 16-bit values and marks the dataset.
    if dataset.attrs.get("dtype") == "bfloat16":
        import ml_dtypes

        value = np.asarray(value).view(ml_dtypes.bfloat16)
    return np.asarray(value)


def _read_lora_file(f, filepath):
    """Returns `(rank, {layer index: (lora_kernel_a, lora_kernel_b)})`."""
    import h5py

    def dataset(path):
        item = f.get(path)
        return item if isinstance(item, h5py.Dataset) else None

    rank = dataset("lora/vars/rank")
    if rank is None:
        raise ValueError(
            f"'{filepath}' is not a LoRA weights file: it has no `lora/vars/rank` "
            "(files are written by `save_lora_weights`)."
        )
    rank = int(rank[()])
    kernels = {}
    for key in f["lora"]:
        if key == "vars":
            continue
        values = [dataset(f"lora/{key}/vars/{name}") for name in _LORA_KERNELS]
        if not key.isdigit() or any(v is None for v in values):
            raise ValueError(
                f"'{filepath}' is not a valid LoRA weights file: unexpected "
                f"entry `lora/{key}`."
            )
        kernels[int(key)] = tuple(_read_array(v) for v in values)
    if not kernels:
        raise ValueError(f"'{filepath}' holds no LoRA weights.")
    return rank, kernels
