"""The `from_preset()` of backbones, tasks, preprocessors and tokenizers.

A preset is a directory (local, on Kaggle Models or on the Hugging Face Hub)
holding a model in one of three formats, detected from its files:

- **Keras** (keras_hub's format): `config.json` with a `registered_name`,
  `model.weights.h5` (or `model.weights.json` plus `model_0000N.weights.h5`
  shards), `tokenizer.json`, `preprocessor.json`, `task.json`,
  `metadata.json` and `assets/tokenizer/vocabulary.spm`.
- **transformers**: `config.json` with a `model_type` a model family
  registered (e.g. `"mistral"`), `model.safetensors` (or shards listed in
  `model.safetensors.index.json`), `tokenizer.model` or `tekken.json`,
  `generation_config.json`.
- **Mistral** (mistral-inference): `params.json`,
  `consolidated.safetensors`, `tokenizer.model.v*` or `tekken.json`.
"""

import os

from mistral_hub.utils import hub
from mistral_hub.utils import validation
from mistral_hub.utils.presets import serialization
from mistral_hub.utils.presets.files import CONFIG_FILE
from mistral_hub.utils.presets.files import PREPROCESSOR_CONFIG_FILE
from mistral_hub.utils.presets.files import TOKENIZER_CONFIG_FILE
from mistral_hub.utils.presets.files import load_json
from mistral_hub.utils.presets.loading import GENERIC_KEYS
from mistral_hub.utils.presets.loading import KerasPresetLoader
from mistral_hub.utils.presets.loading import route_kwargs
from mistral_hub.utils.presets.registry import get_preset_source
from mistral_hub.utils.presets.serialization import describe
from mistral_hub.utils.presets.serialization import resolve_class
from mistral_hub.utils.transformers import preset_loader


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
# Consistent reads
# ---------------------------------------------------------------------------

_READ_ATTEMPTS = 3


def _directory_version(directory):
    # Saving never changes a preset directory in place: it swaps in a new
    # directory (see `writing.preset_writer`), so the directory's identity
    # tells whether the files read all belong to one save.
    try:
        stat = os.stat(directory)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_ctime_ns


def read_consistently(preset, read):
    """Calls `read(source)` until no save replaced the preset meanwhile.

    A local preset directory may be replaced by a save from another process
    while its files are read; the read is then retried, so a load never
    combines one save's config with another save's weights. Hub presets
    are immutable snapshots and are read once.

    Args:
        preset: a preset name, handle, directory or `hub.PresetSource`.
        read: callable taking the `hub.PresetSource` to read from.

    Raises:
        RuntimeError: if the preset changed during every attempt.
    """
    source = get_preset_source(preset)
    if not isinstance(source, hub.LocalSource):
        return read(source)
    directory = source.directory
    for _ in range(_READ_ATTEMPTS):
        version = _directory_version(directory)
        try:
            result = read(hub.LocalSource(directory))
        except Exception:
            if _directory_version(directory) == version:
                raise
            continue
        if _directory_version(directory) == version:
            return result
    raise RuntimeError(
        f"Preset directory `{directory}` was replaced by another save while "
        f"it was being read, {_READ_ATTEMPTS} times in a row. Load it again "
        "once the other process has finished saving."
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
        for c in serialization.allowed_classes()
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
    return read_consistently(
        preset, lambda source: _load_backbone(cls, source, load_weights, strict, kwargs)
    )


def _load_backbone(cls, preset, load_weights, strict, kwargs):
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
    validation.check_bool("load_weights", load_weights)
    validation.check_bool("strict", strict)

    # The base class `Task` sets `preset_kind` itself; task classes inherit it.
    if "preset_kind" in vars(cls):
        raise ValueError(
            "Do not call `Task.from_preset()` directly; call a task class, "
            "e.g. `CausalLM.from_preset()` or `MistralCausalLM.from_preset()`."
        )
    return read_consistently(
        preset, lambda source: _load_task(cls, source, load_weights, strict, kwargs)
    )


def _load_task(cls, preset, load_weights, strict, kwargs):
    loader = get_preset_loader(preset)
    cls = _find_subclass(cls, loader.check_backbone_class(), loader.source.description)
    return loader.load_task(cls, load_weights, strict, **kwargs)


def preprocessor_from_preset(cls, preset, config_file=PREPROCESSOR_CONFIG_FILE, **kwargs):
    """Implements `Preprocessor.from_preset` (see its docstring)."""
    return read_consistently(
        preset, lambda source: _load_preprocessor(cls, source, config_file, kwargs)
    )


def _load_preprocessor(cls, preset, config_file, kwargs):
    loader = get_preset_loader(preset, require_config=False)
    if loader.config is None:
        # A preset holding only a preprocessor (and its tokenizer).
        what = describe(f"`{config_file}`", loader.source)
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
        tokenizer_keys = serialization.init_params(cls.tokenizer_cls) - GENERIC_KEYS
    preprocessor_keys = (serialization.init_params(cls) - GENERIC_KEYS) | {"name", "trainable"}
    routed = route_kwargs(
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

    def read(source):
        loader = get_preset_loader(source, require_config=False)
        return loader.load_tokenizer(cls, config_file, **kwargs)

    return read_consistently(preset, read)


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------
