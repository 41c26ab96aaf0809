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

import keras

from mistral_hub.utils import hub

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


def deserialize(serialized, overrides=None, what="a preset object", cls=None):
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

    Returns:
        The object.
    """
    saved_cls = resolve_class(serialized, what)
    if cls is None or not issubclass(cls, saved_cls):
        cls = saved_cls
    config = dict(serialized["config"])
    extras = serialized.get(EXTRAS_KEY)
    extras = extras if isinstance(extras, dict) else {}
    if isinstance(extras.get("config"), dict):
        config.update(extras["config"])
    for key in ("backbone", "preprocessor", "tokenizer"):
        if isinstance(config.get(key), dict):
            config[key] = deserialize(config[key], overrides, f"`{key}` of {what}")
    own = dict((overrides or {}).get(_kind(cls)) or {})
    if "dtype" in own:
        config["dtype"] = _merge_dtype(config.get("dtype"), own.pop("dtype"))
    config.update(own)
    _check_dtype_config(config.get("dtype"), what)
    try:
        obj = cls.from_config(config)
    except TypeError as e:
        raise ValueError(f"Could not build `{cls.__name__}` from {what}: {e}") from e
    attributes = extras.get("attributes")
    if isinstance(attributes, dict):
        for name in _TASK_ATTRIBUTES:
            if attributes.get(name) is not None:
                setattr(obj, name, tuple(int(i) for i in attributes[name]))
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


def load_json(source, path):
    """Reads a JSON object file of a preset."""
    local_path = source.get_file(path)
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
    """Named constructor arguments of `cls` and its mistral_hub bases."""
    names = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("mistral_hub"):
            continue
        for name, param in inspect.signature(klass.__init__).parameters.items():
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                names.add(name)
    names.discard("self")
    return names


def _route_kwargs(kwargs, backbone_keys=(), preprocessor_keys=(), tokenizer_keys=()):
    """Splits `from_preset` kwargs between the objects they configure."""
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
                 "vocabulary", "merges", "backbone", "preprocessor", "kwargs", "args"}


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

    def load_backbone(self, cls, load_weights, **kwargs):
        raise NotImplementedError

    def load_tokenizer(self, cls, config_file=TOKENIZER_CONFIG_FILE, **kwargs):
        raise NotImplementedError

    def stop_token_ids(self):
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
        return _route_kwargs(
            kwargs,
            backbone_keys=self.backbone_config_keys(),
            preprocessor_keys=preprocessor_keys,
            tokenizer_keys=tokenizer_keys,
        )

    def load_preprocessor(
        self, cls, config_file=PREPROCESSOR_CONFIG_FILE, tokenizer_kwargs=None, **kwargs
    ):
        """Builds `cls` around the preset's tokenizer, with default settings."""
        if cls.tokenizer_cls is None:
            raise ValueError(f"`{cls.__name__}` has no `tokenizer_cls`.")
        tokenizer = self.load_tokenizer(cls.tokenizer_cls, **(tokenizer_kwargs or {}))
        return cls(tokenizer=tokenizer, **kwargs)

    def load_task(self, cls, load_weights, **kwargs):
        """Builds `cls` from the preset's backbone and preprocessor."""
        routed = self.route_task_kwargs(cls, kwargs)
        task_kwargs = routed["task"]
        backbone = task_kwargs.pop("backbone", None)
        if backbone is None:
            backbone = self.load_backbone(
                cls.backbone_cls, load_weights, **routed["backbone"]
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
        stop_token_ids = self.stop_token_ids()
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

    def load_backbone(self, cls, load_weights, **kwargs):
        with _maybe_skip_initialization(load_weights):
            backbone = deserialize(
                self.config,
                {"backbone": kwargs},
                _describe(f"`{CONFIG_FILE}`", self.source),
                cls=cls,
            )
        if load_weights:
            self.load_backbone_weights(backbone)
        return backbone

    def load_tokenizer(self, cls, config_file=TOKENIZER_CONFIG_FILE, **kwargs):
        hub.check_relative_path(config_file, "config_file")
        what = _describe(f"`{config_file}`", self.source)
        config = load_json(self.source, config_file)
        saved_cls = resolve_class(config, what)
        _check_tokenizer_class(saved_cls, cls, what)
        tokenizer = deserialize(config, {"tokenizer": kwargs}, what, cls=cls)
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
                )
                _load_preprocessor_assets(preprocessor, self.source)
                return preprocessor
        return super().load_preprocessor(
            cls, config_file, tokenizer_kwargs=tokenizer_kwargs, **kwargs
        )

    def load_task(self, cls, load_weights, **kwargs):
        if not self.source.exists(TASK_CONFIG_FILE):
            return super().load_task(cls, load_weights, **kwargs)
        what = _describe(f"`{TASK_CONFIG_FILE}`", self.source)
        config = load_json(self.source, TASK_CONFIG_FILE)
        if not issubclass(resolve_class(config, what), cls):
            return super().load_task(cls, load_weights, **kwargs)
        routed = self.route_task_kwargs(cls, kwargs)
        task_kwargs = routed["task"]
        config = copy.deepcopy(config)
        user_backbone = "backbone" in task_kwargs
        user_preprocessor = "preprocessor" in task_kwargs
        for key in ("backbone", "preprocessor"):
            if key in task_kwargs:
                config["config"][key] = task_kwargs.pop(key)
        with _maybe_skip_initialization(load_weights and not user_backbone):
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
            )
        if task.preprocessor is not None and not user_preprocessor:
            _load_preprocessor_assets(task.preprocessor, self.source)
        if load_weights and not user_backbone:
            self.load_backbone_weights(task.backbone)
        return task

    def load_backbone_weights(self, backbone):
        """Loads `model.weights.h5` (or its shards) into `backbone`."""
        if self.source.exists(MODEL_WEIGHTS_FILE):
            name = MODEL_WEIGHTS_FILE
            path = self.source.get_file(MODEL_WEIGHTS_FILE)
        elif self.source.exists(SHARDED_MODEL_WEIGHTS_CONFIG_FILE):
            name = SHARDED_MODEL_WEIGHTS_CONFIG_FILE
            path = self.source.get_file(SHARDED_MODEL_WEIGHTS_CONFIG_FILE)
            for shard in _keras_shard_names(self.source, path):
                # Fetched next to the index, where Keras looks for them.
                self.source.get_file(shard)
        else:
            raise FileNotFoundError(
                f"Preset `{self.source.description}` has no weights: neither "
                f"`{MODEL_WEIGHTS_FILE}` nor `{SHARDED_MODEL_WEIGHTS_CONFIG_FILE}`."
            )
        load_keras_weights(backbone, path, f"`{name}` of preset `{self.source.description}`")


