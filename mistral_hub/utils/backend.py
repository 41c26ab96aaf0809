"""Per-backend compilation of inference functions, in one place.

Task code states what it wants (an inference function compiled against a
model's current weights, host callbacks flushed) and this module says how
each backend does it, so no `keras.config.backend()` branch is needed
elsewhere.

Example:

```python
import numpy as np
import keras
from mistral_hub.utils import backend

model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
double = backend.compile_inference_function(model, lambda x: model(x) * 2)
double(np.ones((1, 3), "float32"))
```
"""

import collections
import itertools
import warnings

import keras


def compile_inference_function(model, function, jit_compile=True):
    """Compiles `function(*args)`, which reads `model`'s weights, for inference.

    JAX: `jax.jit` of a stateless function of the weights (the current
    variable values are passed in on every call, so later weight updates
    are seen without retracing); TensorFlow: `tf.function` without
    AutoGraph; torch: under `torch.no_grad()`, so in-place updates of
    tensors stay outside autograd (the loop runs in Python; its step is
    compiled by `compile_step_function`). With `model.run_eagerly`, JAX and
    TensorFlow run `function` as is.

    Args:
        model: the `keras.Model` whose variables `function` reads.
        function: a Python function of tensors. As for `jax.jit`, its
            branches and loops over tensor values must be Keras ops
            (`ops.cond`, `ops.while_loop`), not Python `if`/`while`.
        jit_compile: bool. On TensorFlow, compile with XLA; functions that
            call back into Python (see `tensor_utils.host_callback`) must
            pass False.

    Returns:
        A function with the same arguments and results as `function`.
    """
    backend = keras.config.backend()
    if backend == "jax" and not model.run_eagerly:
        import jax

        @jax.jit
        def compiled(state, *args):
            trainable, non_trainable = state
            mapping = itertools.chain(
                zip(model.trainable_variables, trainable),
                zip(model.non_trainable_variables, non_trainable),
            )
            with keras.StatelessScope(state_mapping=mapping):
                return function(*args)

        def run(*args):
            state = (
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
            )
            return compiled(state, *args)

        return run
    if backend == "tensorflow" and not model.run_eagerly:
        import tensorflow as tf

        # The function's control flow is Keras ops already (it also runs
        # under `jax.jit`); AutoGraph would only re-parse the source of every
        # layer `call()` it reaches: 70% of the first `generate()` call.
        return tf.function(function, jit_compile=jit_compile, autograph=False)
    if backend == "torch":
        import torch

        def run(*args):
            with torch.no_grad():
                return function(*args)

        return run
    return function


def compile_step_function(model, function):
    """Compiles one step of a loop that `compile_inference_function` runs.

    On JAX and TensorFlow the whole loop is compiled already: `function` is
    returned as is. On torch, where the loop runs in Python:

    - by default the step is traced once per input signature (shapes,
      dtypes, strides and non-tensor arguments, and the weights' dtypes),
      after its first `_EAGER_STEPS_BEFORE_TRACING` eager steps, into a
      flat graph of torch operators (`make_fx` on fake tensors) and the graph is run from then
      on: the same kernels as eager, without the Python of Keras' layers
      and ops around each one (about 20% of a batch-1 decode step). The
      weights are inputs of the graph (read through a
      `keras.StatelessScope`), so later weight updates are seen. If a step
      cannot be traced (Python control flow on tensor values, say), it runs
      eagerly with a warning. With `model.run_eagerly`, it always runs
      eagerly.
    - with `model.jit_compile` (`compile(jit_compile=True)`), the step is
      compiled with `torch.compile` (inductor), with dynamic shapes so that
      one compiled graph serves every batch size above one and every cache
      length. If inductor cannot compile (no C++ compiler, say), the step
      runs eagerly with a warning.

    Either way variables that are replaced (`quantize()`, `enable_lora()`)
    need a new compiled step.

    Args:
        model: the `keras.Model` whose variables `function` reads.
        function: a Python function of tensors, whose loops and branches
            over tensor values are Keras ops (as for `jax.jit`).

    Returns:
        A function with the same arguments and results as `function`.
    """
    if keras.config.backend() != "torch" or model.run_eagerly:
        return function
    if model.jit_compile:
        return _torch_compiled_step(model, function)
    return _torch_traced_step(model, function)


