"""Weights of Keras presets: comparing a file with the model, then loading it.

Loading is strict by default: the layout of `model.weights.h5` (or its
shards) is compared with the model's from the HDF5 headers, before any weight
is read (see `WeightMismatches`).
"""

import collections
import contextlib
import json
import os
import re
import warnings

import keras
from keras.src.saving import saving_lib

from mistral_hub.utils import hub
from mistral_hub.utils import validation
from mistral_hub.utils.presets.memory import trim_memory


def keras_shard_names(index_path, what):
    """The shard files listed in a Keras `*.weights.json` index."""
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        names = set()
        for value in weight_map.values():
            names.update(value if isinstance(value, list) else [value])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{what} is not a valid shard index ({e}).") from None
    for shard in names:
        hub.check_relative_path(shard, "shard file name")
        if "/" in shard or not shard.endswith(".weights.h5"):
            raise ValueError(
                f"Invalid shard file name {shard!r} in {what}: shards must be "
                "`*.weights.h5` files next to the index."
            )
    return sorted(names)


class WeightMismatches:
    """Differences between a weights file and the model built from a config.

    The loaders collect them from file headers before reading any weight,
    then `report()` either refuses the load (strict, the default) or warns
    and lets the matching weights load (`strict=False`).

    Args:
        source: str. How the messages call the weights, e.g. `"the file"`.

    Example:
    >>> mismatches = WeightMismatches("the checkpoint")
    >>> mismatches.add("unexpected", "`extra.weight` (3,)")
    >>> mismatches.report("`model.safetensors`", "MistralBackbone", strict=True)
    Traceback (most recent call last):
    ...
    ValueError: `model.safetensors` does not match the `MistralBackbone` built from its config; nothing was loaded:
    - 1 in the checkpoint but not used by the model: `extra.weight` (3,)
    Fix the config or the weights, or pass `strict=False` to `from_preset()` to load only the matching weights.
    """

    _LABELS = {
        "missing": "missing from {source}",
        "shape": "with another shape in {source}",
        "dtype": "with an incompatible dtype in {source}",
        "unexpected": "in {source} but not used by the model",
    }
    _SHOWN = 5

    def __init__(self, source="the file"):
        self.source = source
        self.items = {kind: [] for kind in self._LABELS}
        self.hints = []

    def add(self, kind, text):
        self.items[kind].append(text)

    def __bool__(self):
        return any(self.items.values())

    def describe(self):
        lines = []
        for kind, label in self._LABELS.items():
            items = self.items[kind]
            if items:
                shown = "; ".join(items[: self._SHOWN])
                if len(items) > self._SHOWN:
                    shown += f"; ... and {len(items) - self._SHOWN} more"
                lines.append(f"- {len(items)} {label.format(source=self.source)}: {shown}")
        lines += [f"- {hint}" for hint in self.hints]
        return "\n".join(lines)

    def report(self, what, model_name, strict):
        """Raises (strict) or warns (not strict) if anything differs.

        Raises:
            ValueError: listing the differences, when `strict`.
        """
        if not self:
            return
        what = what[:1].upper() + what[1:]
        if strict:
            raise ValueError(
                f"{what} does not match the `{model_name}` built from its config; "
                f"nothing was loaded:\n{self.describe()}\nFix the config or the "
                "weights, or pass `strict=False` to `from_preset()` to load only "
                "the matching weights."
            )
        warnings.warn(
            f"{what} does not match the `{model_name}` built from its config; "
            "only the matching weights were loaded (strict=False), the others "
            f"keep their initial values:\n{self.describe()}",
            stacklevel=2,
        )


class _LayoutRecorder(saving_lib.H5IOStore):
    """A weights store that records what Keras would save, writing nothing."""

    def __init__(self):
        self.entries = {}
        self._path = ""

    def __bool__(self):
        return True

    def make(self, path, metadata=None):
        self._path = path
        return self

    def __setitem__(self, key, value):
        self.entries[f"{self._path}/vars/{key}" if self._path else f"vars/{key}"] = value


@contextlib.contextmanager
def _own_dtype_policies(model):
    """Gives layers that hold a `DTypePolicyMap` their own entry meanwhile.

    Quantized layers built from a map (as presets of quantized models are)
    ask `self.dtype_policy.quantization_mode` when saving, which the map
    answers with its default, None: Keras 3.15 would then save `None` for
    their scales.
    """
    replaced = []
    for layer in model._flatten_layers():
        policy = layer._dtype_policy
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap) and layer.path:
            replaced.append((layer, policy))
            layer._dtype_policy = policy[layer.path]
    try:
        yield
    finally:
        for layer, policy in replaced:
            layer._dtype_policy = policy


def _keras_weight_layout(model):
    """`{dataset path: variable}` as `model.save_weights()` lays them out.

    Runs Keras' own saving traversal (private, but the only definition of
    the layout) into a store that records the variables instead of writing
    them, so nothing is copied.
    """
    recorder = _LayoutRecorder()
    with _own_dtype_policies(model):
        saving_lib._save_state(model, recorder, None, "", set())
    return recorder.entries


def stored_keras_weights(path, what):
    """`{dataset path: (shape, dtype, file, name in file)}` of a weights file.

    `path` is a `.weights.h5` file or a `.weights.json` index whose shards
    lie next to it. Optimizer state (`optimizer/...`) is left out.
    """
    import h5py

    files = [path]
    if path.endswith(".json"):
        directory = os.path.dirname(path)
        files = [os.path.join(directory, n) for n in keras_shard_names(path, what)]
    stored = {}
    for file in files:
        with h5py.File(file, "r") as f:

            def visit(name, obj, file=file):
                if not isinstance(obj, h5py.Dataset) or name.startswith("optimizer/"):
                    return
                dtype = "bfloat16" if obj.attrs.get("dtype") == "bfloat16" else obj.dtype.name
                # Keras 2.13 files name the layer list differently.
                key = re.sub(r"^_layer_checkpoint_dependencies/", "layers/", name)
                stored[key] = (tuple(obj.shape), dtype, file, name)

            f.visititems(visit)
    return stored


