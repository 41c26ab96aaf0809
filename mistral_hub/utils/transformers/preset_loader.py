"""Loading transformers and mistral-inference checkpoints as presets.

Both formats are converted on load, tensor by tensor, from safetensors files
(never from pickled `.bin`/`.pth` files). The backbone keeps the
checkpoint's dtype (bfloat16 checkpoints load as bfloat16) unless `dtype` is
given or the user set a global dtype policy (see `dtype_utils`).

Loading is strict: the config is validated, then, from the safetensors
headers alone, every tensor the config implies must be in the checkpoint
with its shape and a float dtype, and nothing else may be there; an
untied model (`tie_word_embeddings` false or absent) needs its own
`lm_head.weight`. Any difference is an error listing them, before a tensor
is read. With `from_preset(..., strict=False)` the matching tensors load,
a warning lists the others, and the weights not loaded keep their random
initial values (a missing `lm_head.weight` included: it is never silently
copied from the embeddings). A `MistralModel` checkpoint (architectures
`["MistralModel"]`, no head) loads its output projection from the
embeddings, with a warning.
"""

import warnings

import keras

from mistral_hub.utils import dtype_utils
from mistral_hub.utils.presets import registry
from mistral_hub.utils.presets.files import CONFIG_FILE
from mistral_hub.utils.presets.files import load_json
from mistral_hub.utils.presets.loading import PresetLoader
from mistral_hub.utils.presets.loading import check_tokenizer_class
from mistral_hub.utils.presets.memory import maybe_skip_initialization
from mistral_hub.utils.presets.memory import trim_memory
from mistral_hub.utils.presets.serialization import check_token_ids
from mistral_hub.utils.transformers import checkpoint_weights
from mistral_hub.utils.transformers.checkpoint_weights import FLOAT_DTYPES
# The row mapping, used here by tests written before it moved.
from mistral_hub.utils.transformers.checkpoint_weights import _layout  # noqa: F401
from mistral_hub.utils.transformers.checkpoint_weights import keras_slice  # noqa: F401
from mistral_hub.utils.transformers.safetensors_io import SafetensorsCheckpoint

HF_WEIGHTS_FILE = "model.safetensors"
HF_WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SENTENCEPIECE_FILE = "tokenizer.model"
TEKKEN_FILE = "tekken.json"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
HF_CHAT_TEMPLATE_FILE = "chat_template.jinja"
MISTRAL_PARAMS_FILE = "params.json"
MISTRAL_WEIGHTS_FILE = "consolidated.safetensors"
MISTRAL_WEIGHTS_INDEX_FILE = "consolidated.safetensors.index.json"
# Pickle-based formats. Loading them could run arbitrary code, so they are
# refused instead.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Tensors are read and stored in pieces of about this size, so loading
# needs little memory beyond the model itself.
_CHUNK_BYTES = 16 * 1024 * 1024


def _refuse_pickles(source, what):
    files = source.list_files()
    if files is None:
        return
    pickled = sorted(f for f in files if f.endswith(_PICKLE_SUFFIXES))
    if pickled:
        raise ValueError(
            f"Preset `{source.description}` has no safetensors {what}, only "
            f"pickled files ({', '.join(pickled[:3])}). mistral_hub never "
            "unpickles checkpoints; convert them to safetensors first."
        )


class _RenamedCheckpoint:
    """Presents a checkpoint under transformers tensor names."""

    def __init__(self, checkpoint, rename, transform=None):
        self.checkpoint = checkpoint
        self.rename = rename
        self.transform = transform

    def has_tensor(self, name):
        try:
            return self.checkpoint.has_tensor(self.rename(name))
        except ValueError:
            return False

    def keys(self):
        """The tensor names in the files (not renamed)."""
        return self.checkpoint.keys()

    def source_name(self, name):
        """The name tensor `name` has in the files."""
        return self.checkpoint.source_name(self.rename(name))

    def get_tensor(self, name):
        value = self.checkpoint.get_tensor(self.rename(name))
        return self.transform(name, value) if self.transform else value

    def dtype(self, name):
        return self.checkpoint.dtype(self.rename(name))

    def shape(self, name):
        return self.checkpoint.shape(self.rename(name))

    def get_rows(self, name, start, stop):
        value = self.checkpoint.get_rows(self.rename(name), start, stop)
        return self.transform(name, value) if self.transform else value