def _keras_shard_names(source, index_path):
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        names = set()
        for value in weight_map.values():
            names.update(value if isinstance(value, list) else [value])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"`{SHARDED_MODEL_WEIGHTS_CONFIG_FILE}` of preset "
            f"`{source.description}` is not a valid shard index ({e})."
        ) from None
    for shard in names:
        hub.check_relative_path(shard, "shard file name")
        if "/" in shard or not shard.endswith(".weights.h5"):
            raise ValueError(
                f"Invalid shard file name {shard!r} in "
                f"`{SHARDED_MODEL_WEIGHTS_CONFIG_FILE}` of preset "
                f"`{source.description}`: shards must be `*.weights.h5` files "
                "next to the index."
            )
    return sorted(names)


_SHAPE_ERROR = re.compile(
    r"variable\.shape=(?P<expected>\([^)]*\)), Received: value\.shape="
    r"(?P<received>(?:torch\.Size\(\[[^\]]*\]\))|(?:\([^)]*\)))"
    r".*?Target variable: <Variable path=(?P<path>[^,>]+)",
    re.S,
)


def _shape_tuple(text):
    return tuple(int(n) for n in re.findall(r"\d+", text))


def load_keras_weights(model, path, what):
    """`model.load_weights(path)` with clear errors.

    Raises:
        ValueError: naming the file, for a truncated or corrupt file, and
            naming the variable and both shapes for a shape mismatch.
    """
    trim_memory()
    try:
        model.load_weights(path)
        trim_memory()
    except (OSError, KeyError, RuntimeError, EOFError) as e:
        raise ValueError(
            f"Could not read the weights in {what}: the file is truncated, "
            f"corrupt or not a Keras weights file ({type(e).__name__}: {e})."
        ) from e
    except ValueError as e:
        match = _SHAPE_ERROR.search(str(e))
        if match:
            raise ValueError(
                f"Shape mismatch loading {what} into `{type(model).__name__}`: "
                f"variable `{match['path'].strip()}` has shape "
                f"{_shape_tuple(match['expected'])}, but the file stores "
                f"{_shape_tuple(match['received'])}. Does the config match "
                "the weights?"
            ) from e
        raise ValueError(f"Could not load the weights in {what}: {e}") from e


def _check_tokenizer_class(found, cls, what):
    """A preset's tokenizer must be a `cls`, except between Mistral ones.

    SentencePiece and Tekken presets both belong to Mistral models, so
    `MistralTokenizer.from_preset()` on a Tekken preset returns a
    `MistralTekkenTokenizer` (as keras_hub does).
    """
    if issubclass(found, cls):
        return
    mistral = {_import_class("MistralTokenizer"), _import_class("MistralTekkenTokenizer")}
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
    paths = [source.get_file(f"{subdir}/{name}") for name in assets]
    if paths:
        tokenizer.load_assets(os.path.dirname(paths[0]))
    return tokenizer


def _tekken_from_keras_hub_assets(tokenizer, source, subdir):
    with open(source.get_file(f"{subdir}/vocabulary.json"), encoding="utf-8") as f:
        vocabulary = json.load(f)
    with open(source.get_file(f"{subdir}/merges.txt"), encoding="utf-8") as f:
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


def backbone_from_preset(cls, preset, load_weights=True, **kwargs):
    """Implements `Backbone.from_preset` (see its docstring)."""
    loader = get_preset_loader(preset)
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
    return loader.load_backbone(target, load_weights, **kwargs)


def task_from_preset(cls, preset, load_weights=True, **kwargs):
    """Implements `Task.from_preset` (see its docstring)."""
    from mistral_hub.models.task import Task

    if cls is Task:
        raise ValueError(
            "Do not call `Task.from_preset()` directly; call a task class, "
            "e.g. `CausalLM.from_preset()` or `MistralCausalLM.from_preset()`."
        )
    loader = get_preset_loader(preset)
    cls = _find_subclass(cls, loader.check_backbone_class(), loader.source.description)
    return loader.load_task(cls, load_weights, **kwargs)


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
    preprocessor_keys = _init_params(cls) - (_GENERIC_KEYS - {"name", "trainable", "dtype"})
    routed = _route_kwargs(
        kwargs, preprocessor_keys=preprocessor_keys, tokenizer_keys=tokenizer_keys
    )
    # `dtype`, `name`... of a preprocessor belong to the preprocessor here.
    routed["preprocessor"].update(routed["backbone"])
    routed["preprocessor"].update(routed["task"])
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
