"""Tiny models and hub cache layouts shared by the preset tests."""

import hashlib
import os
import shutil

import numpy as np
from keras import ops

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.models.mistral.mistral_causal_lm_preprocessor import (
    MistralCausalLMPreprocessor,
)
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from mistral_hub.utils import preset_utils
from tests.test_data import mistral_test_proto

TINY = dict(
    vocabulary_size=10,
    num_layers=2,
    num_query_heads=4,
    hidden_dim=16,
    intermediate_dim=32,
    num_key_value_heads=2,
    sliding_window=4,
)

TOKEN_IDS = np.array([[1, 3, 8, 4, 6, 2, 0], [1, 3, 5, 7, 0, 0, 0]], "int32")
PADDING_MASK = (TOKEN_IDS > 0).astype("int32")
PADDING_MASK[:, 0] = 1


def randomize(backbone, seed=0):
    """Gives every weight (norm scales too) distinct random values."""
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        values = rng.normal(0.0, 0.3, size=tuple(variable.shape))
        if "layernorm" in variable.path or "layer_norm" in variable.path:
            values = 1.0 + 0.1 * values
        variable.assign(values.astype("float32"))
    return backbone


def tiny_backbone(seed=0, **overrides):
    # Every weight is overwritten: skip drawing random initial values (slow
    # to compile on JAX).
    with preset_utils.skip_random_initialization():
        backbone = MistralBackbone(**{**TINY, **overrides})
    return randomize(backbone, seed)


def tiny_tokenizer(**kwargs):
    return MistralTokenizer(mistral_test_proto(), **kwargs)


def tiny_causal_lm(seed=0, sequence_length=8, **overrides):
    preprocessor = MistralCausalLMPreprocessor(tiny_tokenizer(), sequence_length=sequence_length)
    return MistralCausalLM(tiny_backbone(seed, **overrides), preprocessor)


def backbone_logits(backbone, token_ids=TOKEN_IDS, padding_mask=PADDING_MASK):
    hidden = backbone({"token_ids": token_ids, "padding_mask": padding_mask})
    logits = backbone.token_embedding(hidden, reverse=True)
    return ops.convert_to_numpy(ops.cast(logits, "float32"))


def populate_hf_cache(cache_dir, repo_id, files_dir, commit="a" * 40, revision="main"):
    """Lays out `files_dir` as huggingface_hub's cache of `repo_id`.

    `<cache>/models--owner--repo/blobs/<hash>` holds the contents,
    `snapshots/<commit>/<path>` links to the blobs and `refs/<revision>`
    names the commit, as `hf_hub_download` writes them.
    """
    storage = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(storage, "snapshots", commit)
    os.makedirs(os.path.join(storage, "blobs"), exist_ok=True)
    for root, _, names in os.walk(files_dir):
        for name in names:
            source = os.path.join(root, name)
            relative = os.path.relpath(source, files_dir)
            with open(source, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            blob = os.path.join(storage, "blobs", digest)
            shutil.copyfile(source, blob)
            pointer = os.path.join(snapshot, relative)
            os.makedirs(os.path.dirname(pointer), exist_ok=True)
            os.symlink(os.path.relpath(blob, os.path.dirname(pointer)), pointer)
    ref = os.path.join(storage, "refs", revision)
    os.makedirs(os.path.dirname(ref), exist_ok=True)
    with open(ref, "w") as f:
        f.write(commit)
    return snapshot


def populate_kaggle_cache(cache_dir, handle, files_dir, bundle=True):
    """Lays out `files_dir` as kagglehub's cache of a versioned model handle.

    Files go to `<cache>/models/owner/model/framework/variation/<version>/`;
    `.complete/<version>/<path>.complete` marks each file as fully
    downloaded and, with `bundle`, `<version>.complete` the whole version.
    """
    owner, model, framework, variation, version = handle.split("/")
    base = os.path.join(cache_dir, "models", owner, model, framework, variation)
    shutil.copytree(files_dir, os.path.join(base, version))
    for root, _, names in os.walk(files_dir):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), files_dir)
            marker = os.path.join(base, ".complete", version, relative + ".complete")
            os.makedirs(os.path.dirname(marker), exist_ok=True)
            open(marker, "w").close()
    if bundle:
        open(os.path.join(base, f"{version}.complete"), "w").close()