def _prefix_tolerant(checkpoint):
    """Accepts checkpoints saved from `MistralModel` (no `model.` prefix)."""
    if checkpoint.has_tensor("model.embed_tokens.weight"):
        return checkpoint
    if not checkpoint.has_tensor("embed_tokens.weight"):
        return checkpoint

    def rename(name):
        return name[len("model."):] if name.startswith("model.") else name

    return _RenamedCheckpoint(checkpoint, rename)


def _dtype_name(value):
    if value is None:
        return None
    name = str(value).replace("torch.", "")
    return name if name in FLOAT_DTYPES else None


class _CheckpointLoader(PresetLoader):
    """Shared parts of the transformers and Mistral loaders.

    Subclasses set `converter` (the model family's `CheckpointConverter`),
    `backbone_kwargs` and `tied` from their config file, `config_keys`
    (backbone argument -> key in that file), and the class attributes
    `config_file` and `tie_key`, which error messages name.
    """

    tokenizer_files = ()

    def check_backbone_class(self):
        return self.converter.backbone_cls

    def backbone_config_keys(self):
        return set(self.backbone_kwargs)

    def checkpoint_dtype(self, checkpoint):
        dtype = None
        if checkpoint is not None:
            for name in ("model.embed_tokens.weight", "lm_head.weight"):
                if checkpoint.has_tensor(name):
                    dtype = checkpoint.dtype(name)
                    break
        return _dtype_name(dtype)

    def load_backbone(self, cls, load_weights, strict=True, **kwargs):
        dtype = kwargs.pop("dtype", None)
        checkpoint = self.checkpoint() if load_weights else None
        if dtype is None:
            # A global policy the user set wins over the checkpoint's dtype.
            dtype = (
                dtype_utils.user_dtype_policy()
                or self.saved_dtype()
                or self.checkpoint_dtype(checkpoint)
                or keras.config.dtype_policy().name
            )
        # Random values are only needed for weights a non-strict load skips.
        with maybe_skip_initialization(load_weights and strict):
            backbone = self._build(cls, kwargs, dtype)
        if load_weights:
            trim_memory()
            checkpoint_weights.load_weights(
                self.converter,
                backbone,
                checkpoint,
                self.tie_word_embeddings(checkpoint),
                f"the checkpoint of preset `{self.source.description}`",
                strict,
                {
                    "num_layers": f"`{self.config_keys['num_layers']}` in `{self.config_file}`",
                    "tie": f"`{self.tie_key}` in `{self.config_file}`",
                },
                _CHUNK_BYTES,
            )
        return backbone

    def _build(self, cls, overrides, dtype):
        try:
            return cls(**{**self.backbone_kwargs, **overrides}, dtype=dtype)
        except ValueError as e:
            # Name the keys of the file the user has to fix.
            keys = [
                f"`{ours}` is `{theirs}` there"
                for ours, theirs in self.config_keys.items()
                if f"`{ours}`" in str(e) and ours not in overrides
            ]
            raise ValueError(
                f"`{self.config_file}` of preset `{self.source.description}` does "
                f"not describe a valid `{cls.__name__}`"
                + (f" ({'; '.join(keys)})" if keys else "")
                + f": {e}"
            ) from e

    def saved_dtype(self):
        return None

    def _tokenizer_file(self):
        files = self.source.list_files()
        for name in self.tokenizer_files:
            if files is not None:
                if name in files:
                    return name
            elif self.source.exists(name):
                return name
        return None

    def load_tokenizer(self, cls, config_file=None, **kwargs):
        name = self._tokenizer_file()
        if name is None:
            raise FileNotFoundError(
                f"Preset `{self.source.description}` has no Mistral tokenizer: "
                f"expected one of {', '.join(self.tokenizer_files)}."
            )
        found = self.converter.tokenizer_class(name)
        if name == HF_TOKENIZER_FILE:
            hf_config = self._hf_tokenizer_config()
            kwargs = {**_hf_special_tokens(hf_config), **kwargs}
        what = f"`{name}` of preset `{self.source.description}`"
        check_tokenizer_class(found, cls, what)
        target = cls if issubclass(cls, found) else found
        path = self.source.get_file(name)
        try:
            tokenizer = target(path, **kwargs)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from e
        if name == HF_TOKENIZER_FILE and tokenizer.chat_template is None:
            tokenizer.chat_template = self.converter.chat_template_from_jinja(
                tokenizer, self._hf_jinja_template(hf_config)
            )
        return tokenizer

    def _hf_tokenizer_config(self):
        if not self.source.exists(HF_TOKENIZER_CONFIG_FILE):
            return {}
        return load_json(self.source, HF_TOKENIZER_CONFIG_FILE)

    def _hf_jinja_template(self, hf_config):
        """The checkpoint's Jinja chat template(s) as one string, or None."""
        template = hf_config.get("chat_template")
        if isinstance(template, list):  # Named templates.
            template = "".join(
                str(t.get("template", "")) for t in template if isinstance(t, dict)
            )
        if not template and self.source.exists(HF_CHAT_TEMPLATE_FILE):
            with open(self.source.get_file(HF_CHAT_TEMPLATE_FILE), encoding="utf-8") as f:
                template = f.read()
        return template if isinstance(template, str) and template else None


