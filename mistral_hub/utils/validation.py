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

