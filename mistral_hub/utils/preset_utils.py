"""Loading and saving presets.

A preset is a directory (local, on Kaggle Models or on the Hugging Face Hub)
holding a model in one of three formats, detected from its files:

- **Keras** (keras_hub's format): `config.json` with a `registered_name`,
  `model.weights.h5` (or `model.weights.json` plus `model_0000N.weights.h5`
  shards), `tokenizer.json`, `preprocessor.json`, `task.json`,
  `metadata.json` and `assets/tokenizer/vocabulary.spm`.
- **transformers**: `config.json` with `model_type: "mistral"`,
  `model.safetensors` (or shards listed in `model.safetensors.index.json`),
  `tokenizer.model` or `tekken.json`, `generation_config.json`.
- **Mistral** (mistral-inference): `params.json`,
  `consolidated.safetensors`, `tokenizer.model.v*` or `tekken.json`.

Presets are written in the Keras format with keras_hub's class names
(`"keras_hub>MistralBackbone"`...), so keras_hub loads them; settings that
keras_hub does not know travel in an extra `"mistral_hub"` entry of the JSON
objects, which Keras ignores. When loading, `keras_hub>X`, `keras_nlp>X` and
`mistral_hub>X` map to our classes for an allowlist of Mistral classes;
anything else is refused, and nothing is ever unpickled.

This module holds the implementation behind the `from_preset()`,
`save_to_preset()` and `presets` members of `Backbone`, `Task`,
`Preprocessor` and `Tokenizer`.
"""

import collections
import contextlib
import copy
import datetime
import importlib
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings

import keras
from keras.src.saving import saving_lib

from mistral_hub.utils import dtype_utils
from mistral_hub.utils import hub
from mistral_hub.utils import validation

CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer.json"
PREPROCESSOR_CONFIG_FILE = "preprocessor.json"
TASK_CONFIG_FILE = "task.json"
METADATA_FILE = "metadata.json"
MODEL_WEIGHTS_FILE = "model.weights.h5"
SHARDED_MODEL_WEIGHTS_CONFIG_FILE = "model.weights.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
ASSET_DIR = "assets"
# Key of the mistral_hub-only settings inside a serialized object.
EXTRAS_KEY = "mistral_hub"
# Task attributes saved in the extras (not constructor arguments).
_TASK_ATTRIBUTES = ("default_stop_token_ids",)

# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


class classproperty(property):
    """A read-only property of the class, e.g. `MistralBackbone.presets`."""

    def __get__(self, _, owner_cls):
        return self.fget(owner_cls)


_SKIP_INIT = threading.local()
_PATCHED_INITIALIZERS = []
_PATCH_LOCK = threading.Lock()


def _patch_initializers():
    # Wraps the random Keras initializers once; the wrapper only differs
    # from the original while `skip_random_initialization()` is active in
    # the calling thread.
    with _PATCH_LOCK:
        if _PATCHED_INITIALIZERS:
            return
        for name in ("RandomNormal", "RandomUniform", "TruncatedNormal",
                     "VarianceScaling", "Orthogonal"):
            klass = getattr(keras.initializers, name, None)
            original = getattr(klass, "__dict__", {}).get("__call__")
            if original is None:
                continue

            def call(self, shape, dtype=None, _original=original):
                if getattr(_SKIP_INIT, "depth", 0):
                    return keras.ops.zeros(shape, dtype=dtype)
                return _original(self, shape, dtype=dtype)

            klass.__call__ = call
            _PATCHED_INITIALIZERS.append(klass)


@contextlib.contextmanager
def skip_random_initialization():
    """Makes Keras' random initializers return zeros in this thread.

    Used while building a model whose every weight is about to be loaded:
    drawing random values costs time (most of a JAX `from_preset` on CPU)
    and float32 temporaries, and the values are overwritten anyway. Other
    threads are unaffected.
    """
    _patch_initializers()
    _SKIP_INIT.depth = getattr(_SKIP_INIT, "depth", 0) + 1
    try:
        yield
    finally:
        _SKIP_INIT.depth -= 1


def _maybe_skip_initialization(load_weights):
    return skip_random_initialization() if load_weights else contextlib.nullcontext()


_MALLOC_TRIM = []


def trim_memory():
    """Returns freed heap memory to the OS (glibc `malloc_trim`).

    Loading frees many tensor-sized buffers between long-lived ones; glibc
    keeps them in its heap, so the process would look (and, for the OOM
    killer, be) larger than the model.
    """
    if not sys.platform.startswith("linux"):
        return
    if not _MALLOC_TRIM:
        try:
            import ctypes

            _MALLOC_TRIM.append(ctypes.CDLL("libc.so.6").malloc_trim)
        except (OSError, AttributeError):
            _MALLOC_TRIM.append(None)
    if _MALLOC_TRIM[0] is not None:
        _MALLOC_TRIM[0](0)


# ---------------------------------------------------------------------------
# Allowlisted classes
# ---------------------------------------------------------------------------

# name -> (our module, keras_hub module, keys keras_hub's constructor accepts
# or None when keras_hub cannot load our version of the class).
_CLASSES = {
    "MistralBackbone": (
        "mistral_hub.models.mistral.mistral_backbone",
        "keras_hub.src.models.mistral.mistral_backbone",
        (
            "name", "trainable", "dtype", "vocabulary_size", "num_layers",
            "num_query_heads", "hidden_dim", "intermediate_dim",
            "rope_max_wavelength", "rope_scaling_factor", "num_key_value_heads",
            "sliding_window", "head_dim", "layer_norm_epsilon", "dropout",
        ),
    ),
    "MistralCausalLM": (
        "mistral_hub.models.mistral.mistral_causal_lm",
        "keras_hub.src.models.mistral.mistral_causal_lm",
        ("backbone", "preprocessor", "name"),
    ),
    "MistralCausalLMPreprocessor": (
        "mistral_hub.models.mistral.mistral_causal_lm_preprocessor",
        "keras_hub.src.models.mistral.mistral_causal_lm_preprocessor",
        (
            "name", "trainable", "dtype", "tokenizer", "config_file",
            "sequence_length", "add_start_token", "add_end_token",
        ),
    ),
    "MistralTokenizer": (
        "mistral_hub.models.mistral.mistral_tokenizer",
        "keras_hub.src.models.mistral.mistral_tokenizer",
        (
            "name", "trainable", "dtype", "config_file", "proto",
            "sequence_length", "add_bos", "add_eos",
        ),
    ),
    # keras_hub stores Tekken vocabularies as BPE `vocabulary.json` +
    # `merges.txt`; ours is the original `tekken.json`, which keras_hub
    # cannot read, so ours is saved under the mistral_hub name.
    "MistralTekkenTokenizer": (
        "mistral_hub.models.mistral.mistral_tekken_tokenizer",
        "keras_hub.src.models.mistral.mistral_tokenizer",
        None,
    ),
    # A transformers `tokenizer.json`; keras_hub has no such tokenizer.
    "MistralHFTokenizer": (
        "mistral_hub.models.mistral.mistral_hf_tokenizer",
        None,
        None,
    ),
}
_PACKAGES = ("keras_hub", "keras_nlp", "mistral_hub")


def _import_class(name):
    module_name = _CLASSES[name][0]
    return getattr(importlib.import_module(module_name), name)


def _allowed_classes():
    return [_import_class(name) for name in _CLASSES]


def _describe(what, source):
    return f"{what} of preset `{source.description}`" if source else what


