"""Stateless random draws that can run inside a compiled sampling loop.

`keras.random` only accepts seed tensors on JAX, so samplers use these small
per-backend helpers instead. A seed is normalised once with `make_seed`, then
`fold_in` derives an independent seed for every decoding step from the step
index; nothing here reads or writes Keras variables, so the helpers are pure
functions of their inputs under `jax.jit`, `tf.function` and torch eager.
The same seed gives the same draws on a given backend and device; on
TensorFlow, XLA (`jit_compile=True`) and non-XLA kernels draw differently.

Example:

```python
import numpy as np
from mistral_hub.samplers import stateless_random

seed = stateless_random.make_seed(np.array([1, 2], "int32"))
step_seed = stateless_random.fold_in(seed, 3)
log_probs = np.log(np.array([[0.7, 0.2, 0.1]], "float32"))
token = stateless_random.categorical(log_probs, step_seed)  # shape (1,)
```
"""

import numpy as np
from keras import config
from keras import ops

# Lower bound of the uniform noise, so that the Gumbel transform never takes
# `log(0)`.
_TINY = float(np.finfo("float32").tiny)


def make_seed(seed):
    """Converts a `(2,)` integer seed into this backend's native seed.

    Args:
        seed: A `(2,)` integer tensor, array or sequence.

    Returns:
        An opaque seed for `fold_in`: a threefry key on JAX, a `(2,)` int64
        tensor on TensorFlow and a tuple of two Python ints on torch (torch
        generators are seeded from Python ints, and torch runs eagerly).
    """
    backend = config.backend()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        raw = jnp.reshape(jnp.asarray(seed), (2,)).astype(jnp.uint32)
        return jax.random.wrap_key_data(raw, impl="threefry2x32")
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.reshape(tf.cast(seed, "int64"), [2])
    if backend == "torch":
        values = np.asarray(ops.convert_to_numpy(seed)).reshape(-1)
        if values.shape != (2,):
            raise ValueError(
                f"`seed` must have shape (2,). Received shape {values.shape}."
            )
        return tuple(int(v) & 0xFFFFFFFF for v in values)
    raise NotImplementedError(f"Unsupported Keras backend: {backend}.")


def fold_in(seed, index):
    """Derives the seed for decoding step `index` from a `make_seed` seed.

    Args:
        seed: A seed returned by `make_seed`.
        index: Python int or 0-d int tensor.

    Returns:
        A seed of the same kind, accepted by `uniform` and `categorical`.
    """
    backend = config.backend()
    if backend == "jax":
        import jax

        return jax.random.fold_in(seed, index)
    if backend == "tensorflow":
        import tensorflow as tf

        index = tf.cast(index, "int64")
        return tf.random.experimental.stateless_fold_in(seed, index)
    # torch: mix the key and the step with numpy's SeedSequence hash so that
    # neighbouring steps and seeds give unrelated generator states.
    mixed = np.random.SeedSequence([*seed, int(index)])
    return tuple(int(v) for v in mixed.generate_state(2))


def seed_generator_state(seed, dtype):
    """Returns a `keras.random.SeedGenerator` state derived from a seed.

    Lets a sampler's `SeedGenerator` (keras_hub's way of drawing random
    numbers) draw from a step seed inside a compiled loop, where its own
    state variable cannot advance.

    Args:
        seed: A seed returned by `fold_in`.
        dtype: The generator's state dtype (`keras.random.SeedGenerator(...)
            .state.dtype`).

    Returns:
        A `(2,)` tensor of `dtype`.
    """
    backend = config.backend()
    if backend == "jax":
        import jax

        return ops.cast(jax.random.key_data(seed), dtype)
    if backend == "tensorflow":
        return ops.cast(seed, dtype)
    # torch states are int32: keep 31 bits of each word.
    return ops.convert_to_tensor(np.array(seed, "int64") % 2**31, dtype)


def uniform(like, seed):
    """Draws float32 noise in `[tiny, 1)` with the shape of `like`.

    Args:
        like: A tensor whose shape (and, on torch, device) the noise takes.
        seed: A seed returned by `fold_in`.

    Returns:
        A float32 tensor shaped like `like`.
    """
    backend = config.backend()
    if backend == "jax":
        import jax

        return jax.random.uniform(seed, ops.shape(like), minval=_TINY)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.random.stateless_uniform(
            tf.shape(like), seed=seed, minval=_TINY, dtype="float32"
        )
    import torch

    like = ops.convert_to_tensor(like)
    generator = torch.Generator(device=like.device)
    generator.manual_seed((seed[0] << 32) | seed[1])
    noise = torch.rand(
        like.shape, generator=generator, device=like.device, dtype=torch.float32
    )
    return noise.clamp_min(_TINY)


def categorical(log_probs, seed):
    """Samples one index per row of `log_probs` with the Gumbel-max trick.

    Entries equal to `-inf` (zero probability) are never chosen.

    Args:
        log_probs: A `(batch, n)` float tensor of (unnormalised) log
            probabilities.
        seed: A seed returned by `fold_in`.

    Returns:
        A `(batch,)` int32 tensor of sampled indices.
    """
    log_probs = ops.cast(log_probs, "float32")
    gumbel = -ops.log(-ops.log(uniform(log_probs, seed)))
    return ops.cast(ops.argmax(log_probs + gumbel, axis=-1), "int32")
