"""Model families: the classes, presets and converters they register.

Generic code (presets, hub, the transformers and Mistral-format readers,
export) names no model. A family registers itself from its own package,
`mistral_hub/models/<family>/__init__.py`, which `mistral_hub/models/__init__.py`
imports: its classes (the allowlist of safe deserialization, with their
keras_hub names), its built-in presets, and its checkpoint converter (see
`CheckpointConverter`). Lookups call `ensure_families_registered()` first, so
`from mistral_hub.models.backbone import Backbone; Backbone.from_preset(...)`
finds every family in a fresh process.

Example:
>>> from mistral_hub.utils.presets import registry
>>> "MistralBackbone" in registry.registered_classes()
True
"""

import collections
import copy
import os

from mistral_hub.utils import hub

ClassEntry = collections.namedtuple(
    "ClassEntry", ("cls", "keras_hub_module", "keras_hub_config_keys")
)
ClassEntry.__doc__ = """A class presets may hold.

`keras_hub_module` is the module of keras_hub's class of the same name
(None when keras_hub has none), `keras_hub_config_keys` the config keys
keras_hub's constructor accepts, or None when keras_hub cannot load our
version of the class (it is then saved under its mistral_hub name).
"""

_CLASSES = {}
_TOKENIZER_GROUPS = []
_BUILTIN = {}
_CONVERTERS = []
_TOKENIZER_WRITERS = {}


def ensure_families_registered():
    """Imports the model families, which register themselves on import."""
    # The families are listed in one place, the `mistral_hub.models` package.
    import mistral_hub.models  # noqa: F401


def register_class(cls, keras_hub_module=None, keras_hub_config_keys=None):
    """Allows presets to hold `cls` (by name, also under `keras_hub>`)."""
    _CLASSES[cls.__name__] = ClassEntry(cls, keras_hub_module, keras_hub_config_keys)


def registered_classes():
    """`{class name: ClassEntry}` of every registered class."""
    ensure_families_registered()
    return _CLASSES


def register_interchangeable_tokenizers(classes):
    """Declares tokenizer classes a preset of one of them may hold instead.

    A family's tokenizers of several vocabulary formats serve the same
    models, so e.g. `MistralTokenizer.from_preset()` on a Tekken preset
    returns a `MistralTekkenTokenizer` (as keras_hub does).
    """
    _TOKENIZER_GROUPS.append(tuple(classes))


def interchangeable_tokenizers(cls):
    """The tokenizer classes registered together with `cls` (or none)."""
    ensure_families_registered()
    for group in _TOKENIZER_GROUPS:
        if cls in group:
            return group
    return ()


def register_presets(presets, backbone_cls):
    """Registers built-in presets (name -> `{"metadata", "kaggle_handle"}`).

    Args:
        presets: dict of preset name to a dict with `metadata` (description,
            params, path) and either `kaggle_handle` or `package_path` (a
            preset directory shipped inside the `mistral_hub` package,
            relative to it).
        backbone_cls: the backbone class the presets hold.
    """
    for name, preset in presets.items():
        if "package_path" not in preset:
            hub.parse_kaggle_handle(preset["kaggle_handle"].partition("://")[2])
        _BUILTIN[name] = (backbone_cls, preset)


def builtin_preset_registry():
    """`{preset name: (backbone class, preset)}` of the built-in presets."""
    ensure_families_registered()
    return _BUILTIN


