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

import re
import warnings

import keras
import numpy as np

from mistral_hub.utils import dtype_utils
from mistral_hub.utils import preset_utils
from mistral_hub.utils.transformers import convert_mistral
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
_FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _backbone_cls():
    from mistral_hub.models.mistral.mistral_backbone import MistralBackbone

    return MistralBackbone


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


def _layout(hf_name):
    """How rows of a transformers tensor land in its Keras variable.

    - `"rows"`: rows are variable rows (the embedding);
    - `"cols"`: rows are variable columns (`(out, in)` kernels, `lm_head`);
    - `"heads"`: groups of `head_dim` rows are heads of a `(hidden, heads,
      head_dim)` q/k/v kernel;
    - `"out"`: rows are the last axis of a `(heads, head_dim, hidden)`
      output kernel;
    - `"whole"`: 1-D norm scales.

    Must agree with `convert_mistral.hf_weight_map` (tested).
    """
    if hf_name == "model.embed_tokens.weight":
        return "rows"
    if hf_name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
        return "heads"
    if hf_name.endswith("o_proj.weight"):
        return "out"
    if hf_name.endswith("norm.weight"):
        return "whole"
    return "cols"


def keras_slice(layout, chunk, start, stop, head_dim):
    """Maps rows `start:stop` of a transformers tensor to the Keras layout.

    Args:
        layout: str, see `_layout`.
        chunk: array, rows `start:stop` of the transformers tensor.
        start, stop: int. The rows.
        head_dim: int. Rows per head (`"heads"` and `"out"` layouts).

    Returns:
        `(index, values)`: `variable[index] = values` stores the chunk.
    """
    everything = slice(None)
    if layout in ("rows", "whole"):
        return (slice(start, stop),), chunk
    if layout == "cols":
        return (everything, slice(start, stop)), chunk.T
    if layout == "heads":
        heads = (stop - start) // head_dim
        index = (everything, slice(start // head_dim, stop // head_dim), everything)
        return index, chunk.T.reshape(chunk.shape[1], heads, head_dim)
    # "out": (rows of hidden, heads * head_dim) -> (heads, head_dim, rows)
    values = chunk.T.reshape(chunk.shape[1] // head_dim, head_dim, stop - start)
    return (everything, everything, slice(start, stop)), values


def _hf_shape(layout, shape):
    if layout in ("rows", "whole"):
        return tuple(shape)
    if layout == "cols":
        return tuple(shape[::-1])
    if layout == "heads":
        return (shape[1] * shape[2], shape[0])
    return (shape[2], shape[0] * shape[1])


# Tensors are read and stored in pieces of about this size, so loading
# needs little memory beyond the model itself.
_CHUNK_BYTES = 16 * 1024 * 1024


def _weight_plan(backbone, tie_word_embeddings):
    """`(hf_name, source tensor, variable)` for every backbone variable."""
    plan = []
    for hf_name, variable, _, _ in convert_mistral.hf_weight_map(backbone):
        source = hf_name
        if hf_name == "lm_head.weight" and tie_word_embeddings:
            source = "model.embed_tokens.weight"
        plan.append((hf_name, source, variable))
    return plan


_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _check_checkpoint(plan, checkpoint, backbone, tie_word_embeddings, config_keys):
    """Compares the checkpoint's headers with the plan.

    `config_keys` names the config keys behind the hints: `"num_layers"` and
    `"tie"` map to e.g. "`num_hidden_layers` in `config.json`".

    Returns:
        `(mismatches, loadable)`: a `preset_utils.WeightMismatches` and the
        plan entries that match.
    """
    mismatches = preset_utils.WeightMismatches("the checkpoint")
    loadable = []
    for hf_name, source, variable in plan:
        if not checkpoint.has_tensor(source):
            mismatches.add("missing", f"`{checkpoint.source_name(source)}`")
            continue
        name = checkpoint.source_name(source)
        expected = _hf_shape(_layout(hf_name), tuple(variable.shape))
        stored = tuple(checkpoint.shape(source))
        dtype = checkpoint.dtype(source)
        if stored != expected:
            mismatches.add(
                "shape",
                f"`{name}` -> `{variable.path}`: the checkpoint stores {stored}, "
                f"the model expects {expected}",
            )
        elif dtype not in convert_mistral.FLOAT_DTYPES:
            mismatches.add(
                "dtype",
                f"`{name}` is {dtype}, but `{variable.path}` holds floats (integer "
                "tensors are never cast)",
            )
        else:
            loadable.append((hf_name, source, variable))
    used = {checkpoint.source_name(src) for _, src, _ in plan if checkpoint.has_tensor(src)}
    for name in sorted(set(checkpoint.keys()) - used):
        mismatches.add("unexpected", f"`{name}`")
    layers = {int(m.group(1)) for m in map(_LAYER_INDEX.search, checkpoint.keys()) if m}
    if layers and max(layers) + 1 != backbone.num_layers:
        mismatches.hints.append(
            f"the checkpoint holds {max(layers) + 1} decoder layers, the model "
            f"{backbone.num_layers}: does {config_keys['num_layers']} match the weights?"
        )
    if not tie_word_embeddings and not checkpoint.has_tensor("lm_head.weight"):
        mismatches.hints.append(
            "the config does not tie the output projection to the embeddings "
            f"({config_keys['tie']} false or absent), so the checkpoint needs "
            "its own output projection"
        )
    return mismatches, loadable


def _load_weights(backbone, checkpoint, tie_word_embeddings, what, strict, config_keys):
    """Checks the checkpoint, then streams its tensors into the backbone.

    Nothing is read before the headers are compared with the model (see
    `_check_checkpoint`): with `strict`, any difference raises; otherwise
    the matching tensors load and a warning lists the rest.

    Same mapping as `convert_mistral.load_hf_weights`, arranged to keep peak
    memory close to the model size: each tensor is read in row chunks of
    about 16 MB, cast in numpy to the variable's dtype (exact for bfloat16
    -> float32, round-to-nearest-even the other way, never through
    float16) and written in place into the variable (torch, TensorFlow) or
    into a buffer that becomes the new value without a copy (JAX, whose
    previous value is freed first).
    """
    head_dim = backbone.resolved_head_dim
    plan = _weight_plan(backbone, tie_word_embeddings)
    mismatches, loadable = _check_checkpoint(
        plan, checkpoint, backbone, tie_word_embeddings, config_keys
    )
    mismatches.report(what, type(backbone).__name__, strict)
    for hf_name, source, variable in preset_utils.progress(loadable, f"Converting {what}"):
        layout = _layout(hf_name)
        stored = tuple(checkpoint.shape(source))
        row_bytes = max(1, int(np.prod(stored[1:], dtype=np.int64)) * 4)
        step = max(1, _CHUNK_BYTES // row_bytes)
        if layout == "heads":
            step = max(head_dim, step // head_dim * head_dim)
        writer = _VariableWriter(variable)
        for start in range(0, stored[0], step):
            stop = min(start + step, stored[0])
            chunk = checkpoint.get_rows(source, start, stop)
            writer.write(*keras_slice(layout, chunk, start, stop, head_dim))
            del chunk
        writer.finish()
        _trim_memory()


_trim_memory = preset_utils.trim_memory


def _numpy_dtype(dtype):
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _aligned_empty(shape, dtype, alignment=64):
    # XLA only adopts host buffers aligned like its own allocations.
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


class _VariableWriter:
    """Fills one variable chunk by chunk without a second full copy."""

    def __init__(self, variable):
        self.variable = variable
        self.dtype = _numpy_dtype(keras.backend.standardize_dtype(variable.dtype))
        self.backend = keras.config.backend()
        self.buffer = None
        if self.backend == "jax":
            old = getattr(variable, "_value", None)
            if (
                getattr(variable, "_layout", None) is None
                and hasattr(old, "delete")
                and not old.is_deleted()
                and len(old.sharding.device_set) == 1
            ):
                # Free the initial value before the new one exists.
                old.delete()
            self.buffer = _aligned_empty(tuple(variable.shape), self.dtype)
        elif self.backend not in ("torch", "tensorflow"):
            self.buffer = np.empty(tuple(variable.shape), self.dtype)

    def write(self, index, values):
        values = values.astype(self.dtype, copy=False)
        if self.buffer is not None:
            self.buffer[index] = values
        elif self.backend == "torch":
            import torch

            with warnings.catch_warnings():
                # Read-only arrays are fine: the tensor is only copied from.
                warnings.simplefilter("ignore", UserWarning)
                if self.dtype.name == "bfloat16":
                    # torch cannot read ml_dtypes arrays; reinterpret the bits.
                    tensor = torch.from_numpy(values.view(np.int16)).view(torch.bfloat16)
                else:
                    tensor = torch.from_numpy(values)
            with torch.no_grad():
                self.variable.value[index].copy_(tensor)
        else:
            import tensorflow as tf

            # The raw op writes through the handle; `variable[index].assign`
            # would first read the whole variable, and that pending read
            # makes TensorFlow copy the full buffer before writing.
            shape = tuple(self.variable.shape)
            index = tuple(index) + (slice(None),) * (len(shape) - len(index))
            begin = [i.start or 0 for i in index]
            end = [shape[d] if i.stop is None else i.stop for d, i in enumerate(index)]
            tf.raw_ops.ResourceStridedSliceAssign(
                ref=self.variable.value.handle,
                begin=begin,
                end=end,
                strides=[1] * len(shape),
                value=values,
            )

    def finish(self):
        if self.buffer is None:
            return
        value = self.buffer
        if self.backend == "jax" and getattr(self.variable, "_layout", None) is None:
            import jax

            try:
                value = jax.device_put(self.buffer, may_alias=True)
            except TypeError:  # Older JAX without `may_alias`.
                value = jax.device_put(self.buffer)
        self.variable.assign(value)
        self.buffer = None


def _dtype_name(value):
    if value is None:
        return None
    name = str(value).replace("torch.", "")
    return name if name in _FLOAT_DTYPES else None


class _CheckpointLoader(preset_utils.PresetLoader):
    """Shared parts of the transformers and Mistral loaders.

    Subclasses set `backbone_kwargs` and `tied` from their config file, and
    the class attributes `config_file`, `config_keys` (backbone argument ->
    key in that file) and `tie_key`, which error messages name.
    """

    tokenizer_files = ()

    def check_backbone_class(self):
        return _backbone_cls()

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
        with preset_utils._maybe_skip_initialization(load_weights and strict):
            backbone = self._build(cls, kwargs, dtype)
        if load_weights:
            _trim_memory()
            _load_weights(
                backbone,
                checkpoint,
                self.tie_word_embeddings(checkpoint),
                f"the checkpoint of preset `{self.source.description}`",
                strict,
                {
                    "num_layers": f"`{self.config_keys['num_layers']}` in `{self.config_file}`",
                    "tie": f"`{self.tie_key}` in `{self.config_file}`",
                },
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
        from mistral_hub.models.mistral.mistral_tekken_tokenizer import (
            MistralTekkenTokenizer,
        )
        from mistral_hub.models.mistral.mistral_hf_tokenizer import MistralHFTokenizer
        from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer

        name = self._tokenizer_file()
        if name is None:
            raise FileNotFoundError(
                f"Preset `{self.source.description}` has no Mistral tokenizer: "
                f"expected one of {', '.join(self.tokenizer_files)}."
            )
        if name == HF_TOKENIZER_FILE:
            found = MistralHFTokenizer
            hf_config = self._hf_tokenizer_config()
            kwargs = {**_hf_special_tokens(hf_config), **kwargs}
        elif name.endswith(".json"):
            found = MistralTekkenTokenizer
        else:
            found = MistralTokenizer
        what = f"`{name}` of preset `{self.source.description}`"
        preset_utils._check_tokenizer_class(found, cls, what)
        target = cls if issubclass(cls, found) else found
        path = self.source.get_file(name)
        try:
            tokenizer = target(path, **kwargs)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from e
        if found is MistralHFTokenizer and tokenizer.chat_template is None:
            tokenizer.chat_template = _hf_chat_convention(
                tokenizer, self._hf_jinja_template(hf_config)
            )
        return tokenizer

    def _hf_tokenizer_config(self):
        if not self.source.exists(HF_TOKENIZER_CONFIG_FILE):
            return {}
        return preset_utils.load_json(self.source, HF_TOKENIZER_CONFIG_FILE)

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


def _hf_chat_convention(tokenizer, jinja_template):
    """The chat convention when the checkpoint's template rules out v7.

    A vocabulary may reserve `[SYSTEM_PROMPT]` without its model using it
    (Mistral NeMo's Tekken vocabulary). `tokenizer.json` does not record the
    version that tells, but a Jinja chat template without `[SYSTEM_PROMPT]`
    does. Returns None (infer from the vocabulary) otherwise.
    """
    if (
        jinja_template is None
        or "[SYSTEM_PROMPT]" in jinja_template
        or tokenizer._control_token_id("[SYSTEM_PROMPT]") is None
        or tokenizer._control_token_id("[INST]") is None
    ):
        return None
    return "tekken" if tokenizer._text_prefix == "" else "v3"


class TransformersPresetLoader(_CheckpointLoader):
    """Loads a transformers `MistralForCausalLM` checkpoint directory.

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
        if model_type != "mistral":
            raise ValueError(
                f"Preset `{source.description}` is a transformers `{model_type}` "
                "checkpoint; mistral_hub loads only `model_type: \"mistral\"` "
                "(MistralForCausalLM) checkpoints."
            )
        what = f"`{preset_utils.CONFIG_FILE}` of preset `{source.description}`"
        self.backbone_kwargs = convert_mistral.backbone_kwargs_from_hf_config(config, what)
        self.tied = convert_mistral.hf_tie_word_embeddings(config, what)

    config_file = preset_utils.CONFIG_FILE
    config_keys = convert_mistral.HF_CONFIG_KEYS
    tie_key = "tie_word_embeddings"

    def saved_dtype(self):
        return _dtype_name(self.config.get("dtype") or self.config.get("torch_dtype"))

    def tie_word_embeddings(self, checkpoint):
        if self.tied:
            return True
        architectures = self.config.get("architectures")
        if (
            isinstance(architectures, list)
            and "MistralModel" in architectures
            and "MistralForCausalLM" not in architectures
            and not checkpoint.has_tensor("lm_head.weight")
        ):
            warnings.warn(
                f"Preset `{self.source.description}` is a `MistralModel` checkpoint, "
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
            params = preset_utils.load_json(source, MISTRAL_PARAMS_FILE)
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
        configs = [(preset_utils.CONFIG_FILE, self.config)]
        if self.source.exists(GENERATION_CONFIG_FILE):
            generation = preset_utils.load_json(self.source, GENERATION_CONFIG_FILE)
            configs.insert(0, (GENERATION_CONFIG_FILE, generation))
        vocabulary_size = self.backbone_kwargs["vocabulary_size"]
        for name, config in configs:
            if config.get("eos_token_id") is not None:
                ids = preset_utils.check_token_ids(
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
        self.backbone_kwargs = convert_mistral.backbone_kwargs_from_mistral_params(params, what)
        self.tied = convert_mistral.mistral_tied_embeddings(params, what)

    config_file = MISTRAL_PARAMS_FILE
    config_keys = convert_mistral.MISTRAL_PARAMS_KEYS
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
        kwargs = self.backbone_kwargs
        head_dim = kwargs["head_dim"] or kwargs["hidden_dim"] // kwargs["num_query_heads"]

        def transform(name, value):
            # Rows arrive in whole heads, and the permutation is per head.
            if name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
                return convert_mistral.rope_permute(value, value.shape[0] // head_dim)
            return value

        return _RenamedCheckpoint(checkpoint, convert_mistral.mistral_tensor_name, transform)