def resolve_class(serialized, what="a preset object"):
    """Maps a serialized object's class to a mistral_hub class.

    `keras_hub>X`, `keras_nlp>X` and `mistral_hub>X` are accepted for the
    Mistral classes of mistral_hub; so is a class the user registered with
    `keras.saving.register_keras_serializable` that subclasses one of them.
    Nothing is imported by name from the file.

    Args:
        serialized: dict with `class_name`, `config` and `registered_name`.
        what: str. Description of the object for error messages.

    Returns:
        The class.

    Raises:
        ValueError: for anything else.

    Example:
    >>> resolve_class({"class_name": "MistralBackbone", "config": {},
    ...                "registered_name": "keras_hub>MistralBackbone"}).__name__
    'MistralBackbone'
    """
    if (
        not isinstance(serialized, dict)
        or not isinstance(serialized.get("class_name"), str)
        or not isinstance(serialized.get("config"), dict)
    ):
        raise ValueError(
            f"{what} is not a serialized Keras object (a JSON object with "
            "`class_name`, `config` and `registered_name`)."
        )
    registered = serialized.get("registered_name")
    if isinstance(registered, str) and ">" in registered:
        package, _, name = registered.partition(">")
    else:
        name = serialized["class_name"]
        package = str(serialized.get("module") or "").split(".")[0]
    if package in _PACKAGES and name in _CLASSES:
        return _import_class(name)
    if isinstance(registered, str):
        obj = keras.saving.get_registered_object(registered)
        if isinstance(obj, type) and any(
            issubclass(obj, allowed) for allowed in _allowed_classes()
        ):
            return obj
    allowed = ", ".join(f"keras_hub>{n}" for n in _CLASSES)
    raise ValueError(
        f"{what} has class `{registered or name}`, which mistral_hub does "
        f"not load. Allowed classes: {allowed} (also under `keras_nlp>` and "
        "`mistral_hub>`), and registered subclasses of them."
    )


def _check_dtype_config(dtype, what, nested=False):
    """Only Keras dtype policies may be deserialized from a `dtype` entry."""
    if dtype is None or isinstance(dtype, str):
        return
    if nested and isinstance(dtype, (int, float, bool)):
        return
    if isinstance(dtype, list) and nested:
        for item in dtype:
            _check_dtype_config(item, what, nested=True)
        return
    if not isinstance(dtype, dict):
        raise ValueError(f"`dtype` of {what} must be a string or a dtype policy.")
    if "class_name" in dtype:
        class_name = dtype.get("class_name")
        module = str(dtype.get("module") or "keras")
        policy_cls = (
            getattr(keras.dtype_policies, class_name, None)
            if isinstance(class_name, str)
            else None
        )
        if not (module == "keras" or module.startswith("keras.")) or not (
            isinstance(policy_cls, type)
        ):
            raise ValueError(
                f"`dtype` of {what} must be a Keras dtype policy. Received "
                f"class {class_name!r} from module {module!r}."
            )
        if dtype.get("registered_name") not in (None, class_name):
            raise ValueError(
                f"`dtype` of {what} has an unexpected registered name "
                f"{dtype.get('registered_name')!r}."
            )
    for value in dtype.values():
        _check_dtype_config(value, what, nested=True)


def _merge_dtype(saved, dtype):
    """Applies a requested `dtype` to a saved one (kept when quantized)."""
    if dtype is None:
        return saved
    if isinstance(dtype, keras.DTypePolicy):
        dtype = dtype.name
    if (
        isinstance(saved, dict)
        and saved.get("class_name") == "DTypePolicyMap"
        and isinstance(dtype, str)
    ):
        # A quantized model: the per-layer policies stay, only the float
        # source dtype changes (as keras_hub does).
        saved = copy.deepcopy(saved)
        saved["config"]["default_policy"] = dtype
        for policy in saved["config"].get("policy_map", {}).values():
            if isinstance(policy, dict) and "source_name" in policy.get("config", {}):
                policy["config"]["source_name"] = dtype
        return saved
    return dtype


def _kind(cls):
    from mistral_hub.models.backbone import Backbone
    from mistral_hub.models.preprocessor import Preprocessor
    from mistral_hub.models.task import Task

    if issubclass(cls, Backbone):
        return "backbone"
    if issubclass(cls, Task):
        return "task"
    if issubclass(cls, Preprocessor):
        return "preprocessor"
    return "tokenizer"


def _is_serialized_object(value):
    return (
        isinstance(value, dict)
        and isinstance(value.get("class_name"), str)
        and isinstance(value.get("config"), dict)
        and "registered_name" in value
    )


# Fields of serialized objects that may name a file. keras_hub saves them
# as None (vocabularies travel as assets) or inline data; a string is a path.
_PATH_FIELDS = ("proto", "vocabulary", "merges")


def _resolve_saved_paths(config, source, what):
    """Resolves file paths saved in a config inside the preset, or refuses."""
    for key in _PATH_FIELDS:
        if isinstance(config.get(key), str):
            try:
                config[key] = preset_file(source, config[key], key)
            except ValueError as e:
                raise ValueError(f"{what}: {e}") from None


def _accepted_kwargs(cls):
    return _init_params(cls) | {"name", "trainable", "dtype"}


def check_token_ids(name, value, vocabulary_size, what, strict=True):
    """Validates token ids read from a preset (e.g. stop ids).

    Args:
        name: str. The key holding them, for messages.
        value: an int or a list of ints.
        vocabulary_size: int. Ids must be in `[0, vocabulary_size)`.
        what: str. The file they come from, for messages.
        strict: bool. If False, invalid ids are dropped with a warning.

    Returns:
        A tuple of Python ints.

    Raises:
        ValueError: naming `name` and `what`, for a non-int (bools
            included) or out-of-range id when `strict`.
    """
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    valid = [validation.is_int(v) and 0 <= v < vocabulary_size for v in values]
    if not all(valid):
        message = (
            f"`{name}` in {what} must be token ids in [0, {vocabulary_size}) (the "
            f"vocabulary size). Received: {name}={value!r}"
        )
        if strict:
            raise ValueError(message)
        warnings.warn(f"{message}; the invalid ids are ignored (strict=False).", stacklevel=2)
    return tuple(int(v) for v, ok in zip(values, valid) if ok)


def deserialize(serialized, overrides=None, what="a preset object", cls=None, source=None):
    """Builds an object from its serialized config, through the allowlist.

    Nested `backbone`, `preprocessor` and `tokenizer` objects are built the
    same way. Settings saved under `"mistral_hub"` are merged back.

    Args:
        serialized: dict, as written by `serialize()` or keras_hub.
        overrides: dict mapping `"backbone"`, `"preprocessor"`,
            `"tokenizer"` or `"task"` to config values that replace the
            saved ones for objects of that kind.
        what: str. Description of the object for error messages.
        cls: optional class to build instead of the saved one (a subclass
            of it).
        source: the `hub.PresetSource` the config comes from. A file path
            saved in it (a tokenizer's `proto`, `vocabulary` or `merges`)
            must name a file inside that preset and is resolved there;
            without `source`, saved paths are used as they are.

    Returns:
        The object.

    Raises:
        TypeError: for an override the class does not accept.
        ValueError: for a class outside the allowlist, a saved path outside
            the preset, invalid saved stop ids, or a config the class
            refuses.
    """
    saved_cls = resolve_class(serialized, what)
    if cls is None or not issubclass(cls, saved_cls):
        cls = saved_cls
    config = dict(serialized["config"])
    extras = serialized.get(EXTRAS_KEY)
    extras = extras if isinstance(extras, dict) else {}
    if isinstance(extras.get("config"), dict):
        config.update(extras["config"])
    if source is not None:
        _resolve_saved_paths(config, source, what)
    for key in ("backbone", "preprocessor", "tokenizer"):
        if isinstance(config.get(key), dict):
            config[key] = deserialize(
                config[key], overrides, f"`{key}` of {what}", source=source
            )
    own = dict((overrides or {}).get(_kind(cls)) or {})
    validation.check_known_kwargs(
        f"{cls.__name__}.from_preset", own, _accepted_kwargs(cls) | set(config)
    )
    if "dtype" in own:
        config["dtype"] = _merge_dtype(config.get("dtype"), own.pop("dtype"))
    elif _kind(cls) == "backbone" and dtype_utils.user_dtype_policy() is not None:
        # A global policy the user set wins over the saved dtype.
        config["dtype"] = _merge_dtype(config.get("dtype"), dtype_utils.user_dtype_policy())
    config.update(own)
    _check_dtype_config(config.get("dtype"), what)
    try:
        obj = cls.from_config(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"Could not build `{cls.__name__}` from {what}: {e}") from e
    attributes = extras.get("attributes")
    if isinstance(attributes, dict):
        for name in _TASK_ATTRIBUTES:
            if attributes.get(name) is not None:
                vocabulary_size = obj.backbone.vocabulary_size
                setattr(obj, name, check_token_ids(name, attributes[name], vocabulary_size, what))
    return obj


