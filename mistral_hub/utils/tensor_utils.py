import warnings

import keras
import numpy as np
from keras import ops


def call_layer(layer, *args, **kwargs):
    """Runs a built layer's forward computation without `Layer.__call__`.

    `Layer.__call__` converts inputs, resolves `training` and masks, opens
    name and autocast scopes and records graph nodes; on torch this
    bookkeeping costs more than the math of a decode step's small matrix
    products. Inside a parent layer's `call()` (inputs already in the
    compute dtype, `training` passed explicitly) none of it is needed, so
    this calls `call()` directly, or `quantized_call()` for a quantized
    layer, which is what `__call__` would dispatch to: LoRA and int8 kernels
    are used exactly as in a normal call.

    Layers whose variables are read in another dtype than they compute in
    (mixed precision needs the autocast scope), that are not built yet, or
    that rematerialize, take the normal `layer(...)` path.

    Args:
        layer: A `keras.layers.Layer`.
        *args: Positional arguments of the layer's `call()`.
        **kwargs: Keyword arguments of the layer's `call()`.

    Returns:
        What the layer returns.
    """
    if (
        not layer.built
        or layer.compute_dtype != layer.variable_dtype
        or getattr(layer, "_remat_mode", None) is not None
    ):
        return layer(*args, **kwargs)
    if layer.quantization_mode is not None:
        return layer.quantized_call(*args, **kwargs)
    return layer.call(*args, **kwargs)


def update_along_axis(tensor, updates, start, axis):
    """Writes `updates` into `tensor` from index `start` along `axis`.

    Equivalent to `ops.slice_update`, except on torch outside autograd, where
    the write happens in place. Keras' torch `slice_update` clones its input,
    which during decoding would copy the whole KV cache once per layer per
    token; XLA already performs this update in place on JAX and TensorFlow.

    Args:
        tensor: The tensor to update.
        updates: A tensor whose shape matches `tensor` except along `axis`.
        start: int or 0-d int tensor, the first index written along `axis`.
        axis: int, the (non-negative) axis to write along.

    Returns:
        The updated tensor (the same object on torch when updated in place).
    """
    if keras.config.backend() == "torch":
        import torch

        if not torch.is_grad_enabled():
            # `index_copy_` takes a tensor `start` as is; `narrow` would read
            # it back to the host on every call.
            indices = torch.arange(updates.shape[axis], device=tensor.device) + start
            return tensor.index_copy_(axis, indices, updates)
    start_indices = [0] * len(tensor.shape)
    start_indices[axis] = start
    return ops.slice_update(tensor, start_indices, updates)


def host_callback(callback, *args):
    """Calls the Python `callback(*numpy_args)` from inside compiled code.

    Lets a compiled decode loop hand each new token to Python as it is
    produced (for streaming): `jax.debug.callback` under `jax.jit`,
    `tf.py_function` under `tf.function`, a direct call on torch.
    """
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        jax.debug.callback(callback, *args, ordered=True)
    elif backend == "tensorflow":
        import tensorflow as tf

        def run(*tensors):
            callback(*(t.numpy() for t in tensors))
            return 0

        tf.py_function(run, list(args), tf.int32)
    else:
        callback(*(ops.convert_to_numpy(a) for a in args))


def numpy_dtype(dtype):
    """The numpy dtype of a dtype name (bfloat16 from `ml_dtypes`)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _aligned_empty(shape, dtype, alignment=64):
    # XLA only adopts host buffers aligned like its own allocations.
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


class VariableWriter:
    """Fills one variable chunk by chunk without a second full copy."""

    def __init__(self, variable):
        self.variable = variable
        self.dtype = numpy_dtype(keras.backend.standardize_dtype(variable.dtype))
        self.backend = keras.config.backend()
        self.buffer = None
        if self.backend == "jax":
            old = getattr(variable, "_value", None)
            if (
                getattr(variable, "_layout", None) is None
                and hasattr(old, "delete")
                and not old.is_deleted()
                and len(old.sharding.device_set) == 1
            ):
                # Free the initial value before the new one exists.
                old.delete()
            self.buffer = _aligned_empty(tuple(variable.shape), self.dtype)
        elif self.backend not in ("torch", "tensorflow"):
            self.buffer = np.empty(tuple(variable.shape), self.dtype)

    def write(self, index, values):
        values = values.astype(self.dtype, copy=False)
        if self.buffer is not None:
            self.buffer[index] = values
        elif self.backend == "torch":
            import torch

            with warnings.catch_warnings():
                # Read-only arrays are fine: the tensor is only copied from.
                warnings.simplefilter("ignore", UserWarning)
                if self.dtype.name == "bfloat16":
                    # torch cannot read ml_dtypes arrays; reinterpret the bits.
                    tensor = torch.from_numpy(values.view(np.int16)).view(torch.bfloat16)
                else:
                    tensor = torch.from_numpy(values)
            with torch.no_grad():
                self.variable.value[index].copy_(tensor)
        else:
            import tensorflow as tf

            # The raw op writes through the handle; `variable[index].assign`
            # would first read the whole variable, and that pending read
            # makes TensorFlow copy the full buffer before writing.
            shape = tuple(self.variable.shape)
            index = tuple(index) + (slice(None),) * (len(shape) - len(index))
            begin = [i.start or 0 for i in index]
            end = [shape[d] if i.stop is None else i.stop for d, i in enumerate(index)]
            tf.raw_ops.ResourceStridedSliceAssign(
                ref=self.variable.value.handle,
                begin=begin,
                end=end,
                strides=[1] * len(shape),
                value=values,
            )

    def finish(self):
        if self.buffer is None:
            return
        value = self.buffer
        if self.backend == "jax" and getattr(self.variable, "_layout", None) is None:
            import jax

            try:
                value = jax.device_put(self.buffer, may_alias=True)
            except TypeError:  # Older JAX without `may_alias`.
                value = jax.device_put(self.buffer)
        self.variable.assign(value)
        self.buffer = None


def repeat_rows(x, repeats):
    """Repeats each row of `x` `repeats` times, into memory of its own.

    Row `i` becomes rows `i * repeats ... (i + 1) * repeats - 1`. Keras'
    torch `ops.repeat` may return a broadcast view (it does for a batch of
    one) whose rows share memory; the model updates a repeated KV cache in
    place on torch, which torch refuses on such a view.

    Args:
        x: A tensor, batch first.
        repeats: int, the copies of every row.

    Returns:
        A `(batch * repeats, ...)` tensor.
    """
    if keras.config.backend() == "torch":
        import torch

        return torch.repeat_interleave(ops.convert_to_tensor(x), repeats, dim=0)
    return ops.repeat(x, repeats, axis=0)
