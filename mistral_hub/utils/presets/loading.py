"""Preset loaders: building objects from a preset, and the Keras format's loader.

`PresetLoader` builds a backbone, tokenizer, preprocessor or task from one
preset; its subclasses read one format each: `KerasPresetLoader` here, the
transformers and Mistral formats in `mistral_hub.utils.transformers`.
"""

import copy
import os

from mistral_hub.utils import hub
from mistral_hub.utils import validation
from mistral_hub.utils.presets import registry
from mistral_hub.utils.presets import serialization
from mistral_hub.utils.presets import weights
from mistral_hub.utils.presets.files import ASSET_DIR
from mistral_hub.utils.presets.files import CONFIG_FILE
from mistral_hub.utils.presets.files import MODEL_WEIGHTS_FILE
from mistral_hub.utils.presets.files import PREPROCESSOR_CONFIG_FILE
from mistral_hub.utils.presets.files import SHARDED_MODEL_WEIGHTS_CONFIG_FILE
from mistral_hub.utils.presets.files import TASK_CONFIG_FILE
from mistral_hub.utils.presets.files import TOKENIZER_CONFIG_FILE
from mistral_hub.utils.presets.files import load_json
from mistral_hub.utils.presets.files import preset_file
from mistral_hub.utils.presets.memory import maybe_skip_initialization
from mistral_hub.utils.presets.serialization import describe
from mistral_hub.utils.presets.serialization import deserialize
from mistral_hub.utils.presets.serialization import resolve_class