def _strip_keys(config, keys):
    for key in keys:
        config.pop(key, None)
    for value in config.values():
        if isinstance(value, dict):
            _strip_keys(value, keys)


def _to_keras_hub_schema(serialized):
    config = serialized["config"]
    for key, value in list(config.items()):
        if _is_serialized_object(value):
            config[key] = _to_keras_hub_schema(value)
    package, _, name = str(serialized.get("registered_name")).partition(">")
    if package != "mistral_hub" or name not in _CLASSES or _CLASSES[name][2] is None:
        return serialized
    keras_hub_keys = _CLASSES[name][2]
    converted = {
        "module": _CLASSES[name][1],
        "class_name": name,
        "config": {k: v for k, v in config.items() if k in keras_hub_keys},
        "registered_name": f"keras_hub>{name}",
    }
    extra = {k: v for k, v in config.items() if k not in keras_hub_keys}
    if extra:
        converted[EXTRAS_KEY] = {"config": extra}
    return converted


def serialize(obj):
    """Serializes `obj` in keras_hub's preset schema.

    Our Mistral classes are written with keras_hub's `module` and
    `registered_name`; settings keras_hub's constructors do not accept go
    under `"mistral_hub"`. `compile_config` and `build_config` are dropped
    like keras_hub does.

    Returns:
        A JSON-serializable dict.
    """
    serialized = keras.saving.serialize_keras_object(obj)
    _strip_keys(serialized, ("compile_config", "build_config"))
    serialized = _to_keras_hub_schema(serialized)
    attributes = {
        name: list(getattr(obj, name))
        for name in _TASK_ATTRIBUTES
        if getattr(obj, name, None) is not None
    }
    if attributes:
        serialized.setdefault(EXTRAS_KEY, {})["attributes"] = attributes
    return serialized


def progress(items, description):
    """Wraps `items` in a tqdm progress bar shown only on a terminal.

    Set `MISTRAL_HUB_QUIET=1` to silence it everywhere (downloads show the
    hub clients' own bars, which follow their own settings).
    """
    from tqdm.auto import tqdm

    quiet = os.environ.get("MISTRAL_HUB_QUIET", "") not in ("", "0")
    # `disable=None` turns the bar off when the output is not a TTY.
    return tqdm(items, desc=description, unit="tensor", disable=True if quiet else None, leave=False)


# ---------------------------------------------------------------------------
# Built-in presets
# ---------------------------------------------------------------------------

_BUILTIN = None


def _builtin_registry():
    global _BUILTIN
    if _BUILTIN is None:
        from mistral_hub.models.mistral import mistral_presets
        from mistral_hub.models.mistral.mistral_backbone import MistralBackbone

        registry = {}
        _add_presets(registry, mistral_presets.backbone_presets, MistralBackbone)
        _BUILTIN = registry
    return _BUILTIN


def _add_presets(registry, presets, backbone_cls):
    for name, preset in presets.items():
        if "package_path" not in preset:
            hub.parse_kaggle_handle(preset["kaggle_handle"].partition("://")[2])
        registry[name] = (backbone_cls, preset)


def register_presets(presets, backbone_cls):
    """Registers built-in presets (name -> `{"metadata", "kaggle_handle"}`).

    Args:
        presets: dict of preset name to a dict with `metadata` (description,
            params, path) and either `kaggle_handle` or `package_path` (a
            preset directory shipped inside the `mistral_hub` package,
            relative to it).
        backbone_cls: the backbone class the presets hold.
    """
    _add_presets(_builtin_registry(), presets, backbone_cls)


def builtin_presets(cls):
    """The built-in presets `cls.from_preset()` accepts, by name.

    Base classes (`Backbone`, `CausalLM`, `Tokenizer`...) list every preset;
    a model class lists the presets of its backbone.

    Example:
    >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
    >>> "mistral_7b_en" in builtin_presets(MistralBackbone)
    True
    """
    from mistral_hub.models.backbone import Backbone

    registry = _builtin_registry()
    if issubclass(cls, Backbone):
        target = cls
    elif getattr(cls, "backbone_cls", None) is not None:
        target = cls.backbone_cls
    elif any(issubclass(c, cls) for c in _allowed_classes()):
        # A base class (Task, CausalLM, Tokenizer...) or one of our
        # tokenizers, which hold no `backbone_cls`.
        target = Backbone
    else:
        return {}
    return {
        name: copy.deepcopy(preset)
        for name, (backbone_cls, preset) in registry.items()
        if issubclass(backbone_cls, target)
    }


def get_preset_source(preset):
    """Returns the `hub.PresetSource` of a preset name, handle or directory.

    Raises:
        ValueError: for an unknown preset name (listing the built-in ones)
            or a malformed handle.
        FileNotFoundError: for a missing local directory.
    """
    if isinstance(preset, hub.PresetSource):
        return preset
    registry = _builtin_registry()
    if isinstance(preset, str) and preset in registry:
        entry = registry[preset][1]
        if "package_path" in entry:
            package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            preset = os.path.join(package_root, *entry["package_path"].split("/"))
        else:
            preset = entry["kaggle_handle"]
    source = hub.resolve_source(preset)
    if source is None:
        raise ValueError(
            f"Unknown preset {preset!r}. Built-in presets: "
            f"{', '.join(sorted(registry))}. Otherwise pass a "
            "'kaggle://owner/model/framework/variation[/version]' or "
            "'hf://owner/repo[@revision]' handle, or a local directory."
        )
    return source


def _preset_roots(directory):
    """Real directories the files of a local preset may resolve into.

    The preset directory itself, plus the `blobs` folder next to it when it
    is a huggingface_hub cache snapshot (`<repo>/snapshots/<commit>`, whose
    files are links into `<repo>/blobs`).
    """
    root = os.path.realpath(directory)
    roots = [root]
    parent = os.path.dirname(root)
    blobs = os.path.join(os.path.dirname(parent), "blobs")
    if os.path.basename(parent) == "snapshots" and os.path.isdir(blobs):
        roots.append(blobs)
    return roots


