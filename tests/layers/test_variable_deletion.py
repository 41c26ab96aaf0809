"""`quantize()` deletes float kernels with one garbage collection per model."""

import gc
import weakref

import pytest

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM


def _backbone():
    return MistralBackbone(
        vocabulary_size=32, num_layers=2, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=16, intermediate_dim=32,
    )


@pytest.fixture
def collections(monkeypatch):
    calls = []
    collect = gc.collect

    def counting(*args):
        calls.append(args)
        return collect(*args)

    monkeypatch.setattr(gc, "collect", counting)
    return calls


@pytest.mark.parametrize("model_of", [lambda b: b, MistralCausalLM], ids=["backbone", "task"])
def test_quantize_collects_once_and_frees_the_float_kernels(collections, model_of):
    backbone = _backbone()
    model = model_of(backbone)
    gate = backbone.transformer_layers[0]._feedforward_gate_dense
    float_kernel = weakref.ref(gate._kernel)
    float_embeddings = weakref.ref(backbone.token_embedding.reverse_embeddings)
    model.quantize("int8")
    # Keras collects after each deleted variable: 16 times here, 225 for a
    # 7B model.
    assert len(collections) == 1
    assert float_kernel() is None
    assert float_embeddings() is None
    assert gate._kernel.dtype == "int8"
