"""Random-weight transformers Mistral models and their mistral_hub twins."""

import numpy as np
import torch
import transformers

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_checkpoint_conversion import (
    backbone_kwargs_from_hf_config,
)
from mistral_hub.models.mistral.mistral_checkpoint_conversion import load_hf_weights


def make_hf_model(seed=0, **config_overrides):
    """A small random `MistralForCausalLM` in float32 with eager attention."""
    config = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        sliding_window=None,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    config.update(config_overrides)
    torch.manual_seed(seed)
    hf_config = transformers.MistralConfig(**config)
    hf_config._attn_implementation = "eager"
    model = transformers.MistralForCausalLM(hf_config).eval()
    # Default init leaves norms at exactly one; randomize them so a misplaced
    # or missing norm weight cannot go unnoticed.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(1.0 + 0.1 * torch.randn_like(parameter))
    return model


def keras_backbone_from_hf(model, dtype=None):
    """Builds a `MistralBackbone` holding the same weights as `model`."""
    kwargs = backbone_kwargs_from_hf_config(model.config.to_dict())
    backbone = MistralBackbone(**kwargs, dtype=dtype)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    load_hf_weights(
        backbone,
        get_tensor=state.__getitem__,
        has_tensor=state.__contains__,
        tie_word_embeddings=model.config.tie_word_embeddings,
    )
    return backbone


def hf_forward(model, token_ids, padding_mask):
    """Final hidden states and logits of the transformers model as numpy."""
    with torch.no_grad():
        output = model(
            input_ids=torch.as_tensor(np.asarray(token_ids), dtype=torch.long),
            attention_mask=torch.as_tensor(np.asarray(padding_mask), dtype=torch.long),
            output_hidden_states=True,
        )
    return output.hidden_states[-1].float().numpy(), output.logits.float().numpy()


def relative_error(actual, expected):
    actual = np.asarray(actual, dtype="float64")
    expected = np.asarray(expected, dtype="float64")
    return np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12)


def pack_prompts(prompts, total_length):
    """Right-padded `generate()` inputs of `total_length` columns."""
    token_ids = np.zeros((len(prompts), total_length), "int32")
    padding_mask = np.zeros((len(prompts), total_length), bool)
    for row, prompt in enumerate(prompts):
        token_ids[row, : len(prompt)] = prompt
        padding_mask[row, : len(prompt)] = True
    return {"token_ids": token_ids, "padding_mask": padding_mask}