def _torch_compiled_step(model, function):
    import torch

    compiled = torch.compile(function, backend=_TORCH_COMPILE_BACKEND, dynamic=True)
    current = [compiled]

    def run(*args, **kwargs):
        try:
            # Without duck shapes: a batch size equal to a static size (2
            # key/value heads, say) would otherwise share its symbol and be
            # specialized to it.
            with torch.fx.experimental._config.patch(use_duck_shape=False):
                return current[0](*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            # Compilation fails before the step runs: nothing was updated.
            warnings.warn(
                f"`jit_compile=True`: torch.compile could not compile the "
                f"decode step of {model.name} ({type(error.inner_exception).__name__}: "
                f"{error.inner_exception}); it runs eagerly instead. Compile "
                "with `jit_compile=False` to silence this warning.",
                stacklevel=2,
            )
            current[0] = function
            return function(*args, **kwargs)

    return run


# `torch.compile`'s backend for `compile_step_function`; tests replace it.
_TORCH_COMPILE_BACKEND = "inductor"

# Input signatures (batch size, cache length, padding side) a step function
# remembers, the least recently used forgotten first.
_MAX_TRACED_SIGNATURES = 16

# Each signature's first steps run eagerly. Tracing costs about as much as
# 40 eager steps (both grow with the number of operators), so a signature
# used for a few steps only (a short reply, a one-off batch size) never
# pays for it, and one used just past them takes at most about twice its
# eager time; each traced step then saves about a fifth of an eager one.
_EAGER_STEPS_BEFORE_TRACING = 32


def _torch_traced_step(model, function):
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    variables = list(model.variables)
    # signature -> eager steps run so far, then the traced graph.
    signatures = collections.OrderedDict()
    untraceable = False

    def stateless_function(values, args, kwargs):
        with keras.StatelessScope(state_mapping=zip(variables, values)):
            return function(*args, **kwargs)

    def signature(values, args, kwargs):
        leaves, structure = torch.utils._pytree.tree_flatten((args, kwargs))
        described = tuple(
            (tuple(leaf.shape), leaf.dtype, leaf.device, leaf.stride())
            if isinstance(leaf, torch.Tensor)
            else (type(leaf), leaf)
            for leaf in leaves
        )
        # Weights keep their identity when training moves 16-bit ones to
        # float32 storage (and their layers to a mixed policy), which a
        # graph traced before would not compute with.
        weight_dtypes = tuple(value.dtype for value in values)
        return structure, described, weight_dtypes, torch.is_grad_enabled()

    def trace(values, args, kwargs):
        graph = make_fx(
            stateless_function,
            tracing_mode="fake",
            # Real tensors the step holds (constants) stay constants.
            _allow_non_fake_inputs=True,
        )(values, args, kwargs)
        _call_through_python_bindings(graph)
        return graph

    def run(*args, **kwargs):
        nonlocal untraceable
        if untraceable:
            return function(*args, **kwargs)
        values = [variable.value for variable in variables]
        key = signature(values, args, kwargs)
        try:
            entry = signatures.pop(key, 0)
        except TypeError:
            # An unhashable non-tensor argument: no signature to trace for.
            return function(*args, **kwargs)
        if len(signatures) == _MAX_TRACED_SIGNATURES:
            signatures.popitem(last=False)
        if isinstance(entry, int) and entry < _EAGER_STEPS_BEFORE_TRACING:
            signatures[key] = entry + 1
            return function(*args, **kwargs)
        if isinstance(entry, int):
            try:
                entry = trace(values, args, kwargs)
            except Exception as error:
                # Tracing ran on fake tensors, so nothing was updated; bad
                # inputs raise their own error from the eager call.
                outputs = function(*args, **kwargs)
                warnings.warn(
                    f"The decode step of {model.name} could not be traced "
                    f"into a torch graph ({type(error).__name__}: {error}); "
                    "it runs eagerly instead.",
                    stacklevel=2,
                )
                untraceable = True
                return outputs
        signatures[key] = entry
        return entry(values, args, kwargs)

    return run


def _call_through_python_bindings(graph_module):
    """Calls the graph's most frequent operators as `torch.mul` or `x.view`.

    A traced graph calls `torch.ops.aten.*` overloads, which parse their
    arguments against the operator schema on every call: 3-5 us more than
    the generated Python bindings of the same kernels (`torch.bmm`,
    `Tensor.view`), about 7% of a small model's decode step, whose ~1,200
    operators are mostly the views and products of its einsums.
    """
    import torch

    aten = torch.ops.aten
    methods = {
        aten.view.default: "view",
        aten._unsafe_view.default: "view",
        aten.permute.default: "permute",
        aten.unsqueeze.default: "unsqueeze",
        aten.select.int: "select",
    }
    functions = {
        aten.mul.Tensor: torch.mul,
        aten.add.Tensor: torch.add,
        aten.sub.Tensor: torch.sub,
        aten.bmm.default: torch.bmm,
        aten.mm.default: torch.mm,
        aten.pow.Tensor_Scalar: torch.pow,
        aten.mean.dim: torch.mean,
        aten.rsqrt.default: torch.rsqrt,
        aten.cat.default: torch.cat,
        aten.where.self: torch.where,
    }
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in methods:
            node.op, node.target = "call_method", methods[node.target]
        elif node.target in functions:
            node.target = functions[node.target]
    graph_module.recompile()


def wait_for_host_callbacks():
    """Returns once every host callback of finished compiled calls has run.

    JAX runs `jax.debug.callback` asynchronously; TensorFlow and torch call
    back synchronously, so there is nothing to wait for.
    """
    if keras.config.backend() == "jax":
        import jax

        jax.effects_barrier()


def run_keeping_variables(model, method, **kwargs):
    """Runs a Keras trainer method; on error, the variables keep values.

    Keras' JAX trainer detaches every variable's value while it runs
    (`_purge_model_variables`) and reattaches the state of the last
    completed step at the end (`jax_state_sync`); a call that fails
    before a step completed would leave them detached and the model
    unusable. Holding the values from before the call puts them back then.
    TensorFlow and torch update variables in place, so they need nothing.

    Args:
        model: the compiled `keras.Model` whose `method` runs.
        method: `model.fit`, `model.evaluate` or `model.predict` (bound).
        **kwargs: passed to `method`.
    """
    if keras.config.backend() != "jax":
        return method(**kwargs)
    if model.optimizer is not None and not model.optimizer.built:
        # Build the slots now so that they are held like the weights.
        model.optimizer.build(model.trainable_variables)
    held = {id(variable): variable._value for variable in _state_variables(model)}
    try:
        return method(**kwargs)
    except BaseException as error:
        # `fit` reattaches the last completed step's state itself;
        # `evaluate` and `predict` leave it in `_jax_state`.
        if getattr(model, "_jax_state", None):
            model.jax_state_sync()
        model._jax_state = None
        lost = _reattach(held, _state_variables(model), set(map(id, model.variables)))
        if lost:
            error.add_note(
                f"{len(lost)} model variables (e.g. {lost[0]}) could not be "
                "restored: their buffers were given to the step that "
                "failed. Reload the weights before using the model."
            )
        raise


def _state_variables(model):
    variables = list(model.variables)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    return variables + list(model.metrics_variables)


def _reattach(held_values, variables, model_variable_ids):
    """Gives detached variables back their values; returns the lost ones' paths."""
    lost = []
    for variable in variables:
        if variable._value is not None:
            continue  # Reattached by Keras: the last completed step's value.
        value = held_values.get(id(variable))
        if value is not None and not value.is_deleted():
            variable._value = value
        elif id(variable) in model_variable_ids:
            lost.append(variable.path)
        else:
            # Metrics and optimizer slots start from zeros.
            variable._value = keras.ops.zeros(variable.shape, variable.dtype)
    return lost


def store_variables_in_float32(model, variables):
    """Changes the storage dtype of `variables` to float32, keeping the objects.

    Optimizers, layers and (on torch) modules keep referring to the same
    variable objects, so nothing needs rebuilding.

    Args:
        model: the `keras.Model` the variables belong to (on TensorFlow,
            new `tf.Variable`s are created in its distribution scope).
        variables: list of `keras.Variable`s.
    """
    if keras.config.backend() == "tensorflow" and hasattr(model, "distribute_strategy"):
        with model.distribute_strategy.scope():
            for variable in variables:
                _store_in_float32(variable)
        return
    for variable in variables:
        _store_in_float32(variable)


def _store_in_float32(variable):
    backend = keras.config.backend()
    if backend == "torch":
        import torch

        # Same `torch.nn.Parameter`, so modules' parameter lists stay valid.
        parameter = variable.value
        with torch.no_grad():
            parameter.data = parameter.data.to(torch.float32)
        variable._dtype = "float32"
    elif backend == "tensorflow":
        import tensorflow as tf

        # A `tf.Variable` cannot change dtype: make a new one in its place.
        value = tf.cast(variable.value, "float32")
        variable._dtype = "float32"
        with tf.init_scope():
            variable._initialize(value)
    else:
        value = keras.ops.cast(variable.value, "float32")
        variable._dtype = "float32"
        variable._direct_assign(value)


def has_fused_attention():
    """Whether `keras.ops.dot_product_attention` beats the einsum path.

    It is a fused kernel on torch (SDPA) and lets XLA pick its attention
    implementation on JAX; TensorFlow's version is the einsum path with the
    keys and values repeated per query head.
    """
    return keras.config.backend() in ("jax", "torch")