def preset_file(source, path, what="path"):
    """The local path of file `path` of a preset, refusing any way out of it.

    Every file the loaders read goes through here. `path` must be a relative
    path without `..` (see `hub.check_relative_path`), and in a local
    directory it must not resolve, through symbolic links, to a file
    outside the preset: a crafted preset must not make the loader read
    arbitrary local files.

    Args:
        source: a `hub.PresetSource`.
        path: str. The file, relative to the preset root.
        what: str. How to call `path` in error messages (e.g. `"proto"`).

    Returns:
        str. A local path.

    Raises:
        ValueError: for an absolute path, `..`, or a link leaving the
            preset.
        FileNotFoundError: if the preset has no such file.

    Example:
    >>> import os, tempfile
    >>> directory = tempfile.mkdtemp()
    >>> os.symlink("/etc/hostname", os.path.join(directory, "vocabulary.spm"))
    >>> try:
    ...     preset_file(hub.LocalSource(directory), "vocabulary.spm")
    ... except ValueError as e:
    ...     print("outside the preset directory" in str(e))
    True
    """
    hub.check_relative_path(path, what)
    local_path = source.get_file(path)
    if isinstance(source, hub.LocalSource):
        real = os.path.realpath(local_path)
        if not any(
            os.path.commonpath([real, root]) == root for root in _preset_roots(source.directory)
        ):
            raise ValueError(
                f"`{path}` of preset `{source.description}` resolves to `{real}`, "
                "outside the preset directory (a symbolic link?). Copy the file "
                "into the preset instead."
            )
    return local_path


def load_json(source, path):
    """Reads a JSON object file of a preset."""
    local_path = preset_file(source, path)
    try:
        with open(local_path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"`{path}` of preset `{source.description}` is not valid JSON: {e}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"`{path}` of preset `{source.description}` must hold a JSON object."
        )
    return data


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------


def _init_params(cls):
    """Named constructor arguments of `cls` and its bases above Keras'."""
    names = set()
    for klass in cls.__mro__:
        # Keras' own constructors take arguments (`autocast`...) that our
        # models do not pass on.
        if klass.__module__.startswith("keras"):
            continue
        for name, param in inspect.signature(klass.__init__).parameters.items():
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                names.add(name)
    names.discard("self")
    return names


def _route_kwargs(
    kwargs, caller, backbone_keys=(), preprocessor_keys=(), tokenizer_keys=(), task_keys=()
):
    """Splits `from_preset` kwargs between the objects they configure.

    `dtype` goes to the backbone; other keys to the first object whose
    keys hold them, in the order of the arguments.

    Raises:
        TypeError: for a key no object takes, naming it (and the closest
            accepted key), instead of dropping it silently.
    """
    validation.check_known_kwargs(
        caller,
        kwargs,
        {"dtype", *backbone_keys, *preprocessor_keys, *tokenizer_keys, *task_keys},
    )
    routed = {"backbone": {}, "preprocessor": {}, "tokenizer": {}, "task": {}}
    for key, value in kwargs.items():
        if key == "dtype" or key in backbone_keys:
            routed["backbone"][key] = value
        elif key in preprocessor_keys:
            routed["preprocessor"][key] = value
        elif key in tokenizer_keys:
            routed["tokenizer"][key] = value
        else:
            routed["task"][key] = value
    return routed


_GENERIC_KEYS = {"name", "trainable", "dtype", "tokenizer", "config_file", "proto",
                 "vocabulary", "merges", "backbone", "preprocessor", "kwargs", "args",
                 "inputs", "outputs"}


class PresetLoader:
    """Builds objects from one preset. Subclasses implement one format."""

    def __init__(self, source, config):
        self.source = source
        self.config = config

    def check_backbone_class(self):
        """Returns the backbone class the preset holds."""
        raise NotImplementedError

    def backbone_config_keys(self):
        return _init_params(self.check_backbone_class()) - _GENERIC_KEYS

    def load_backbone(self, cls, load_weights, strict=True, **kwargs):
        """Builds `cls` with config overrides `kwargs` and loads the weights.

        With `strict`, the weights must match the model exactly (see
        `WeightMismatches`); otherwise the matching ones are loaded and the
        rest listed in a warning.
        """
        raise NotImplementedError

    def load_tokenizer(self, cls, config_file=TOKENIZER_CONFIG_FILE, **kwargs):
        raise NotImplementedError

    def stop_token_ids(self, strict=True):
        """Token ids that end generation, from the preset; None if unknown."""
        return None

    def route_task_kwargs(self, cls, kwargs):
        preprocessor_cls = getattr(cls, "preprocessor_cls", None)
        preprocessor_keys = set()
        tokenizer_keys = set()
        if preprocessor_cls is not None:
            preprocessor_keys = _init_params(preprocessor_cls) - _GENERIC_KEYS
            if preprocessor_cls.tokenizer_cls is not None:
                tokenizer_keys = _init_params(preprocessor_cls.tokenizer_cls)
                tokenizer_keys -= _GENERIC_KEYS
        task_keys = {"backbone", "preprocessor", "name", "trainable"}
        return _route_kwargs(
            kwargs,
            f"{cls.__name__}.from_preset",
            backbone_keys=self.backbone_config_keys(),
            preprocessor_keys=preprocessor_keys,
            tokenizer_keys=tokenizer_keys,
            task_keys=task_keys | (_init_params(cls) - _GENERIC_KEYS),
        )

    def load_preprocessor(
        self, cls, config_file=PREPROCESSOR_CONFIG_FILE, tokenizer_kwargs=None, **kwargs
    ):
        """Builds `cls` around the preset's tokenizer, with default settings."""
        if cls.tokenizer_cls is None:
            raise ValueError(f"`{cls.__name__}` has no `tokenizer_cls`.")
        tokenizer = self.load_tokenizer(cls.tokenizer_cls, **(tokenizer_kwargs or {}))
        return cls(tokenizer=tokenizer, **kwargs)

    def load_task(self, cls, load_weights, strict=True, **kwargs):
        """Builds `cls` from the preset's backbone and preprocessor."""
        routed = self.route_task_kwargs(cls, kwargs)
        task_kwargs = routed["task"]
        backbone = task_kwargs.pop("backbone", None)
        if backbone is None:
            backbone = self.load_backbone(
                cls.backbone_cls, load_weights, strict=strict, **routed["backbone"]
            )
        if "preprocessor" in task_kwargs:
            preprocessor = task_kwargs.pop("preprocessor")
        elif cls.preprocessor_cls is not None:
            preprocessor = self.load_preprocessor(
                cls.preprocessor_cls,
                tokenizer_kwargs=routed["tokenizer"],
                **routed["preprocessor"],
            )
        else:
            preprocessor = None
        task = cls(backbone=backbone, preprocessor=preprocessor, **task_kwargs)
        stop_token_ids = self.stop_token_ids(strict)
        if stop_token_ids:
            task.default_stop_token_ids = tuple(stop_token_ids)
        return task


