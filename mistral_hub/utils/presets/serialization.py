"""The preset file format: classes allowed in it, keras_hub's schema, dtypes.

Presets are written with keras_hub's class names (`"keras_hub>MistralBackbone"`...),
so keras_hub loads them; settings that keras_hub does not know travel in an
extra `"mistral_hub"` entry of the JSON objects, which Keras ignores. When
loading, `keras_hub>X`, `keras_nlp>X` and `mistral_hub>X` map to the classes
the model families registered (see `registry`); anything else is refused, and
nothing is ever unpickled.
"""

import copy
import inspect
import warnings

import keras

from mistral_hub.utils import dtype_utils
from mistral_hub.utils import validation
from mistral_hub.utils.presets import files
from mistral_hub.utils.presets import registry

# Key of the mistral_hub-only settings inside a serialized object.
EXTRAS_KEY = "mistral_hub"
# Task attributes saved in the extras (not constructor arguments).
_TASK_ATTRIBUTES = ("default_stop_token_ids",)
_PACKAGES = ("keras_hub", "keras_nlp", "mistral_hub")


def allowed_classes():
    """The classes presets may hold (registered by the model families)."""
    return [entry.cls for entry in registry.registered_classes().values()]


def describe(what, source):
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
    classes = registry.registered_classes()
    if package in _PACKAGES and name in classes:
        return classes[name].cls
    if isinstance(registered, str):
        obj = keras.saving.get_registered_object(registered)
        if isinstance(obj, type) and any(
            issubclass(obj, allowed) for allowed in allowed_classes()
        ):
            return obj
    allowed = ", ".join(f"keras_hub>{n}" for n in classes)
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


def kind(cls):
    """`"backbone"`, `"task"`, `"preprocessor"` or `"tokenizer"`.

    Each base class says which in its `preset_kind` attribute.
    """
    return cls.preset_kind


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
                config[key] = files.preset_file(source, config[key], key)
            except ValueError as e:
                raise ValueError(f"{what}: {e}") from None


def init_params(cls):
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


def _accepted_kwargs(cls):
    return init_params(cls) | {"name", "trainable", "dtype"}


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
    own = dict((overrides or {}).get(kind(cls)) or {})
    validation.check_known_kwargs(
        f"{cls.__name__}.from_preset", own, _accepted_kwargs(cls) | set(config)
    )
    if "dtype" in own:
        config["dtype"] = _merge_dtype(config.get("dtype"), own.pop("dtype"))
    elif kind(cls) == "backbone" and dtype_utils.user_dtype_policy() is not None:
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
    entry = registry.registered_classes().get(name)
    if package != "mistral_hub" or entry is None or entry.keras_hub_config_keys is None:
        return serialized
    keras_hub_keys = entry.keras_hub_config_keys
    converted = {
        "module": entry.keras_hub_module,
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