def _hf_special_tokens(hf_config):
    """Start and end tokens named by `tokenizer_config.json`, if any."""
    tokens = {}
    for key, name in (("bos_token", "start_token"), ("eos_token", "end_token")):
        value = hf_config.get(key)
        # transformers writes a string, or an `AddedToken` as a dict.
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            tokens[name] = value
    return tokens


class TransformersPresetLoader(_CheckpointLoader):
    """Loads a transformers checkpoint directory (e.g. `MistralForCausalLM`).

    The model family that registered the config's `model_type` converts it.

    Reads `config.json`, `model.safetensors` (or the shards of
    `model.safetensors.index.json`), `tokenizer.model` or `tekken.json` (or
    else the `tokenizer.json` of the `tokenizers` library, which recent
    transformers versions save alone), and the stop ids of
    `generation_config.json`.
    """

    tokenizer_files = (TEKKEN_FILE, SENTENCEPIECE_FILE, HF_TOKENIZER_FILE)

    def __init__(self, source, config):
        super().__init__(source, config)
        model_type = config.get("model_type")
        self.converter = registry.transformers_converter(model_type)
        if self.converter is None:
            supported = ", ".join(
                f"`model_type: \"{t}\"`" for t in registry.transformers_model_types()
            )
            raise ValueError(
                f"Preset `{source.description}` is a transformers `{model_type}` "
                f"checkpoint; mistral_hub loads only {supported} checkpoints."
            )
        what = f"`{CONFIG_FILE}` of preset `{source.description}`"
        self.backbone_kwargs = self.converter.backbone_kwargs_from_hf_config(config, what)
        self.tied = self.converter.hf_tie_word_embeddings(config, what)
        self.config_keys = self.converter.hf_config_keys

    config_file = CONFIG_FILE
    tie_key = "tie_word_embeddings"

    def saved_dtype(self):
        return _dtype_name(self.config.get("dtype") or self.config.get("torch_dtype"))

    def tie_word_embeddings(self, checkpoint):
        if self.tied:
            return True
        architectures = self.config.get("architectures")
        base = self.converter.transformers_base_architecture
        if (
            isinstance(architectures, list)
            and base in architectures
            and self.converter.transformers_architecture not in architectures
            and not checkpoint.has_tensor("lm_head.weight")
        ):
            warnings.warn(
                f"Preset `{self.source.description}` is a `{base}` checkpoint, "
                "without a language-model head: the output projection "
                "(`lm_head`) is initialized from the token embeddings.",
                stacklevel=2,
            )
            return True
        return False

    def checkpoint(self):
        source = self.source
        if source.exists(HF_WEIGHTS_INDEX_FILE):
            checkpoint = SafetensorsCheckpoint(source, index_file=HF_WEIGHTS_INDEX_FILE)
        elif source.exists(HF_WEIGHTS_FILE):
            checkpoint = SafetensorsCheckpoint(source, files=[HF_WEIGHTS_FILE])
        elif source.exists(MISTRAL_PARAMS_FILE):
            # Some repositories ship only Mistral's own weights next to a
            # transformers config.
            params = load_json(source, MISTRAL_PARAMS_FILE)
            return MistralPresetLoader(source, params).checkpoint()
        else:
            _refuse_pickles(source, "weights")
            raise FileNotFoundError(
                f"Preset `{source.description}` has no `{HF_WEIGHTS_FILE}` or "
                f"`{HF_WEIGHTS_INDEX_FILE}` (pickled `.bin` weights are not "
                "supported)."
            )
        return _prefix_tolerant(checkpoint)

    def stop_token_ids(self, strict=True):
        """`eos_token_id` of `generation_config.json`, else of `config.json`.

        Raises:
            ValueError: naming the file and the key, for ids that are not
                ints in `[0, vocab_size)` (with `strict=False` they are
                dropped with a warning instead).
        """
        configs = [(CONFIG_FILE, self.config)]
        if self.source.exists(GENERATION_CONFIG_FILE):
            generation = load_json(self.source, GENERATION_CONFIG_FILE)
            configs.insert(0, (GENERATION_CONFIG_FILE, generation))
        vocabulary_size = self.backbone_kwargs["vocabulary_size"]
        for name, config in configs:
            if config.get("eos_token_id") is not None:
                ids = check_token_ids(
                    "eos_token_id",
                    config["eos_token_id"],
                    vocabulary_size,
                    f"`{name}` of preset `{self.source.description}`",
                    strict,
                )
                if ids:
                    return ids
        return None


