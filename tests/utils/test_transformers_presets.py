"""transformers and mistral-inference checkpoints: loading and export."""

import json
import os
import pickle

import keras
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers

from mistral_hub.models.backbone import Backbone
from mistral_hub.models.causal_lm import CausalLM
from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.models.mistral.mistral_tekken_tokenizer import MistralTekkenTokenizer
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from mistral_hub.tokenizers.tokenizer import Tokenizer
from mistral_hub.models.mistral import mistral_checkpoint_conversion as convert_mistral
from tests.models.mistral.hf_reference import hf_forward
from tests.models.mistral.hf_reference import make_hf_model
from tests.models.mistral.hf_reference import relative_error
from tests.test_data import TEKKEN_MODEL
from tests.test_data import V1_MODEL
from tests.test_data import mistral_test_proto
from tests.utils.preset_helpers import backbone_logits
from tests.utils.preset_helpers import tiny_backbone
from tests.utils.preset_helpers import tiny_causal_lm

# Explicit head_dim, rope_theta and a window shorter than the sequence.
HF_CONFIG = dict(head_dim=12, rope_theta=1e6, sliding_window=5)
rng = np.random.default_rng(0)
TOKEN_IDS = rng.integers(3, 97, size=(2, 12)).astype("int32")
PADDING_MASK = np.ones_like(TOKEN_IDS)
PADDING_MASK[1, 8:] = 0
VALID = PADDING_MASK.astype(bool)


def _assert_logits_match(backbone, hf_model, tolerance=1e-4):
    _, expected = hf_forward(hf_model, TOKEN_IDS, PADDING_MASK)
    actual = backbone_logits(backbone, TOKEN_IDS, PADDING_MASK)
    assert relative_error(actual[VALID], expected[VALID]) < tolerance


CHECKPOINTS = {
    "float32": (torch.float32, None),
    "float32_sharded": (torch.float32, "20KB"),
    "bfloat16": (torch.bfloat16, None),
    "bfloat16_sharded": (torch.bfloat16, "20KB"),
}


@pytest.mark.parametrize("case", CHECKPOINTS, ids=CHECKPOINTS)
def test_save_pretrained_checkpoints_match_transformers(tmp_path, case):
    dtype, shard_size = CHECKPOINTS[case]
    model = make_hf_model(**HF_CONFIG)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.to(dtype).save_pretrained(tmp_path, **kwargs)
    # For bfloat16 the reference is the float32 model with the stored
    # (bfloat16-rounded) weights.
    model.to(torch.float32)
    files = os.listdir(tmp_path)
    assert ("model.safetensors.index.json" in files) == bool(shard_size)

    backbone = MistralBackbone.from_preset(str(tmp_path))
    expected_dtype = "bfloat16" if dtype == torch.bfloat16 else "float32"
    assert backbone.dtype_policy.name == expected_dtype
    assert keras.backend.standardize_dtype(backbone.weights[0].dtype) == expected_dtype
    assert backbone.head_dim == 12 and backbone.sliding_window == 5
    assert backbone.rope_max_wavelength == 1e6
    if dtype == torch.bfloat16:
        backbone = MistralBackbone.from_preset(str(tmp_path), dtype="float32")
    _assert_logits_match(backbone, model)


def test_tied_embeddings_checkpoint(tmp_path):
    model = make_hf_model(tie_word_embeddings=True)
    model.save_pretrained(tmp_path)
    with safetensors.safe_open(str(tmp_path / "model.safetensors"), "np") as f:
        assert "lm_head.weight" not in f.keys()
    _assert_logits_match(Backbone.from_preset(str(tmp_path)), model)