class CheckpointConverter:
    """Converts one family's transformers and Mistral-format checkpoints.

    A family subclasses this and registers an instance with
    `register_checkpoint_converter()`; the generic loaders and the
    transformers exporter (in `mistral_hub.utils.transformers`) call it.

    Attributes:
        backbone_cls: the backbone class the checkpoints load into.
        transformers_model_types: the `model_type`s of transformers'
            `config.json` this converter reads.
        transformers_architecture: transformers' causal LM class name.
        transformers_base_architecture: transformers' class without the
            language-model head (its checkpoints tie the output projection
            to the embeddings).
        hf_config_keys: backbone argument -> key of transformers' config,
            for error messages.
        native_params_keys: backbone argument -> key of `params.json`.
    """

    backbone_cls = None
    transformers_model_types = ()
    transformers_architecture = None
    transformers_base_architecture = None
    hf_config_keys = {}
    native_params_keys = {}

    def claims_native_params(self, params):
        """Whether this converter reads the Mistral-format `params` dict."""
        raise NotImplementedError

    def backbone_kwargs_from_hf_config(self, config, what):
        raise NotImplementedError

    def hf_tie_word_embeddings(self, config, what):
        raise NotImplementedError

    def backbone_kwargs_from_native_params(self, params, what):
        raise NotImplementedError

    def native_tied_embeddings(self, params, what):
        raise NotImplementedError

    def native_tensor_name(self, hf_name):
        """The Mistral-format name of transformers tensor `hf_name`."""
        raise NotImplementedError

    def native_tensor_transform(self, backbone_kwargs):
        """`(hf_name, rows) -> rows` from the Mistral to transformers layout."""
        raise NotImplementedError

    def hf_weight_map(self, backbone):
        """`(hf_name, variable, to_keras, to_hf)` for every backbone weight."""
        raise NotImplementedError

    def hf_config_from_backbone(self, backbone, max_position_embeddings, dtype):
        raise NotImplementedError

    def tokenizer_class(self, file_name):
        """The tokenizer class reading checkpoint tokenizer file `file_name`."""
        raise NotImplementedError

    def tokenizer_kwargs(self, tokenizer_cls, hf_tokenizer_config):
        """Constructor arguments read from transformers' tokenizer config.

        `hf_tokenizer_config` is a callable returning the parsed
        `tokenizer_config.json` (`{}` if absent); it reads the file on call.
        """
        return {}

    def finish_tokenizer(self, tokenizer, hf_tokenizer_config, jinja_template):
        """Completes a tokenizer built from a checkpoint (e.g. its chat convention).

        `jinja_template` is a callable returning the checkpoint's Jinja chat
        template or None; it reads files on call.
        """


def register_checkpoint_converter(converter):
    """Registers a `CheckpointConverter` instance.

    For a Mistral-format `params.json`, the converter registered last that
    claims it wins, so a family refining another one's format registers
    after it.
    """
    _CONVERTERS.append(converter)


def transformers_converter(model_type):
    """The converter of transformers `model_type`, or None."""
    ensure_families_registered()
    for converter in _CONVERTERS:
        if model_type in converter.transformers_model_types:
            return converter
    return None


def transformers_model_types():
    ensure_families_registered()
    return [t for converter in _CONVERTERS for t in converter.transformers_model_types]


def native_converter(params):
    """The converter of a Mistral-format `params.json`, or None."""
    ensure_families_registered()
    for converter in reversed(_CONVERTERS):
        if converter.claims_native_params(params):
            return converter
    return None


def backbone_converter(backbone):
    """The converter of `backbone`'s class, or None."""
    ensure_families_registered()
    for converter in _CONVERTERS:
        if isinstance(backbone, converter.backbone_cls):
            return converter
    return None


def register_transformers_tokenizer_writer(tokenizer_cls, writer):
    """Registers `writer(directory, tokenizer, model_max_length) -> config`.

    The writer saves a `tokenizer_cls` (or subclass) in transformers' files
    and returns the `tokenizer_config.json` dict.
    """
    _TOKENIZER_WRITERS[tokenizer_cls] = writer


def transformers_tokenizer_writer(tokenizer):
    """The writer registered for the closest class of `tokenizer`, or None."""
    ensure_families_registered()
    for klass in type(tokenizer).__mro__:
        if klass in _TOKENIZER_WRITERS:
            return _TOKENIZER_WRITERS[klass]
    return None


def builtin_presets(cls):
    """The built-in presets `cls.from_preset()` accepts, by name.

    Base classes (`Backbone`, `CausalLM`, `Tokenizer`...) list every preset;
    a model class lists the presets of its backbone.

    Example:
    >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
    >>> "mistral_7b_en" in builtin_presets(MistralBackbone)
    True
    """
    registry = builtin_preset_registry()
    if getattr(cls, "preset_kind", None) == "backbone":
        target = cls
    elif getattr(cls, "backbone_cls", None) is not None:
        target = cls.backbone_cls
    elif any(issubclass(entry.cls, cls) for entry in registered_classes().values()):
        # A base class (Task, CausalLM, Tokenizer...) or one of our
        # tokenizers, which hold no `backbone_cls`: every preset.
        target = object
    else:
        return {}
    return {
        name: copy.deepcopy(preset)
        for name, (backbone_cls, preset) in registry.items()
        if issubclass(backbone_cls, target)
    }


# The `mistral_hub` package directory, which `package_path`s are relative to.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_preset_source(preset):
    """Returns the `hub.PresetSource` of a preset name, handle or directory.

    Raises:
        ValueError: for an unknown preset name (listing the built-in ones)
            or a malformed handle.
        FileNotFoundError: for a missing local directory.
    """
    if isinstance(preset, hub.PresetSource):
        return preset
    registry = builtin_preset_registry()
    if isinstance(preset, str) and preset in registry:
        entry = registry[preset][1]
        if "package_path" in entry:
            preset = os.path.join(_PACKAGE_ROOT, *entry["package_path"].split("/"))
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
