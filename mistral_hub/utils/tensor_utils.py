import keras
from keras import ops


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
            length = updates.shape[axis]
            tensor.narrow(axis, start, length).copy_(updates)
            return tensor
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