def test_checkpoint_without_model_prefix(tmp_path):
    model = make_hf_model()
    model.model.save_pretrained(tmp_path)  # `MistralModel`: no "model." prefix.
    backbone = MistralBackbone.from_preset(str(tmp_path))
    expected, _ = hf_forward(model, TOKEN_IDS, PADDING_MASK)
    hidden = backbone({"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK})
    actual = keras.ops.convert_to_numpy(hidden)
    assert relative_error(actual[VALID], expected[VALID]) < 1e-4


def _hf_dir_with_tokenizer(tmp_path, generation=None):
    model = make_hf_model()
    model.save_pretrained(tmp_path)
    with open(tmp_path / "tokenizer.model", "wb") as f:
        f.write(mistral_test_proto())
    if generation is not None:
        with open(tmp_path / "generation_config.json", "w") as f:
            json.dump(generation, f)
    return model


def test_causal_lm_from_transformers_checkpoint(tmp_path):
    model = _hf_dir_with_tokenizer(tmp_path, {"bos_token_id": 1, "eos_token_id": [2, 5]})
    causal_lm = CausalLM.from_preset(str(tmp_path), sequence_length=16)
    assert type(causal_lm) is MistralCausalLM
    assert causal_lm.default_stop_token_ids == (2, 5)
    assert causal_lm.preprocessor.sequence_length == 16
    assert causal_lm.preprocessor.tokenizer("the quick brown fox") == [3, 8, 4, 6]
    _assert_logits_match(causal_lm.backbone, model)

    # The stop ids survive a Keras preset (in the `mistral_hub` extras).
    causal_lm.save_to_preset(tmp_path / "keras")
    with open(tmp_path / "keras" / "task.json") as f:
        assert json.load(f)["mistral_hub"]["attributes"]["default_stop_token_ids"] == [2, 5]
    assert CausalLM.from_preset(tmp_path / "keras").default_stop_token_ids == (2, 5)


def test_stop_ids_fall_back_to_config(tmp_path):
    _hf_dir_with_tokenizer(tmp_path)
    os.remove(tmp_path / "generation_config.json")
    assert MistralCausalLM.from_preset(str(tmp_path)).default_stop_token_ids == (2,)


def test_tekken_vocabulary_is_detected(tmp_path):
    make_hf_model().config.save_pretrained(tmp_path)
    with open(TEKKEN_MODEL, "rb") as src, open(tmp_path / "tekken.json", "wb") as dst:
        dst.write(src.read())
    tokenizer = Tokenizer.from_preset(str(tmp_path))
    assert type(tokenizer) is MistralTekkenTokenizer
    assert tokenizer("Hello world") == [22177, 4304]
    # A SentencePiece class still gets the Tekken vocabulary (as keras_hub).
    assert type(MistralTokenizer.from_preset(str(tmp_path))) is MistralTekkenTokenizer


def test_invalid_tokenizer_json_is_reported(tmp_path):
    # A valid one loads (tests/utils/test_hf_tokenizer_json.py).
    make_hf_model().config.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="`tokenizer.json` of preset .*not a valid"):
        MistralTokenizer.from_preset(str(tmp_path))


# --- mistral-inference format ---------------------------------------------


def _mistral_dir(tmp_path, model, **params):
    config = model.config
    params = {
        "dim": config.hidden_size,
        "n_layers": config.num_hidden_layers,
        "head_dim": config.head_dim,
        "hidden_dim": config.intermediate_size,
        "n_heads": config.num_attention_heads,
        "n_kv_heads": config.num_key_value_heads,
        "norm_eps": config.rms_norm_eps,
        "vocab_size": config.vocab_size,
        "rope_theta": config.rope_parameters["rope_theta"],
        **params,
    }
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().clone()
        if name.endswith("q_proj.weight"):
            tensor = torch.from_numpy(
                convert_mistral.rope_unpermute(tensor.numpy(), config.num_attention_heads)
            )
        elif name.endswith("k_proj.weight"):
            tensor = torch.from_numpy(
                convert_mistral.rope_unpermute(tensor.numpy(), config.num_key_value_heads)
            )
        tensors[convert_mistral.mistral_tensor_name(name)] = tensor.contiguous()
    safetensors.torch.save_file(tensors, str(tmp_path / "consolidated.safetensors"))
    with open(tmp_path / "params.json", "w") as f:
        json.dump(params, f)
    with open(tmp_path / "tokenizer.model.v3", "wb") as f:
        f.write(mistral_test_proto())


def test_mistral_inference_checkpoint(tmp_path):
    model = make_hf_model(**HF_CONFIG)
    _mistral_dir(tmp_path, model, sliding_window="5")  # Sometimes a string.
    causal_lm = MistralCausalLM.from_preset(str(tmp_path))
    assert causal_lm.backbone.sliding_window == 5
    assert causal_lm.preprocessor.tokenizer("the fox") == [3, 6]
    _assert_logits_match(causal_lm.backbone, model)


def test_rope_permutation_matches_transformers_conversion():
    weight = np.random.default_rng(0).normal(size=(4 * 8, 16)).astype("float32")
    # transformers' `permute_for_rope` (convert_mistral_weights_to_hf.py).
    expected = torch.from_numpy(weight).view(4, 8 // 2, 2, 16).transpose(1, 2).reshape(32, 16)
    np.testing.assert_array_equal(convert_mistral.rope_permute(weight, 4), expected.numpy())
    np.testing.assert_array_equal(
        convert_mistral.rope_unpermute(convert_mistral.rope_permute(weight, 4), 4), weight
    )


def test_rope_permutation_turns_interleaved_rope_into_half_rope():
    # mistral-inference rotates (x[2i], x[2i+1]) as complex numbers; the
    # backbone rotates (x[i], x[i + d/2]). With permuted q/k weights both
    # give the same attention scores.
    d, hidden, positions = 8, 6, np.arange(5)
    rng = np.random.default_rng(1)
    wq, wk = rng.normal(size=(d, hidden)), rng.normal(size=(d, hidden))
    x = rng.normal(size=(5, hidden))
    freqs = 10000.0 ** (-np.arange(0, d, 2) / d)
    angles = positions[:, None] * freqs[None, :]

    def interleaved(v):
        pairs = (v[:, 0::2] + 1j * v[:, 1::2]) * np.exp(1j * angles)
        return np.stack([pairs.real, pairs.imag], axis=-1).reshape(v.shape)

    def half(v):
        cos, sin = np.cos(angles), np.sin(angles)
        a, b = v[:, : d // 2], v[:, d // 2 :]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    native = interleaved(x @ wq.T) @ interleaved(x @ wk.T).T
    wq_hf = convert_mistral.rope_permute(wq, 1)
    wk_hf = convert_mistral.rope_permute(wk, 1)
    converted = half(x @ wq_hf.T) @ half(x @ wk_hf.T).T
    np.testing.assert_allclose(converted, native, rtol=1e-10, atol=1e-10)


def test_mistral_inference_unsupported_architectures(tmp_path):
    model = make_hf_model()
    _mistral_dir(tmp_path, model, moe={"num_experts": 8})
    with pytest.raises(ValueError, match="mixture-of-experts"):
        MistralBackbone.from_preset(str(tmp_path))


# --- errors and safety -------------------------------------------------------


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_weights_are_never_loaded(tmp_path):
    make_hf_model().config.save_pretrained(tmp_path)
    marker = str(tmp_path / "unpickled")
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": _Exploit(marker)}, f)
    with pytest.raises(ValueError, match="never unpickles"):
        MistralBackbone.from_preset(str(tmp_path))
    assert not os.path.exists(marker)


def test_missing_weights(tmp_path):
    make_hf_model().config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        MistralBackbone.from_preset(str(tmp_path))


def test_truncated_safetensors(tmp_path):
    make_hf_model().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        MistralBackbone.from_preset(str(tmp_path))


def test_safetensors_shape_mismatch(tmp_path):
    make_hf_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"gate_proj.*stores \(64, 32\).*expects \(48, 32\)"):
        MistralBackbone.from_preset(str(tmp_path), intermediate_dim=48)


def test_safetensors_index_cannot_escape_the_preset(tmp_path):
    make_hf_model().save_pretrained(tmp_path, max_shard_size="20KB")
    with open(tmp_path / "model.safetensors.index.json") as f:
        index = json.load(f)
    index["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors"
    with open(tmp_path / "model.safetensors.index.json", "w") as f:
        json.dump(index, f)
    with pytest.raises(ValueError, match=r"\.\."):
        MistralBackbone.from_preset(str(tmp_path))


def test_unsupported_transformers_features(tmp_path):
    make_hf_model().config.save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    config["hidden_act"] = "gelu"
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="hidden_act"):
        MistralBackbone.from_preset(str(tmp_path))


# --- export ------------------------------------------------------------------


def _hf_load(path, dtype=torch.float32):
    model = transformers.MistralForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation="eager"
    )
    return model.eval()


def test_export_backbone_loads_in_transformers(tmp_path):
    backbone = tiny_backbone(head_dim=6, rope_max_wavelength=1e6, sliding_window=3)
    backbone.export_to_transformers(str(tmp_path / "hf"))
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]
    model = _hf_load(str(tmp_path / "hf"))
    assert model.config.head_dim == 6
    assert model.config.sliding_window == 3
    assert model.config.rope_parameters["rope_theta"] == 1e6
    ids, mask = TOKEN_IDS % 10, PADDING_MASK
    _, expected = hf_forward(model, ids, mask)
    actual = backbone_logits(backbone, ids, mask)
    assert relative_error(actual[VALID], expected[VALID]) < 1e-4


