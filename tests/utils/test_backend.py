"""Compiled inference functions and steps: current weights, tracing, fallbacks."""

import warnings

import keras
import numpy as np
import pytest

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


def test_step_function_reads_current_weights():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign(np.ones((2, 1), "float32"))
    step = backend.compile_step_function(model, lambda x: model(x) * 2)
    x = keras.ops.convert_to_tensor([[1.0, 2.0]])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(step(x)), [[6.0]])
    # On torch the step is now a traced graph: the weights must be its
    # inputs, not constants captured when it was traced.
    model.layers[0].kernel.assign(np.full((2, 1), 2.0, "float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(step(x)), [[12.0]])


def _counting_step(model):
    """A step that records each time its Python runs (eagerly or traced)."""
    runs = []

    def function(x):
        runs.append(tuple(x.shape))
        return model(x) + 1.0

    return function, runs


@pytest.mark.skipif(keras.config.backend() != "torch", reason="torch traces the step")
def test_step_is_traced_once_per_input_signature():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    function, runs = _counting_step(model)
    step = backend.compile_step_function(model, function)
    one_row, two_rows = np.ones((1, 2), "float32"), np.ones((2, 2), "float32")
    for x in (one_row, one_row, two_rows, two_rows, one_row):
        x = keras.ops.convert_to_tensor(x)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(step(x)),
            keras.ops.convert_to_numpy(model(x)) + 1.0,
        )
    assert runs == [(1, 2), (2, 2)]


@pytest.mark.skipif(keras.config.backend() != "torch", reason="torch traces the step")
def test_untraceable_step_runs_eagerly_with_a_warning():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])

    def branching(x):
        # Python control flow on a tensor value cannot be traced.
        if keras.ops.convert_to_numpy(keras.ops.sum(x)) > 0:
            return x * 2
        return x * 3

    step = backend.compile_step_function(model, branching)
    positive = keras.ops.convert_to_tensor([[1.0, 2.0]])
    with pytest.warns(UserWarning, match="could not be traced"):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(step(positive)), [[2.0, 4.0]])
    # Both branches still taken as the values say (nothing baked in).
    np.testing.assert_allclose(keras.ops.convert_to_numpy(step(-positive)), [[-3.0, -6.0]])


@pytest.mark.skipif(keras.config.backend() != "torch", reason="torch traces the step")
def test_step_with_bad_inputs_raises_its_own_error_and_stays_traced():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    function, runs = _counting_step(model)
    step = backend.compile_step_function(model, function)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError):
            step(keras.ops.ones((1, 5)))
        x = keras.ops.ones((1, 2))
        step(x)
        step(x)
    # The good input was traced once, then ran as a graph.
    assert runs.count((1, 2)) == 1


@pytest.mark.skipif(keras.config.backend() != "torch", reason="torch traces the step")
def test_step_runs_eagerly_before_its_signature_is_traced(monkeypatch):
    monkeypatch.setattr(backend, "_EAGER_STEPS_BEFORE_TRACING", 2)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    function, runs = _counting_step(model)
    step = backend.compile_step_function(model, function)
    x = keras.ops.ones((1, 2))
    for _ in range(5):
        step(x)
    # Two eager steps, the trace, then the graph only.
    assert runs == [(1, 2)] * 3


@pytest.mark.skipif(keras.config.backend() != "torch", reason="torch traces the step")
def test_step_with_an_unhashable_argument_runs_eagerly():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    runs = []

    def function(x, offsets):
        runs.append(1)
        return x + keras.ops.convert_to_tensor(offsets)

    step = backend.compile_step_function(model, function)
    x = keras.ops.ones((1, 2))
    for offset in (1.0, 2.0):
        # A graph traced with the first array would return 2 for the second.
        output = step(x, np.array([offset, offset], "float32"))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(output), [[1 + offset] * 2])
    assert len(runs) == 2