def route_kwargs(
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


GENERIC_KEYS = {"name", "trainable", "dtype", "tokenizer", "config_file", "proto",
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
        return serialization.init_params(self.check_backbone_class()) - GENERIC_KEYS

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
            preprocessor_keys = serialization.init_params(preprocessor_cls) - GENERIC_KEYS
            if preprocessor_cls.tokenizer_cls is not None:
                tokenizer_keys = serialization.init_params(preprocessor_cls.tokenizer_cls)
                tokenizer_keys -= GENERIC_KEYS
        task_keys = {"backbone", "preprocessor", "name", "trainable"}
        return route_kwargs(
            kwargs,
            f"{cls.__name__}.from_preset",
            backbone_keys=self.backbone_config_keys(),
            preprocessor_keys=preprocessor_keys,
            tokenizer_keys=tokenizer_keys,
            task_keys=task_keys | (serialization.init_params(cls) - GENERIC_KEYS),
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
        return resolve_class(self.config, describe(f"`{CONFIG_FILE}`", self.source))

    def backbone_config_keys(self):
        return set(self.config["config"]) - {"name", "trainable"} | (
            super().backbone_config_keys()
        )

    def load_backbone(self, cls, load_weights, strict=True, **kwargs):
        # Random values are only needed for weights a non-strict load skips.
        with maybe_skip_initialization(load_weights and strict):
            backbone = deserialize(
                self.config,
                {"backbone": kwargs},
                describe(f"`{CONFIG_FILE}`", self.source),
                cls=cls,
                source=self.source,
            )
        if load_weights:
            self.load_backbone_weights(backbone, strict)
        return backbone

    def load_tokenizer(self, cls, config_file=TOKENIZER_CONFIG_FILE, **kwargs):
        hub.check_relative_path(config_file, "config_file")
        what = describe(f"`{config_file}`", self.source)
        config = load_json(self.source, config_file)
        saved_cls = resolve_class(config, what)
        check_tokenizer_class(saved_cls, cls, what)
        tokenizer = deserialize(config, {"tokenizer": kwargs}, what, cls=cls, source=self.source)
        return load_tokenizer_assets(tokenizer, self.source)

    def load_preprocessor(
        self, cls, config_file=PREPROCESSOR_CONFIG_FILE, tokenizer_kwargs=None, **kwargs
    ):
        hub.check_relative_path(config_file, "config_file")
        if self.source.exists(config_file):
            what = describe(f"`{config_file}`", self.source)
            config = load_json(self.source, config_file)
            if issubclass(resolve_class(config, what), cls):
                preprocessor = deserialize(
                    config,
                    {"preprocessor": kwargs, "tokenizer": tokenizer_kwargs or {}},
                    what,
                    cls=cls,
                    source=self.source,
                )
                load_preprocessor_assets(preprocessor, self.source)
                return preprocessor
        return super().load_preprocessor(
            cls, config_file, tokenizer_kwargs=tokenizer_kwargs, **kwargs
        )

    def load_task(self, cls, load_weights, strict=True, **kwargs):
        if not self.source.exists(TASK_CONFIG_FILE):
            return super().load_task(cls, load_weights, strict, **kwargs)
        what = describe(f"`{TASK_CONFIG_FILE}`", self.source)
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
        with maybe_skip_initialization(load_weights and strict and not user_backbone):
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
            load_preprocessor_assets(task.preprocessor, self.source)
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
            for shard in weights.keras_shard_names(path, what):
                # Fetched next to the index, where Keras looks for them.
                preset_file(self.source, shard, "shard file name")
        else:
            raise FileNotFoundError(
                f"Preset `{self.source.description}` has no weights: neither "
                f"`{MODEL_WEIGHTS_FILE}` nor `{SHARDED_MODEL_WEIGHTS_CONFIG_FILE}`."
            )
        weights.load_keras_weights(
            backbone, path, f"`{name}` of preset `{self.source.description}`", strict
        )


def check_tokenizer_class(found, cls, what):
    """A preset's tokenizer must be a `cls`, or registered together with it.

    A family's tokenizers of several vocabulary formats serve the same
    models, so `MistralTokenizer.from_preset()` on a Tekken preset returns a
    `MistralTekkenTokenizer` (as keras_hub does; see
    `registry.register_interchangeable_tokenizers`).
    """
    if issubclass(found, cls):
        return
    group = registry.interchangeable_tokenizers(cls)
    if any(issubclass(found, klass) for klass in group):
        return
    raise ValueError(
        f"{what} holds a `{found.__name__}`, which is not a `{cls.__name__}`."
    )


def load_tokenizer_assets(tokenizer, preset):
    """Loads a tokenizer's vocabulary files from a preset, in place.

    Files are read from `assets/<config_file stem>/`, e.g.
    `assets/tokenizer/vocabulary.spm`. A tokenizer whose `file_assets` are
    missing reads the files keras_hub writes for it instead, if it names
    them in `keras_hub_file_assets` (e.g. a keras_hub Tekken preset's
    `vocabulary.json` and `merges.txt`).

    Args:
        tokenizer: the tokenizer, built from its config.
        preset: a preset name, handle, directory or `hub.PresetSource`.

    Returns:
        The tokenizer, with its vocabulary set.
    """
    source = registry.get_preset_source(preset)
    config_file = getattr(tokenizer, "config_file", TOKENIZER_CONFIG_FILE)
    subdir = f"{ASSET_DIR}/{hub.check_relative_path(config_file, 'config_file').split('.')[0]}"
    assets = tuple(getattr(tokenizer, "file_assets", ()) or ())
    keras_hub_assets = tuple(getattr(tokenizer, "keras_hub_file_assets", ()) or ())
    if (
        assets
        and keras_hub_assets
        and not source.exists(f"{subdir}/{assets[0]}")
        and source.exists(f"{subdir}/{keras_hub_assets[0]}")
    ):
        paths = [preset_file(source, f"{subdir}/{name}") for name in keras_hub_assets]
        tokenizer.load_keras_hub_assets(os.path.dirname(paths[0]))
        return tokenizer
    paths = [preset_file(source, f"{subdir}/{name}") for name in assets]
    if paths:
        tokenizer.load_assets(os.path.dirname(paths[0]))
    return tokenizer


def load_preprocessor_assets(preprocessor, source):
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if tokenizer is not None:
        preprocessor.tokenizer = load_tokenizer_assets(tokenizer, source)