class MistralPresetLoader(_CheckpointLoader):
    """Loads a mistral-inference checkpoint (`params.json`, `consolidated.*`).

    Tensor names are mapped to transformers' and the q/k projections are
    permuted from Mistral's interleaved RoPE layout to the half-split layout
    the backbone uses.
    """

    def __init__(self, source, params):
        super().__init__(source, params)
        what = f"`{MISTRAL_PARAMS_FILE}` of preset `{source.description}`"
        self.converter = registry.native_converter(params)
        if self.converter is None:
            raise ValueError(f"No model family reads the {what}.")
        self.backbone_kwargs = self.converter.backbone_kwargs_from_native_params(params, what)
        self.tied = self.converter.native_tied_embeddings(params, what)
        self.config_keys = self.converter.native_params_keys

    config_file = MISTRAL_PARAMS_FILE
    tie_key = "tied_embeddings"

    def tie_word_embeddings(self, checkpoint):
        return self.tied

    @property
    def tokenizer_files(self):
        names = [TEKKEN_FILE]
        files = self.source.list_files()
        if files is not None:
            # e.g. tokenizer.model.v3; newest version first.
            names += sorted(
                (f for f in files if f.startswith(SENTENCEPIECE_FILE) and "/" not in f),
                reverse=True,
            )
        else:
            names += [f"{SENTENCEPIECE_FILE}.v{i}" for i in (13, 11, 7, 3, 2, 1)]
            names.append(SENTENCEPIECE_FILE)
        return tuple(names)

    def checkpoint(self):
        source = self.source
        files = source.list_files()
        if source.exists(MISTRAL_WEIGHTS_INDEX_FILE):
            checkpoint = SafetensorsCheckpoint(source, index_file=MISTRAL_WEIGHTS_INDEX_FILE)
        elif files is not None and any(
            f.startswith("consolidated") and f.endswith(".safetensors") and "/" not in f
            for f in files
        ):
            checkpoint = SafetensorsCheckpoint(
                source,
                files=sorted(
                    f
                    for f in files
                    if f.startswith("consolidated")
                    and f.endswith(".safetensors")
                    and "/" not in f
                ),
            )
        elif files is None and source.exists(MISTRAL_WEIGHTS_FILE):
            checkpoint = SafetensorsCheckpoint(source, files=[MISTRAL_WEIGHTS_FILE])
        else:
            _refuse_pickles(source, "weights")
            raise FileNotFoundError(
                f"Preset `{source.description}` has no `{MISTRAL_WEIGHTS_FILE}` "
                "(pickled `consolidated.*.pth` weights are not supported)."
            )
        return _RenamedCheckpoint(
            checkpoint,
            self.converter.native_tensor_name,
            self.converter.native_tensor_transform(self.backbone_kwargs),
        )