class KerasPresetLoader(PresetLoader):
    """Loads keras_hub-format presets (ours and keras_hub's)."""

    def check_backbone_class(self):
        return resolve_class(self.config, _describe(f"`{CONFIG_FILE}`", self.source))

    def backbone_config_keys(self):
        return set(self.config["config"]) - {"name", "trainable"} | (
            super().backbone_config_keys()
        )

    def load_backbone(self, cls, load_weights, strict=True, **kwargs):
        # Random values are only needed for weights a non-strict load skips.
        with _maybe_skip_initialization(load_weights and strict):
            backbone = deserialize(
                self.config,
                {"backbone": kwargs},
                _describe(f"`{CONFIG_FILE}`", self.source),
                cls=cls,
                source=self.source,
            )
        if load_weights:
            self.load_backbone_weights(backbone, strict)
        return backbone

    def load_tokenizer(self, cls, config_file=TOKENIZER_CONFIG_FILE, **kwargs):
        hub.check_relative_path(config_file, "config_file")
        what = _describe(f"`{config_file}`", self.source)
        config = load_json(self.source, config_file)
        saved_cls = resolve_class(config, what)
        _check_tokenizer_class(saved_cls, cls, what)
        tokenizer = deserialize(config, {"tokenizer": kwargs}, what, cls=cls, source=self.source)
        return load_tokenizer_assets(tokenizer, self.source)

    def load_preprocessor(
        self, cls, config_file=PREPROCESSOR_CONFIG_FILE, tokenizer_kwargs=None, **kwargs
    ):
        hub.check_relative_path(config_file, "config_file")
        if self.source.exists(config_file):
            what = _describe(f"`{config_file}`", self.source)
            config = load_json(self.source, config_file)
            if issubclass(resolve_class(config, what), cls):
                preprocessor = deserialize(
                    config,
                    {"preprocessor": kwargs, "tokenizer": tokenizer_kwargs or {}},
                    what,
                    cls=cls,
                    source=self.source,
                )
                _load_preprocessor_assets(preprocessor, self.source)
                return preprocessor
        return super().load_preprocessor(
            cls, config_file, tokenizer_kwargs=tokenizer_kwargs, **kwargs
        )

    def load_task(self, cls, load_weights, strict=True, **kwargs):
        if not self.source.exists(TASK_CONFIG_FILE):
            return super().load_task(cls, load_weights, strict, **kwargs)
        what = _describe(f"`{TASK_CONFIG_FILE}`", self.source)
        config = load_json(self.source, TASK_CONFIG_FILE)
        if not issubclass(resolve_class(config, what), cls):
            return super().load_task(cls, load_weights, strict, **kwargs)
        routed = self.route_task_kwargs(cls, kwargs)
        task_kwargs = routed["task"]
        config = copy.deepcopy(config)
        user_backbone = "backbone" in task_kwargs
        user_preprocessor = "preprocessor" in task_kwargs
        for key in ("backbone", "preprocessor"):
            if key in task_kwargs:
                config["config"][key] = task_kwargs.pop(key)
        with _maybe_skip_initialization(load_weights and strict and not user_backbone):
            task = deserialize(
                config,
                {
                    "backbone": routed["backbone"],
                    "preprocessor": routed["preprocessor"],
                    "tokenizer": routed["tokenizer"],
                    "task": task_kwargs,
                },
                what,
                cls=cls,
                source=self.source,
            )
        if task.preprocessor is not None and not user_preprocessor:
            _load_preprocessor_assets(task.preprocessor, self.source)
        if load_weights and not user_backbone:
            self.load_backbone_weights(task.backbone, strict)
        return task

    def load_backbone_weights(self, backbone, strict=True):
        """Loads `model.weights.h5` (or its shards) into `backbone`."""
        if self.source.exists(MODEL_WEIGHTS_FILE):
            name = MODEL_WEIGHTS_FILE
            path = preset_file(self.source, MODEL_WEIGHTS_FILE)
        elif self.source.exists(SHARDED_MODEL_WEIGHTS_CONFIG_FILE):
            name = SHARDED_MODEL_WEIGHTS_CONFIG_FILE
            path = preset_file(self.source, SHARDED_MODEL_WEIGHTS_CONFIG_FILE)
            what = f"`{name}` of preset `{self.source.description}`"
            for shard in _keras_shard_names(path, what):
                # Fetched next to the index, where Keras looks for them.
                preset_file(self.source, shard, "shard file name")
        else:
            raise FileNotFoundError(
                f"Preset `{self.source.description}` has no weights: neither "
                f"`{MODEL_WEIGHTS_FILE}` nor `{SHARDED_MODEL_WEIGHTS_CONFIG_FILE}`."
            )
        load_keras_weights(
            backbone, path, f"`{name}` of preset `{self.source.description}`", strict
        )


def _keras_shard_names(index_path, what):
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


def _stored_keras_weights(path, what):
    """`{dataset path: (shape, dtype, file, name in file)}` of a weights file.

    `path` is a `.weights.h5` file or a `.weights.json` index whose shards
    lie next to it. Optimizer state (`optimizer/...`) is left out.
    """
    import h5py

    files = [path]
    if path.endswith(".json"):
        directory = os.path.dirname(path)
        files = [os.path.join(directory, n) for n in _keras_shard_names(path, what)]
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
_READ_ERRORS = (OSError, KeyError, RuntimeError, EOFError)


def _unreadable(what, error):
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
        stored = _stored_keras_weights(path, what)
    except _READ_ERRORS as e:
        raise _unreadable(what, e) from e
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
    except _READ_ERRORS as e:
        raise _unreadable(what, e) from e
    except ValueError as e:
        raise ValueError(f"Could not load the weights in {what}: {e}") from e
    trim_memory()


def _check_tokenizer_class(found, cls, what):
    """A preset's tokenizer must be a `cls`, except between Mistral ones.

    SentencePiece and Tekken presets both belong to Mistral models, so
    `MistralTokenizer.from_preset()` on a Tekken preset returns a
    `MistralTekkenTokenizer` (as keras_hub does).
    """
    if issubclass(found, cls):
        return
    mistral = {
        _import_class(name)
        for name in ("MistralTokenizer", "MistralTekkenTokenizer", "MistralHFTokenizer")
    }
    if cls in mistral and any(issubclass(found, m) for m in mistral):
        return
    raise ValueError(
        f"{what} holds a `{found.__name__}`, which is not a `{cls.__name__}`."
    )


def load_tokenizer_assets(tokenizer, preset):
    """Loads a tokenizer's vocabulary files from a preset.

    Files are read from `assets/<config_file stem>/`, e.g.
    `assets/tokenizer/vocabulary.spm`. A keras_hub Tekken preset
    (`vocabulary.json` + `merges.txt`) is converted.

    Args:
        tokenizer: the tokenizer, built from its config.
        preset: a preset name, handle, directory or `hub.PresetSource`.

    Returns:
        The tokenizer with its vocabulary set (a new object for converted
        keras_hub Tekken presets).
    """
    source = get_preset_source(preset)
    config_file = getattr(tokenizer, "config_file", TOKENIZER_CONFIG_FILE)
    subdir = f"{ASSET_DIR}/{hub.check_relative_path(config_file, 'config_file').split('.')[0]}"
    assets = tuple(getattr(tokenizer, "file_assets", ()) or ())
    tekken_cls = _import_class("MistralTekkenTokenizer")
    if (
        isinstance(tokenizer, tekken_cls)
        and not source.exists(f"{subdir}/{assets[0]}")
        and source.exists(f"{subdir}/vocabulary.json")
    ):
        return _tekken_from_keras_hub_assets(tokenizer, source, subdir)
    paths = [preset_file(source, f"{subdir}/{name}") for name in assets]
    if paths:
        tokenizer.load_assets(os.path.dirname(paths[0]))
    return tokenizer


def _tekken_from_keras_hub_assets(tokenizer, source, subdir):
    with open(preset_file(source, f"{subdir}/vocabulary.json"), encoding="utf-8") as f:
        vocabulary = json.load(f)
    with open(preset_file(source, f"{subdir}/merges.txt"), encoding="utf-8") as f:
        merges = [line.rstrip("\n") for line in f if line.strip()]
    config = tokenizer.get_config()
    config.update({"vocabulary": vocabulary, "merges": merges})
    return type(tokenizer).from_config(config)


def _load_preprocessor_assets(preprocessor, source):
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if tokenizer is not None:
        preprocessor.tokenizer = load_tokenizer_assets(tokenizer, source)