def test_export_sharded_bfloat16(tmp_path):
    backbone = tiny_backbone(dtype="bfloat16")
    backbone.export_to_transformers(str(tmp_path / "hf"), max_shard_size="4KB")
    files = os.listdir(tmp_path / "hf")
    assert "model.safetensors.index.json" in files
    assert sum(f.startswith("model-") for f in files) > 1
    with open(tmp_path / "hf" / "config.json") as f:
        assert json.load(f)["dtype"] == "bfloat16"
    model = _hf_load(str(tmp_path / "hf"), dtype=torch.bfloat16)
    embeddings = model.model.embed_tokens.weight.detach().float().numpy()
    np.testing.assert_array_equal(
        embeddings,
        keras.ops.convert_to_numpy(keras.ops.cast(backbone.token_embedding.embeddings, "float32")),
    )


def test_export_causal_lm_and_tokenizer(tmp_path):
    causal_lm = tiny_causal_lm()
    causal_lm.preprocessor.tokenizer = MistralTokenizer(V1_MODEL)
    causal_lm.default_stop_token_ids = (2, 7)
    causal_lm.export_to_transformers(str(tmp_path / "hf"))
    assert sorted(os.listdir(tmp_path / "hf")) == [
        "config.json", "generation_config.json", "model.safetensors",
        "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json",
    ]
    with open(tmp_path / "hf" / "generation_config.json") as f:
        generation = json.load(f)
    assert generation["eos_token_id"] == [2, 7] and generation["bos_token_id"] == 1
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ours = causal_lm.preprocessor.tokenizer
    # transformers' SentencePiece conversion differs from sentencepiece on
    # runs of spaces and leading spaces; ordinary text matches.
    for text in ["Hello world!", "The quick brown fox,\njumps over 2 dogs.", "naïve café 123"]:
        assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == ours(text)
    assert hf_tokenizer("Hi")["input_ids"][0] == ours.start_token_id


