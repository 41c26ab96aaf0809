"""Validators for arguments and config values, shared by every entry point.

Each validator raises an error that names the argument, says what was
expected and shows what was received, and returns the value as a plain
Python object (numpy scalars become `int`/`float`/`bool`), so validated
values serialize to JSON.

Config values (sizes, rates, flags) raise `ValueError` for any bad value,
including a wrong type, as keras_hub's constructors do; an unknown keyword
argument raises `TypeError`, as Python does for a misspelled argument.

Example:
>>> import numpy as np
>>> check_positive_int("num_layers", np.int64(2))
2
>>> check_finite_float("dropout", 0.1, low=0, high=1, include_high=False)
0.1
>>> check_known_kwargs("f", {"sliding_windw": 2}, ["sliding_window", "name"])
Traceback (most recent call last):
...
TypeError: f() got an unexpected keyword argument 'sliding_windw'. Did you mean 'sliding_window'?
"""

import difflib
import math
import numbers
import sys

import numpy as np


def is_int(value):
    """True for Python and numpy integers, False for bools."""
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )


def is_number(value):
    """True for Python and numpy real numbers, False for bools."""
    return isinstance(value, (numbers.Real, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _python(value):
    return value.item() if isinstance(value, np.generic) else value


def check_int(name, value, low=None, high=None, allow_none=False):
    """Checks that `value` is an int in `[low, high]` (None: unbounded).

    Returns:
        The value as a Python int (or None when `allow_none`).

    Raises:
        ValueError: naming `name`, for anything else (floats, bools and
            strings included).
    """
    if value is None and allow_none:
        return None
    if not is_int(value) or (low is not None and value < low) or (
        high is not None and value > high
    ):
        expected = "an int" + _describe_bounds(low, high, True, True)
        if allow_none:
            expected += " or None"
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return int(value)


def check_positive_int(name, value, allow_none=False):
    """Checks that `value` is an int > 0 (or None when `allow_none`).

    Returns:
        The value as a Python int, or None.

    Raises:
        ValueError: naming `name`.
    """
    if value is None and allow_none:
        return None
    if not is_int(value) or value <= 0:
        expected = "a positive int" + (" or None" if allow_none else "")
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return int(value)


def _describe_bounds(low, high, include_low, include_high):
    """` in [0, 1)`, ` > 0`, ` <= 5` or `` for the error messages."""
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>=' if include_low else '>'} {low}"
    if low is None:
        return f" {'<=' if include_high else '<'} {high}"
    return f" in {'[' if include_low else '('}{low}, {high}{']' if include_high else ')'}"


def check_finite_float(
    name, value, low=None, high=None, *, include_low=True, include_high=True
):
    """Checks that `value` is a finite real number within the bounds.

    Args:
        name: str. The argument's name, for the error message.
        value: the value to check. Python and numpy ints and floats are
            accepted; bools, strings, NaN and infinities are not.
        low, high: optional bounds.
        include_low, include_high: bool. Whether each bound is allowed.

    Returns:
        The value as a Python int or float (ints stay ints).

    Raises:
        ValueError: naming `name`.
    """
    # Ints are finite (and may be too large for `math.isfinite`).
    valid = is_number(value) and (is_int(value) or math.isfinite(value))
    if valid and low is not None:
        valid = value >= low if include_low else value > low
    if valid and high is not None:
        valid = value <= high if include_high else value < high
    if not valid:
        expected = "a finite number" + _describe_bounds(low, high, include_low, include_high)
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return _python(value)


def check_positive_float(name, value):
    """Checks that `value` is a finite number > 0 (e.g. an epsilon).

    Returns:
        The value as a Python int or float.

    Raises:
        ValueError: naming `name`.
    """
    return check_finite_float(name, value, low=0, include_low=False)


def check_bool(name, value):
    """Checks that `value` is a bool (`"no"`, 0 or None are not).

    Returns:
        The value as a Python bool.

    Raises:
        ValueError: naming `name`.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"`{name}` must be a bool (True or False). Received: {name}={value!r}"
        )
    return bool(value)


def check_known_kwargs(callable_name, kwargs, allowed):
    """Refuses keyword arguments that `callable_name` does not take.

    Args:
        callable_name: str. How to name the callee, e.g. `"MistralBackbone"`
            or `"MistralCausalLM.from_preset"`.
        kwargs: dict of the keyword arguments received.
        allowed: iterable of the accepted names (also the pool of "did you
            mean" suggestions).

    Raises:
        TypeError: naming every unknown argument, with the closest accepted
            name when one is close (else listing the accepted names).
    """
    allowed = sorted(set(allowed))
    unknown = [key for key in kwargs if key not in allowed]
    if not unknown:
        return
    suggestions = {
        key: difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.7) for key in unknown
    }
    if len(unknown) == 1:
        key = unknown[0]
        message = f"{callable_name}() got an unexpected keyword argument {key!r}."
        if suggestions[key]:
            message += f" Did you mean {suggestions[key][0]!r}?"
    else:
        listed = ", ".join(
            f"{key!r}" + (f" (did you mean {suggestions[key][0]!r}?)" if suggestions[key] else "")
            for key in unknown
        )
        message = f"{callable_name}() got unexpected keyword arguments {listed}."
    if not any(suggestions.values()):
        message += f" Accepted: {', '.join(allowed)}."
    raise TypeError(message)



# --- concrete token inputs -------------------------------------------------


def concrete_array(value):
    """Returns `value` as a numpy array, or None while it is symbolic.

    Concrete values are Python lists and numbers, numpy arrays and eager
    tensors of any backend; Keras, JAX-traced and TensorFlow-graph tensors
    are symbolic (their values do not exist yet, so nothing can be checked).
    """
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple, numbers.Number, np.generic)):
        return np.asarray(value)
    module = type(value).__module__
    if module.startswith("keras"):
        return None
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(value, jax.core.Tracer):
        return None
    if module.startswith("torch"):
        return None if value.is_meta else value.detach().cpu().numpy()
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(value, (tf.Tensor, tf.Variable)):
        return value.numpy() if hasattr(value, "numpy") and tf.executing_eagerly() else None
    if hasattr(value, "__array__"):
        return np.asarray(value)
    return None


def check_token_ids(name, token_ids, vocabulary_size):
    """Checks concrete token ids: integers in `[0, vocabulary_size)`.

    Symbolic tensors (inside a traced function) are not checked.

    Args:
        name: str. The argument's name, for the error message.
        token_ids: ids of any shape (list, numpy array or eager tensor).
        vocabulary_size: int. The number of embedding rows.

    Returns:
        The ids as a numpy array, or None for a symbolic tensor.

    Raises:
        ValueError: naming `name`, for float or bool ids and for an id out
            of range (with its position and the vocabulary size).
    """
    array = concrete_array(token_ids)
    if array is None:
        return None
    if array.dtype.kind not in "iu":
        raise ValueError(
            f"`{name}` must hold integer token ids. Received dtype "
            f"{array.dtype}: {name}={_short(array)}"
        )
    bad = (array < 0) | (array >= vocabulary_size)
    if bad.any():
        position = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`{name}` must hold token ids in [0, {vocabulary_size - 1}] (the "
            f"vocabulary size is {vocabulary_size}). Received "
            f"{name}[{', '.join(map(str, position))}]={array[position]}."
        )
    return array


def check_padding_mask(name, padding_mask, shape=None):
    """Checks a concrete padding mask: 0/1 values, right padded rows.

    Each row (last axis) must be ones then zeros: the tokens, then the
    padding. Left padding and gaps are refused, since positions and the
    causal mask assume tokens start at 0. Symbolic tensors are not checked.

    Args:
        name: str. The argument's name, for the error message.
        padding_mask: a bool or int mask (list, numpy array or eager tensor).
        shape: optional tuple. The shape the mask must have (the ids').

    Returns:
        The mask as a bool numpy array, or None for a symbolic tensor.

    Raises:
        ValueError: naming `name`.
    """
    array = concrete_array(padding_mask)
    if array is None:
        return None
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ValueError(
            f"`{name}` must have the shape of the token ids, {tuple(shape)}. "
            f"Received shape {tuple(array.shape)}."
        )
    if array.dtype.kind not in "biu" or not np.isin(array, (0, 1)).all():
        raise ValueError(
            f"`{name}` must be a bool or 0/1 integer mask. Received dtype "
            f"{array.dtype}: {name}={_short(array)}"
        )
    array = array.astype(bool)
    if array.ndim == 0:
        return array
    rows = array.reshape(-1, array.shape[-1]) if array.size else array.reshape(0, 0)
    holes = rows[:, 1:] & ~rows[:, :-1]
    if holes.any():
        row = int(np.argwhere(holes.any(axis=1))[0, 0])
        raise ValueError(
            f"`{name}` must be right padded: ones for the tokens, then zeros. "
            f"Left padding and gaps are not supported. Received in row {row}: "
            f"{_short(rows[row].astype(int))}"
        )
    return array


def check_token_inputs(name, inputs, vocabulary_size):
    """Checks a concrete `{"token_ids", "padding_mask"}` dict.

    Args:
        name: str or None. The argument holding the dict: messages name
            `x['token_ids']`, or just `token_ids` when None.
        inputs: the dict. Other structures are left to the caller.
        vocabulary_size: int. The number of embedding rows.

    Raises:
        ValueError: naming the key, for ids out of range, float ids and
            masks that are not right padded or do not match the ids' shape.
    """
    def key_name(key):
        return f"{name}['{key}']" if name else key

    token_ids = check_token_ids(key_name("token_ids"), inputs["token_ids"], vocabulary_size)
    if inputs.get("padding_mask") is not None:
        check_padding_mask(
            key_name("padding_mask"),
            inputs["padding_mask"],
            None if token_ids is None else token_ids.shape,
        )


def _short(array):
    text = np.array2string(np.asarray(array), threshold=16, separator=", ")
    return text if len(text) <= 120 else text[:117] + "..."
