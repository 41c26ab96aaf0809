"""Loading transformers and mistral-inference checkpoints as presets.

Both formats are converted on load, tensor by tensor, from safetensors files
(never from pickled `.bin`/`.pth` files). The backbone keeps the
checkpoint's dtype (bfloat16 checkpoints load as bfloat16) unless `dtype` is
given.
"""

import warnings

import keras
import numpy as np

from mistral_hub.utils import preset_utils
from mistral_hub.utils.transformers import convert_mistral
from mistral_hub.utils.transformers.safetensors_io import SafetensorsCheckpoint

HF_WEIGHTS_FILE = "model.safetensors"
HF_WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SENTENCEPIECE_FILE = "tokenizer.model"
TEKKEN_FILE = "tekken.json"
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


def _load_weights(backbone, checkpoint, tie_word_embeddings, what):
    """Streams checkpoint tensors into the backbone's variables.

    Same mapping as `convert_mistral.load_hf_weights`, arranged to keep peak
    memory close to the model size: each tensor is read in row chunks of
    about 16 MB, cast in numpy to the variable's dtype (exact for bfloat16
    -> float32, round-to-nearest-even the other way, never through
    float16) and written in place into the variable (torch, TensorFlow) or
    into a buffer that becomes the new value without a copy (JAX, whose
    previous value is freed first).
    """
    head_dim = backbone.resolved_head_dim
    weight_map = convert_mistral.hf_weight_map(backbone)
    for hf_name, variable, _, _ in preset_utils.progress(weight_map, f"Converting {what}"):
        source = hf_name
        if hf_name == "lm_head.weight" and (
            tie_word_embeddings or not checkpoint.has_tensor(hf_name)
        ):
            source = "model.embed_tokens.weight"
        if not checkpoint.has_tensor(source):
            raise ValueError(f"{what}: the checkpoint has no tensor named `{source}`.")
        layout = _layout(hf_name)
        expected = _hf_shape(layout, tuple(variable.shape))
        stored = tuple(checkpoint.shape(source))
        if stored != expected:
            raise ValueError(
                f"{what}: shape mismatch for `{source}` -> `{variable.path}`: the "
                f"checkpoint stores {stored}, the model expects {expected}."
            )
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


def _stop_ids(value):
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    ids = tuple(int(v) for v in values if isinstance(v, int) and not isinstance(v, bool))
    return ids or None


class _CheckpointLoader(preset_utils.PresetLoader):
    """Shared parts of the transformers and Mistral loaders."""

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

    def load_backbone(self, cls, load_weights, **kwargs):
        dtype = kwargs.pop("dtype", None)
        unknown = set(kwargs) - preset_utils._init_params(cls) - {"name", "trainable"}
        if unknown:
            raise ValueError(
                f"Unknown `from_preset` argument(s) {sorted(unknown)} for `{cls.__name__}`."
            )
        checkpoint = self.checkpoint() if load_weights else None
        if dtype is None:
            dtype = self.saved_dtype() or self.checkpoint_dtype(checkpoint) or (
                keras.config.dtype_policy().name
            )
        with preset_utils._maybe_skip_initialization(load_weights):
            backbone = cls(**{**self.backbone_kwargs, **kwargs}, dtype=dtype)
        if load_weights:
            _trim_memory()
            _load_weights(
                backbone,
                checkpoint,
                self.tie_word_embeddings(checkpoint),
                f"the weights of preset `{self.source.description}`",
            )
        return backbone

    def saved_dtype(self):
        return None

    def tie_word_embeddings(self, checkpoint):
        return not checkpoint.has_tensor("lm_head.weight")

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
        from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer

        name = self._tokenizer_file()
        if name is None:
            raise FileNotFoundError(
                f"Preset `{self.source.description}` has no Mistral tokenizer: "
                f"expected one of {', '.join(self.tokenizer_files)} (a "
                "`tokenizer.json`-only repository is not supported)."
            )
        found = MistralTekkenTokenizer if name.endswith(".json") else MistralTokenizer
        what = f"`{name}` of preset `{self.source.description}`"
        preset_utils._check_tokenizer_class(found, cls, what)
        target = cls if issubclass(cls, found) else found
        return target(self.source.get_file(name), **kwargs)


class TransformersPresetLoader(_CheckpointLoader):
    """Loads a transformers `MistralForCausalLM` checkpoint directory.

    Reads `config.json`, `model.safetensors` (or the shards of
    `model.safetensors.index.json`), `tokenizer.model` or `tekken.json`, and
    the stop ids of `generation_config.json`.
    """

    tokenizer_files = (TEKKEN_FILE, SENTENCEPIECE_FILE)

    def __init__(self, source, config):
        super().__init__(source, config)
        model_type = config.get("model_type")
        if model_type != "mistral":
            raise ValueError(
                f"Preset `{source.description}` is a transformers `{model_type}` "
                "checkpoint; mistral_hub loads only `model_type: \"mistral\"` "
                "(MistralForCausalLM) checkpoints."
            )
        self.backbone_kwargs = convert_mistral.backbone_kwargs_from_hf_config(config)

    def saved_dtype(self):
        return _dtype_name(self.config.get("dtype") or self.config.get("torch_dtype"))

    def tie_word_embeddings(self, checkpoint):
        return bool(self.config.get("tie_word_embeddings", False)) or not (
            checkpoint.has_tensor("lm_head.weight")
        )

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

    def stop_token_ids(self):
        if self.source.exists(GENERATION_CONFIG_FILE):
            generation = preset_utils.load_json(self.source, GENERATION_CONFIG_FILE)
            ids = _stop_ids(generation.get("eos_token_id"))
            if ids:
                return ids
        return _stop_ids(self.config.get("eos_token_id"))


class MistralPresetLoader(_CheckpointLoader):
    """Loads a mistral-inference checkpoint (`params.json`, `consolidated.*`).

    Tensor names are mapped to transformers' and the q/k projections are
    permuted from Mistral's interleaved RoPE layout to the half-split layout
    the backbone uses.
    """

    def __init__(self, source, params):
        super().__init__(source, params)
        self.backbone_kwargs = convert_mistral.backbone_kwargs_from_mistral_params(params)

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