def get_preset_loader(preset, require_config=True):
    """Returns the loader of a preset, detecting its format.

    Args:
        preset: a preset name, handle, directory or `hub.PresetSource`.
        require_config: bool. If False, a Keras preset without
            `config.json` (e.g. only a saved tokenizer) gives a loader that
            can load its tokenizer and preprocessor.

    Raises:
        FileNotFoundError: if the preset has neither `config.json` nor
            `params.json`.
        ValueError: for an unrecognized `config.json`, or a transformers
            config of another architecture.
    """
    from mistral_hub.utils.transformers import preset_loader

    source = get_preset_source(preset)
    config = None
    if source.exists(CONFIG_FILE):
        config = load_json(source, CONFIG_FILE)
        if "registered_name" in config:
            return KerasPresetLoader(source, config)
        if "model_type" in config:
            return preset_loader.TransformersPresetLoader(source, config)
    if source.exists(preset_loader.MISTRAL_PARAMS_FILE):
        params = load_json(source, preset_loader.MISTRAL_PARAMS_FILE)
        return preset_loader.MistralPresetLoader(source, params)
    if config is not None:
        raise ValueError(
            f"Unrecognized `{CONFIG_FILE}` in preset `{source.description}`: it "
            "is neither a Keras preset config (`registered_name`) nor a "
            "transformers config (`model_type`)."
        )
    if not require_config:
        return KerasPresetLoader(source, None)
    raise FileNotFoundError(
        f"Preset `{source.description}` has no `{CONFIG_FILE}` (Keras or "
        f"transformers format) and no `{preset_loader.MISTRAL_PARAMS_FILE}` "
        "(Mistral format)."
    )


# ---------------------------------------------------------------------------
# from_preset implementations
# ---------------------------------------------------------------------------


def _find_subclass(cls, backbone_cls, preset_description):
    """The class to build for a preset holding `backbone_cls`."""
    own = getattr(cls, "backbone_cls", None)
    if own is not None and issubclass(backbone_cls, own):
        return cls
    candidates = [
        c
        for c in _allowed_classes()
        if issubclass(c, cls)
        and getattr(c, "backbone_cls", None) is not None
        and issubclass(backbone_cls, c.backbone_cls)
    ]
    if not candidates:
        raise ValueError(
            f"No subclass of `{cls.__name__}` works with the "
            f"`{backbone_cls.__name__}` of preset `{preset_description}`."
        )
    return candidates[0]


def backbone_from_preset(cls, preset, load_weights=True, strict=True, **kwargs):
    """Implements `Backbone.from_preset` (see its docstring)."""
    validation.check_bool("load_weights", load_weights)
    validation.check_bool("strict", strict)
    loader = get_preset_loader(preset)
    validation.check_known_kwargs(
        f"{cls.__name__}.from_preset",
        kwargs,
        loader.backbone_config_keys() | {"name", "trainable", "dtype"},
    )
    backbone_cls = loader.check_backbone_class()
    if issubclass(cls, backbone_cls):
        target = cls
    elif issubclass(backbone_cls, cls):
        target = backbone_cls
    else:
        raise ValueError(
            f"Preset `{loader.source.description}` holds a "
            f"`{backbone_cls.__name__}`, which is not a `{cls.__name__}`."
        )
    return loader.load_backbone(target, load_weights, strict, **kwargs)


def task_from_preset(cls, preset, load_weights=True, strict=True, **kwargs):
    """Implements `Task.from_preset` (see its docstring)."""
    from mistral_hub.models.task import Task

    validation.check_bool("load_weights", load_weights)
    validation.check_bool("strict", strict)

    if cls is Task:
        raise ValueError(
            "Do not call `Task.from_preset()` directly; call a task class, "
            "e.g. `CausalLM.from_preset()` or `MistralCausalLM.from_preset()`."
        )
    loader = get_preset_loader(preset)
    cls = _find_subclass(cls, loader.check_backbone_class(), loader.source.description)
    return loader.load_task(cls, load_weights, strict, **kwargs)


def preprocessor_from_preset(cls, preset, config_file=PREPROCESSOR_CONFIG_FILE, **kwargs):
    """Implements `Preprocessor.from_preset` (see its docstring)."""
    loader = get_preset_loader(preset, require_config=False)
    if loader.config is None:
        # A preset holding only a preprocessor (and its tokenizer).
        what = _describe(f"`{config_file}`", loader.source)
        saved_cls = resolve_class(load_json(loader.source, config_file), what)
        if issubclass(cls, saved_cls):
            pass
        elif issubclass(saved_cls, cls):
            cls = saved_cls
        else:
            raise ValueError(f"{what} holds a `{saved_cls.__name__}`, not a `{cls.__name__}`.")
    else:
        cls = _find_subclass(cls, loader.check_backbone_class(), loader.source.description)
    tokenizer_keys = set()
    if cls.tokenizer_cls is not None:
        tokenizer_keys = _init_params(cls.tokenizer_cls) - _GENERIC_KEYS
    preprocessor_keys = (_init_params(cls) - _GENERIC_KEYS) | {"name", "trainable"}
    routed = _route_kwargs(
        kwargs,
        f"{cls.__name__}.from_preset",
        preprocessor_keys=preprocessor_keys,
        tokenizer_keys=tokenizer_keys,
    )
    # `dtype` of a preprocessor belongs to the preprocessor here.
    routed["preprocessor"].update(routed["backbone"])
    return loader.load_preprocessor(
        cls, config_file, tokenizer_kwargs=routed["tokenizer"], **routed["preprocessor"]
    )


def tokenizer_from_preset(cls, preset, config_file=TOKENIZER_CONFIG_FILE, **kwargs):
    """Implements `Tokenizer.from_preset` (see its docstring)."""
    loader = get_preset_loader(preset, require_config=False)
    return loader.load_tokenizer(cls, config_file, **kwargs)


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


def _variables_size_in_bytes(variables):
    seen = {}
    for v in variables:
        seen[id(v)] = v
    total = 0
    for v in seen.values():
        size = 1
        for dim in v.shape:
            size *= int(dim)
        total += size * _dtype_bytes(v.dtype)
    return total


def _dtype_bytes(dtype):
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype == "bool":
        return 1
    bits = re.search(r"(\d+)$", dtype)
    return int(bits.group(1)) // 8 if bits else 4


def _is_keras_preset_dir(path):
    for name in (CONFIG_FILE, TASK_CONFIG_FILE, PREPROCESSOR_CONFIG_FILE, TOKENIZER_CONFIG_FILE):
        file_path = os.path.join(path, name)
        if not os.path.isfile(file_path):
            continue
        try:
            with open(file_path, encoding="utf-8") as f:
                if "registered_name" in json.load(f):
                    return True
        except (OSError, ValueError, TypeError):
            continue
    return False


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


class PresetWriter:
    """Writes preset files into a (temporary) directory.

    Files already there may be hard links to a previous version of the
    preset, so every write first removes the path: writing through a link
    would modify the old preset before the new one is complete.
    """

    def __init__(self, directory):
        self.directory = directory

    def path(self, name):
        hub.check_relative_path(name)
        return os.path.join(self.directory, *name.split("/"))

    def write_json(self, name, data):
        path = self.path(name)
        _remove(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=4))

    def write_backbone(self, backbone, max_shard_size=10):
        self.write_json(CONFIG_FILE, serialize(backbone))
        self.write_json(METADATA_FILE, _metadata(backbone))
        for name in os.listdir(self.directory):
            if name in (MODEL_WEIGHTS_FILE, SHARDED_MODEL_WEIGHTS_CONFIG_FILE) or re.match(
                r"^model_\d+\.weights\.h5$", name
            ):
                _remove(os.path.join(self.directory, name))
        size_gb = _variables_size_in_bytes(backbone.variables) / 1024**3
        if max_shard_size is not None and size_gb > max_shard_size:
            backbone.save_weights(
                self.path(SHARDED_MODEL_WEIGHTS_CONFIG_FILE), max_shard_size=max_shard_size
            )
        else:
            backbone.save_weights(self.path(MODEL_WEIGHTS_FILE))

    def write_tokenizer(self, tokenizer):
        config_file = getattr(tokenizer, "config_file", None) or TOKENIZER_CONFIG_FILE
        if not config_file.endswith(".json") or "/" in config_file:
            raise ValueError(
                "A tokenizer's `config_file` must be a `.json` file name. "
                f"Received: config_file={config_file!r}"
            )
        self.write_json(config_file, serialize(tokenizer))
        asset_dir = self.path(f"{ASSET_DIR}/{config_file.split('.')[0]}")
        _remove(asset_dir)
        os.makedirs(asset_dir)
        tokenizer.save_assets(asset_dir)

    def write_preprocessor(self, preprocessor):
        config_file = getattr(preprocessor, "config_file", None) or PREPROCESSOR_CONFIG_FILE
        if not config_file.endswith(".json") or "/" in config_file:
            raise ValueError(
                "A preprocessor's `config_file` must be a `.json` file name. "
                f"Received: config_file={config_file!r}"
            )
        self.write_json(config_file, serialize(preprocessor))
        if getattr(preprocessor, "tokenizer", None) is not None:
            self.write_tokenizer(preprocessor.tokenizer)

    def write_task(self, task, max_shard_size=10):
        self.write_json(TASK_CONFIG_FILE, serialize(task))
        self.write_backbone(task.backbone, max_shard_size)
        if task.preprocessor is not None:
            self.write_preprocessor(task.preprocessor)