def test_export_tekken_tokenizer(tmp_path):
    tokenizer = MistralTekkenTokenizer(TEKKEN_MODEL)
    tokenizer.export_to_transformers(str(tmp_path / "hf"))
    assert sorted(os.listdir(tmp_path / "hf")) == ["tekken.json", "tokenizer_config.json"]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    for text in ["Hello world", "naïve café, 123!"]:
        assert hf_tokenizer.encode(text, add_special_tokens=False) == tokenizer(text)


def test_transformers_round_trip_through_keras_preset(tmp_path):
    model = make_hf_model(**HF_CONFIG)
    model.save_pretrained(tmp_path / "original")
    MistralBackbone.from_preset(str(tmp_path / "original")).save_to_preset(tmp_path / "keras")
    MistralBackbone.from_preset(tmp_path / "keras").export_to_transformers(
        str(tmp_path / "exported")
    )
    exported = _hf_load(str(tmp_path / "exported"))
    _, expected = hf_forward(model, TOKEN_IDS, PADDING_MASK)
    _, actual = hf_forward(exported, TOKEN_IDS, PADDING_MASK)
    np.testing.assert_array_equal(actual, expected)


def test_export_refuses_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="overwrite=True"):
        tiny_backbone().export_to_transformers(str(tmp_path))


# --- chunked streaming -------------------------------------------------------


def test_chunk_layouts_agree_with_hf_weight_map():
    from mistral_hub.utils.transformers import preset_loader

    backbone = tiny_backbone(head_dim=6, vocabulary_size=13)
    rng = np.random.default_rng(0)
    for hf_name, variable, to_keras, to_hf in convert_mistral.hf_weight_map(backbone):
        layout = preset_loader._layout(hf_name)
        full = to_hf(rng.normal(size=tuple(variable.shape)))
        expected = to_keras(full)
        step = 6 if layout == "heads" else 5
        rebuilt = np.zeros(tuple(variable.shape))
        for start in range(0, full.shape[0], step):
            stop = min(start + step, full.shape[0])
            index, values = preset_loader.keras_slice(layout, full[start:stop], start, stop, 6)
            rebuilt[index] = values
        np.testing.assert_array_equal(rebuilt, expected, err_msg=hf_name)


@pytest.mark.parametrize("fmt", ["transformers", "mistral"])
def test_loading_in_many_small_chunks(tmp_path, monkeypatch, fmt):
    from mistral_hub.utils.transformers import preset_loader

    monkeypatch.setattr(preset_loader, "_CHUNK_BYTES", 300)
    model = make_hf_model(**HF_CONFIG)
    if fmt == "transformers":
        model.to(torch.bfloat16).save_pretrained(tmp_path)
        model.to(torch.float32)
    else:
        _mistral_dir(tmp_path, model, sliding_window=5)
    _assert_logits_match(MistralBackbone.from_preset(str(tmp_path), dtype="float32"), model)
