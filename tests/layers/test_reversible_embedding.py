"""The int8 output projection of `ReversibleEmbedding` passes gradients."""

import keras
import numpy as np
import pytest

from mistral_hub.layers.reversible_embedding import ReversibleEmbedding


def _input_gradient(layer, inputs, weights):
    """d sum(weights * layer(inputs, reverse=True)) / d inputs, per backend."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        return np.asarray(
            jax.grad(lambda x: (layer(x, reverse=True) * weights).sum())(inputs)
        )
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(inputs)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(layer(x, reverse=True) * weights)
        return tape.gradient(y, x).numpy()
    import torch

    x = torch.tensor(inputs, requires_grad=True)
    (layer(x, reverse=True) * torch.tensor(weights)).sum().backward()
    return x.grad.numpy()


@pytest.mark.parametrize("tie_weights", [False, True])
def test_int8_reverse_projection_has_the_straight_through_gradient(tie_weights):
    rng = np.random.default_rng(0)
    layer = ReversibleEmbedding(input_dim=12, output_dim=8, tie_weights=tie_weights)
    layer.build((None,))
    float_layer = keras.layers.ReversibleEmbedding(12, 8, tie_weights=tie_weights)
    float_layer.build((None,))
    inputs = rng.normal(size=(3, 8)).astype("float32")
    weights = rng.normal(size=(3, 12)).astype("float32")
    layer.quantize("int8")
    # The float layer holding the dequantized kernel is the reference.
    kernel = keras.ops.convert_to_numpy(
        layer._embeddings if tie_weights else layer.reverse_embeddings
    ).astype("float32")
    scale = keras.ops.convert_to_numpy(
        layer.embeddings_scale if tie_weights else layer.reverse_embeddings_scale
    )
    if tie_weights:
        float_layer.embeddings.assign(kernel / scale[:, None])
    else:
        float_layer.embeddings.assign(np.zeros((12, 8), "float32"))
        float_layer.reverse_embeddings.assign(kernel / scale)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(inputs, reverse=True)),
        keras.ops.convert_to_numpy(float_layer(inputs, reverse=True)),
        atol=0.05,
    )
    np.testing.assert_allclose(
        _input_gradient(layer, inputs, weights),
        _input_gradient(float_layer, inputs, weights),
        rtol=1e-5,
        atol=1e-5,
    )
