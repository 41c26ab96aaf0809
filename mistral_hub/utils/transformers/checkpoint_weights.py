"""Streaming safetensors tensors into a backbone, checked against it first.

Transformers-layout tensors (Mistral-format checkpoints are renamed and
permuted into it on the fly) map to backbone variables through the model
family's `hf_weight_map`; `_layout` says how their rows land in a Keras
variable, so each tensor is read in row chunks and written in place.
"""

import re

import numpy as np

from mistral_hub.utils import tensor_utils
from mistral_hub.utils.presets.memory import trim_memory
from mistral_hub.utils.presets.weights import WeightMismatches
from mistral_hub.utils.presets.weights import progress

# Checkpoint dtypes that load into float weights (others are refused).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _layout(hf_name):
    """How rows of a transformers tensor land in its Keras variable.

    - `"rows"`: rows are variable rows (the embedding);
    - `"cols"`: rows are variable columns (`(out, in)` kernels, `lm_head`);
    - `"heads"`: groups of `head_dim` rows are heads of a `(hidden, heads,
      head_dim)` q/k/v kernel;
    - `"out"`: rows are the last axis of a `(heads, head_dim, hidden)`
      output kernel;
    - `"whole"`: 1-D norm scales.

    Must agree with the family's `hf_weight_map` (tested).
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




def _weight_plan(converter, backbone, tie_word_embeddings):
    """`(hf_name, source tensor, variable)` for every backbone variable."""
    plan = []
    for hf_name, variable, _, _ in converter.hf_weight_map(backbone):
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
        `(mismatches, loadable)`: a `WeightMismatches` and the
        plan entries that match.
    """
    mismatches = WeightMismatches("the checkpoint")
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
        elif dtype not in FLOAT_DTYPES:
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


def load_weights(
    converter, backbone, checkpoint, tie_word_embeddings, what, strict, config_keys, chunk_bytes
):
    """Checks the checkpoint, then streams its tensors into the backbone.

    Nothing is read before the headers are compared with the model (see
    `_check_checkpoint`): with `strict`, any difference raises; otherwise
    the matching tensors load and a warning lists the rest.

    The mapping of the family's `hf_weight_map`, arranged to keep peak
    memory close to the model size: each tensor is read in row chunks of
    about `chunk_bytes`, cast in numpy to the variable's dtype (exact for bfloat16
    -> float32, round-to-nearest-even the other way, never through
    float16) and written in place into the variable (torch, TensorFlow) or
    into a buffer that becomes the new value without a copy (JAX, whose
    previous value is freed first).
    """
    head_dim = backbone.resolved_head_dim
    plan = _weight_plan(converter, backbone, tie_word_embeddings)
    mismatches, loadable = _check_checkpoint(
        plan, checkpoint, backbone, tie_word_embeddings, config_keys
    )
    mismatches.report(what, type(backbone).__name__, strict)
    for hf_name, source, variable in progress(loadable, f"Converting {what}"):
        layout = _layout(hf_name)
        stored = tuple(checkpoint.shape(source))
        row_bytes = max(1, int(np.prod(stored[1:], dtype=np.int64)) * 4)
        step = max(1, chunk_bytes // row_bytes)
        if layout == "heads":
            step = max(head_dim, step // head_dim * head_dim)
        writer = tensor_utils.VariableWriter(variable)
        for start in range(0, stored[0], step):
            stop = min(start + step, stored[0])
            chunk = checkpoint.get_rows(source, start, stop)
            writer.write(*keras_slice(layout, chunk, start, stop, head_dim))
            del chunk
        writer.finish()
        trim_memory()