def _metadata(backbone):
    import mistral_hub

    mistral_hub_version = mistral_hub.__version__
    tasks = sorted(
        {
            c.__base__.__name__
            for c in _allowed_classes()
            if getattr(c, "backbone_cls", None) is type(backbone) and _kind(c) == "task"
        }
    )
    return {
        "keras_version": keras.version(),
        "mistral_hub_version": mistral_hub_version,
        "parameter_count": backbone.count_params(),
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "tasks": tasks,
    }


def _link_tree(source, target):
    """Recreates `source` in `target` with hard links (copies if need be)."""
    for root, _, names in os.walk(source):
        rel = os.path.relpath(root, source)
        out = target if rel == "." else os.path.join(target, rel)
        os.makedirs(out, exist_ok=True)
        for name in names:
            src, dst = os.path.join(root, name), os.path.join(out, name)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


def _exchange(a, b):
    """Atomically swaps two paths (Linux `renameat2(RENAME_EXCHANGE)`)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def preset_writer(preset_dir, overwrite=False, mergeable=None, kind="Keras preset"):
    """Context manager that writes a preset atomically.

    Files are written into a temporary sibling directory that replaces
    `preset_dir` only once everything is written, so a crash never leaves a
    half-written preset. Saving into an existing Keras preset keeps its
    other files (e.g. `backbone.save_to_preset(d)` then
    `tokenizer.save_to_preset(d)` builds one preset, as with keras_hub).

    Args:
        preset_dir: str or path. The preset directory.
        overwrite: bool. Required to write into a non-empty directory that is
            not a Keras preset; then, and whenever `overwrite=True`, the
            directory is replaced by exactly what is written.
        mergeable: callable `directory -> bool` telling whether an existing
            directory may be added to; defaults to "is a Keras preset".
        kind: str. What `mergeable` accepts, for the error message.

    Yields:
        A `PresetWriter`.

    Raises:
        ValueError: if `preset_dir` is a file, or a non-empty directory that
            is not a Keras preset and `overwrite` is False.
    """
    preset_dir = os.path.abspath(os.path.expanduser(os.fspath(preset_dir)))
    if os.path.exists(preset_dir) and not os.path.isdir(preset_dir):
        raise ValueError(f"`preset_dir` is a file, not a directory: {preset_dir}")
    existing = os.path.isdir(preset_dir) and bool(os.listdir(preset_dir))
    mergeable = mergeable or _is_keras_preset_dir
    if existing and not overwrite and not mergeable(preset_dir):
        raise ValueError(
            f"`preset_dir` {preset_dir} is not empty and is not a {kind}; "
            "refusing to write into it. Pass `overwrite=True` to replace its "
            "contents."
        )
    parent = os.path.dirname(preset_dir)
    os.makedirs(parent, exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(preset_dir)}.tmp-", dir=parent)
    try:
        if existing and not overwrite:
            _link_tree(preset_dir, temp_dir)
        yield PresetWriter(temp_dir)
        os.chmod(temp_dir, 0o777 & ~_umask())
        if not os.path.isdir(preset_dir):
            os.rename(temp_dir, preset_dir)
        elif not os.listdir(preset_dir):
            os.rmdir(preset_dir)
            os.rename(temp_dir, preset_dir)
        elif _exchange(temp_dir, preset_dir):
            shutil.rmtree(temp_dir)  # Now holds the previous version.
        else:
            backup = tempfile.mkdtemp(prefix=f".{os.path.basename(preset_dir)}.old-", dir=parent)
            os.rmdir(backup)
            os.rename(preset_dir, backup)
            os.rename(temp_dir, preset_dir)
            shutil.rmtree(backup)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_backbone(backbone, preset_dir, max_shard_size=10, overwrite=False):
    """Implements `Backbone.save_to_preset`."""
    with preset_writer(preset_dir, overwrite) as writer:
        writer.write_backbone(backbone, max_shard_size)


def save_task(task, preset_dir, max_shard_size=10, overwrite=False):
    """Implements `Task.save_to_preset`."""
    with preset_writer(preset_dir, overwrite) as writer:
        writer.write_task(task, max_shard_size)


def save_preprocessor(preprocessor, preset_dir, overwrite=False):
    """Implements `Preprocessor.save_to_preset`."""
    with preset_writer(preset_dir, overwrite) as writer:
        writer.write_preprocessor(preprocessor)


def save_tokenizer(tokenizer, preset_dir, overwrite=False):
    """Implements `Tokenizer.save_to_preset`."""
    with preset_writer(preset_dir, overwrite) as writer:
        writer.write_tokenizer(tokenizer)


# ---------------------------------------------------------------------------
# Uploading presets
# ---------------------------------------------------------------------------

README_FILE = "README.md"

_UPLOAD_FORMS = (
    "An upload URI must be one of:\n"
    "1) a Kaggle Models handle 'kaggle://<owner>/<model>/<framework>/<variation>' "
    "(Kaggle numbers the versions itself),\n"
    "2) a Hugging Face handle 'hf://<owner>/<repo>' (or 'hf://<repo>' for your "
    "own account)."
)


def upload_preset(uri, preset):
    """Uploads a local Keras preset directory to Kaggle Models or the HF Hub.

    The directory must hold a preset written by `save_to_preset` (or by
    keras_hub): a `config.json` naming a Mistral class and readable model
    weights. Both are checked, and the handle validated, before anything is
    sent. A Hugging Face repository is created if needed and gets a model
    card unless it (or the preset) already has a `README.md`.

    Args:
        uri: str. `kaggle://<owner>/<model>/<framework>/<variation>`
            (uploaded with `kagglehub.model_upload`, which creates the next
            version) or `hf://<owner>/<repo>` (uploaded in one commit with
            `huggingface_hub`).
        preset: str or path. The local preset directory.

    Raises:
        ValueError: for a malformed URI or an invalid preset directory.
        FileNotFoundError: if `preset` does not exist or lacks its config
            or weights.
        ConnectionError: if the hub cannot be reached (no network, or
            `HF_HUB_OFFLINE=1` for Hugging Face).
        PermissionError: if the hub refuses the credentials.

    Example:
    >>> import tempfile
    >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
    >>> preset = tempfile.mkdtemp() + "/tiny"
    >>> MistralBackbone(vocabulary_size=10, num_layers=1, num_query_heads=2,
    ...     hidden_dim=8, intermediate_dim=16,
    ...     num_key_value_heads=1).save_to_preset(preset)
    >>> upload_preset("hf://owner/repo/extra", preset)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Hugging Face handles must have the form ... uri='hf://owner/repo/extra'
    """
    scheme, handle = _parse_upload_uri(uri)
    source = _validated_preset_dir(preset)
    if scheme == hub.KAGGLE_SCHEME:
        _upload_to_kaggle(handle, source)
    else:
        _upload_to_hf(handle, source)


def _parse_upload_uri(uri):
    if isinstance(uri, os.PathLike) or not isinstance(uri, str) or "://" not in uri:
        raise ValueError(f"{_UPLOAD_FORMS}\nReceived: uri={uri!r}")
    scheme, _, handle = uri.partition("://")
    scheme = scheme.lower()
    if scheme == hub.KAGGLE_SCHEME:
        if len(hub.parse_kaggle_handle(handle, "uri").split("/")) != 4:
            raise ValueError(
                "Upload to a Kaggle handle without a version: Kaggle creates the "
                "next version of 'kaggle://<owner>/<model>/<framework>/<variation>'. "
                f"Received: uri={uri!r}"
            )
        return scheme, handle
    if scheme == hub.HF_SCHEME:
        repo_id, revision = hub.parse_hf_handle(handle, "uri")
        if revision is not None:
            raise ValueError(
                "Uploads go to the default branch of a Hugging Face repository; "
                f"drop '@{revision}'. Received: uri={uri!r}"
            )
        return scheme, repo_id
    raise ValueError(
        f"Unsupported upload scheme `{scheme}://`. {_UPLOAD_FORMS}\nReceived: uri={uri!r}"
    )


def _validated_preset_dir(preset):
    """Checks that `preset` is a local Keras preset; returns its source."""
    if not isinstance(preset, (str, os.PathLike)):
        raise ValueError(
            "`preset` must be the path of a local preset directory. "
            f"Received: {type(preset).__name__}"
        )
    directory = os.path.expanduser(os.fspath(preset))
    if not os.path.exists(directory):
        raise FileNotFoundError(f"The preset directory `{directory}` doesn't exist.")
    if not os.path.isdir(directory):
        raise ValueError(
            f"`preset` must be a directory, not a file. Received: preset={directory!r}"
        )
    source = hub.LocalSource(directory)
    if not source.exists(CONFIG_FILE):
        raise FileNotFoundError(
            f"`{CONFIG_FILE}` is missing from the preset directory `{directory}`."
        )
    config = load_json(source, CONFIG_FILE)
    if "registered_name" not in config:
        raise ValueError(
            f"`{directory}` is not a Keras preset (its `{CONFIG_FILE}` has no "
            "`registered_name`; e.g. a transformers checkpoint). Load it with "
            "`from_preset()` and write a Keras preset with `save_to_preset()` "
            "before uploading it."
        )
    resolve_class(config, _describe(f"`{CONFIG_FILE}`", source))
    if source.exists(MODEL_WEIGHTS_FILE):
        name = MODEL_WEIGHTS_FILE
    elif source.exists(SHARDED_MODEL_WEIGHTS_CONFIG_FILE):
        name = SHARDED_MODEL_WEIGHTS_CONFIG_FILE
    else:
        raise FileNotFoundError(
            f"The weights file is missing from the preset directory `{directory}`: "
            f"neither `{MODEL_WEIGHTS_FILE}` nor `{SHARDED_MODEL_WEIGHTS_CONFIG_FILE}`."
        )
    what = f"`{name}` of preset `{directory}`"
    try:
        # Reads the HDF5 headers only: a truncated or missing shard shows.
        if not _stored_keras_weights(source.get_file(name), what):
            raise ValueError(f"{what} holds no weights.")
    except _READ_ERRORS as e:
        raise _unreadable(what, e) from e
    for name in (TASK_CONFIG_FILE, PREPROCESSOR_CONFIG_FILE, TOKENIZER_CONFIG_FILE):
        if source.exists(name):
            resolve_class(load_json(source, name), _describe(f"`{name}`", source))
    if source.exists(METADATA_FILE):
        load_json(source, METADATA_FILE)
    return source


def _upload_to_kaggle(handle, source):
    try:
        import kagglehub
        from kagglehub.exceptions import KaggleApiHTTPError
    except ImportError:
        raise ImportError(
            "Uploading to Kaggle requires the `kagglehub` package: "
            "`pip install kagglehub`."
        ) from None
    target = f"kaggle://{handle}"
    try:
        kagglehub.model_upload(handle, source.directory)
    except KaggleApiHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise PermissionError(
                f"Kaggle refused the upload to `{target}` ({status}): set Kaggle "
                "credentials that may write to this owner (`kagglehub.login()`, "
                "`KAGGLE_USERNAME`/`KAGGLE_KEY` or ~/.kaggle/kaggle.json)."
            ) from e
        raise
    except Exception as e:
        if not hub.is_connection_error(e):
            raise
        raise ConnectionError(
            f"Could not reach Kaggle to upload `{source.directory}` to `{target}` "
            f"({type(e).__name__}: {e}). Uploading needs network access."
        ) from e


def _upload_to_hf(repo_id, source):
    try:
        import huggingface_hub
        from huggingface_hub import constants
        from huggingface_hub import errors
    except ImportError:
        raise ImportError(
            "Uploading to the Hugging Face Hub requires the `huggingface_hub` "
            "package: `pip install huggingface_hub`."
        ) from None
    target = f"hf://{repo_id}"
    if hub.hf_offline(constants):
        raise ConnectionError(
            f"Cannot upload to `{target}`: Hugging Face offline mode is on "
            "(`HF_HUB_OFFLINE=1`). Unset it and make sure the Hub is reachable."
        )
    try:
        repo_id = huggingface_hub.create_repo(repo_id, exist_ok=True).repo_id
        operations = [
            huggingface_hub.CommitOperationAdd(
                path_in_repo=path, path_or_fileobj=source.get_file(path)
            )
            for path in sorted(source.list_files())
        ]
        if README_FILE not in source.list_files() and not huggingface_hub.file_exists(
            repo_id, README_FILE
        ):
            card = _model_card(source, repo_id).encode("utf-8")
            operations.append(huggingface_hub.CommitOperationAdd(README_FILE, card))
        huggingface_hub.create_commit(
            repo_id, operations, commit_message="Upload Keras preset with mistral_hub"
        )
    except errors.HFValidationError as e:
        raise ValueError(f"Invalid Hugging Face repository id `{repo_id}`: {e}") from e
    except errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise PermissionError(
                f"The Hugging Face Hub refused the upload to `{target}` ({status}): "
                "log in with a token that can write to it (`hf auth login` or "
                "`HF_TOKEN`)."
            ) from e
        raise
    except Exception as e:
        if hub.is_connection_error(e):
            raise ConnectionError(
                f"Could not reach the Hugging Face Hub ({constants.ENDPOINT}) to "
                f"upload `{source.directory}` to `{target}` "
                f"({type(e).__name__}: {e}). Uploading needs network access."
            ) from e
        raise


def _model_card(source, repo_id):
    """A short model card: the Hub shows it and tags the Keras library."""
    config = load_json(source, CONFIG_FILE)
    model = config["class_name"].removesuffix("Backbone")
    lines = ["---", "library_name: keras-hub"]
    model_class = config["class_name"]
    if source.exists(TASK_CONFIG_FILE):
        model_class = resolve_class(load_json(source, TASK_CONFIG_FILE)).__name__
        if model_class.endswith("CausalLM"):
            lines.append("pipeline_tag: text-generation")
    lines += [
        "---",
        "",
        f"A `{model}` model in the Keras preset format, uploaded with mistral_hub. "
        "It loads on JAX, TensorFlow and PyTorch with mistral_hub or keras_hub:",
        "",
        "```python",
        "import mistral_hub",
        "",
        f'model = mistral_hub.models.{model_class}.from_preset("hf://{repo_id}")',
        "```",
        "",
        "Model config:",
        "",
    ]
    lines += [f"* **{key}:** {value}" for key, value in config.get("config", {}).items()]
    return "\n".join(lines) + "\n"
