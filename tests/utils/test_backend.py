"""`compile_inference_function` sees the model's current weights on every backend."""

import keras
import numpy as np

from mistral_hub.utils import backend


def test_compiled_function_reads_current_weights():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign(np.ones((2, 1), "float32"))
    function = backend.compile_inference_function(model, lambda x: model(x) * 2)
    x = np.array([[1.0, 2.0]], "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(function(x)), [[6.0]])
    # Assigned after compiling: a function closing over stale values (a
    # plain `jax.jit`) would still return 6.
    model.layers[0].kernel.assign(np.full((2, 1), 2.0, "float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(function(x)), [[12.0]])
    backend.wait_for_host_callbacks()