def _dtype_kind(name):
    if "float" in name:
        return "float"
    return "int" if "int" in name else name


def _layer_count_hints(expected, stored):
    """`the file holds 2 `x` layers, the model 1` for each layer kind."""

    def counts(keys):
        groups = {k.split("/")[1] for k in keys if k.startswith("layers/") and k.count("/") > 2}
        return collections.Counter(re.sub(r"_\d+$", "", g) for g in groups)

    ours, theirs = counts(expected), counts(stored)
    return [
        f"the file holds {theirs[name]} `{name}` layers, the model {ours[name]}: does "
        "the config (e.g. `num_layers`) match the weights?"
        for name in sorted(set(ours) | set(theirs))
        if ours[name] != theirs[name]
    ]


def _compare_keras_weights(expected, stored):
    """The mismatches and the `(variable, stored entry)` pairs that match."""
    mismatches = WeightMismatches("the file")
    matching = []
    for key, value in expected.items():
        name = getattr(value, "path", key)
        shape = tuple(value.shape)
        if key not in stored:
            mismatches.add("missing", f"`{name}` {shape}")
            continue
        stored_shape, stored_dtype, _, _ = stored[key]
        if stored_shape != shape:
            mismatches.add(
                "shape",
                f"variable `{name}` has shape {shape}, but the file stores "
                f"{stored_shape} (`{key}`)",
            )
        elif _dtype_kind(keras.backend.standardize_dtype(value.dtype)) != _dtype_kind(
            stored_dtype
        ):
            mismatches.add(
                "dtype",
                f"variable `{name}` is {keras.backend.standardize_dtype(value.dtype)}, "
                f"but the file stores {stored_dtype} (`{key}`)",
            )
        else:
            matching.append((value, stored[key]))
    for key in sorted(set(stored) - set(expected)):
        mismatches.add("unexpected", f"`{key}` {stored[key][0]}")
    mismatches.hints = _layer_count_hints(expected, stored)
    return mismatches, matching


def _assign_stored_weights(matching):
    import h5py
    import ml_dtypes

    by_file = collections.defaultdict(list)
    for variable, (_, dtype, file, name) in matching:
        by_file[file].append((variable, dtype, name))
    for file, entries in by_file.items():
        with h5py.File(file, "r") as f:
            for variable, dtype, name in entries:
                value = f[name][()]
                if dtype == "bfloat16":
                    value = value.view(ml_dtypes.bfloat16)
                variable.assign(value)


# What h5py and Keras raise on a truncated or corrupt weights file.
READ_ERRORS = (OSError, KeyError, RuntimeError, EOFError)


def unreadable(what, error):
    return ValueError(
        f"Could not read the weights in {what}: the file is truncated, "
        f"corrupt or not a Keras weights file ({type(error).__name__}: {error})."
    )


def load_keras_weights(model, path, what, strict=True):
    """Loads a Keras weights file into `model`, checking it first.

    The file's weights (`path` is a `.weights.h5` file, or a
    `.weights.json` index with its shards next to it) are compared, from
    the file headers, with the variables Keras saves for `model`: every
    variable must be in the file with the same shape and a compatible dtype
    (floats for float variables), and the file may hold nothing else
    (optimizer state aside).

    Args:
        model: a built Keras model.
        path: str. Local path of the weights file or index.
        what: str. How to name the file in messages.
        strict: bool. If True, any difference raises before anything is
            loaded and `model.load_weights` does the loading. If False, the
            weights that match are assigned one by one, a warning lists the
            rest, and the other variables keep their values.

    Raises:
        ValueError: naming the file, for a truncated or corrupt file, and
            listing the differences (names, shapes and counts) when
            `strict`.
    """
    validation.check_bool("strict", strict)
    trim_memory()
    try:
        stored = stored_keras_weights(path, what)
    except READ_ERRORS as e:
        raise unreadable(what, e) from e
    mismatches, matching = _compare_keras_weights(_keras_weight_layout(model), stored)
    if not strict:
        # Values computed when saving (e.g. kernels with LoRA merged in)
        # only Keras' own loading can restore.
        for value, entry in matching:
            if not isinstance(value, keras.Variable):
                mismatches.add("missing", f"`{entry[3]}` (computed when saving)")
        matching = [entry for entry in matching if isinstance(entry[0], keras.Variable)]
    mismatches.report(what, type(model).__name__, strict)
    try:
        if strict:
            model.load_weights(path)
        else:
            _assign_stored_weights(matching)
    except READ_ERRORS as e:
        raise unreadable(what, e) from e
    except ValueError as e:
        raise ValueError(f"Could not load the weights in {what}: {e}") from e
    trim_memory()


def progress(items, description):
    """Wraps `items` in a tqdm progress bar shown only on a terminal.

    Set `MISTRAL_HUB_QUIET=1` to silence it everywhere (downloads show the
    hub clients' own bars, which follow their own settings).
    """
    from tqdm.auto import tqdm

    quiet = os.environ.get("MISTRAL_HUB_QUIET", "") not in ("", "0")
    # `disable=None` turns the bar off when the output is not a TTY.
    return tqdm(items, desc=description, unit="tensor", disable=True if quiet else None, leave=False)
