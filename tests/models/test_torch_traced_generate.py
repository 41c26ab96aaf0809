"""On torch, `generate()` runs its decode step as a traced torch graph.

The graph must give the tokens eager decoding gives (`run_eagerly=True`,
where the step's Python runs for every token), for the shipped bfloat16
preset, every kind of sampler, and int8 layers with LoRA adapters.
"""

import os

import keras
import numpy as np
import pytest

import mistral_hub
from mistral_hub import MistralCausalLM
from mistral_hub.samplers import BeamSampler
from mistral_hub.samplers import TopKSampler
from mistral_hub.utils import backend

pytestmark = pytest.mark.skipif(
    keras.config.backend() != "torch", reason="only torch runs the decode loop in Python"
)

PRESET_DIR = os.path.join(
    os.path.dirname(mistral_hub.__file__), "presets", "mistral_hub_demo"
)
# Different lengths: a padded batch.
PROMPTS = ["Beautiful is better than", "Simple"]
MAX_LENGTH = 20
# The preset compiles a top-k sampler.
GREEDY = {"sampler": "greedy", "stop_token_ids": None}


def _count_decode_steps(causal_lm):
    """Records each time the Python of `call_with_cache` runs."""
    runs = []
    original = causal_lm.call_with_cache

    def counting(*args, **kwargs):
        runs.append(1)
        return original(*args, **kwargs)

    causal_lm.call_with_cache = counting
    return runs


def _traced_and_eager(causal_lm, **kwargs):
    runs = _count_decode_steps(causal_lm)
    traced = causal_lm.generate(PROMPTS, max_length=MAX_LENGTH, **kwargs)
    traced_runs = len(runs)
    causal_lm.run_eagerly = True
    eager = causal_lm.generate(PROMPTS, max_length=MAX_LENGTH, **kwargs)
    eager_runs = len(runs) - traced_runs
    return traced, eager, traced_runs, eager_runs


@pytest.mark.parametrize(
    "sampler",
    ["greedy", TopKSampler(k=8), BeamSampler(num_beams=2)],
    ids=["greedy", "top_k", "beam"],
)
def test_traced_decoding_gives_the_eager_tokens(sampler):
    causal_lm = MistralCausalLM.from_preset(PRESET_DIR)
    assert causal_lm.backbone.dtype_policy.name == "bfloat16"
    traced, eager, traced_runs, eager_runs = _traced_and_eager(
        causal_lm, sampler=sampler, seed=3, stop_token_ids=None
    )
    assert traced == eager
    # Eager decoding runs the step's Python once per token; traced, only
    # while tracing (one input signature).
    assert traced_runs == 1
    assert eager_runs > 5


def test_traced_decoding_of_int8_layers_with_lora_gives_the_eager_tokens():
    causal_lm = MistralCausalLM.from_preset(PRESET_DIR, dtype="float32")
    causal_lm.quantize("int8")
    causal_lm.backbone.enable_lora(rank=2)
    rng = np.random.default_rng(0)
    for variable in causal_lm.backbone.trainable_weights:
        if "lora" in variable.path:
            variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    traced, eager, traced_runs, _ = _traced_and_eager(causal_lm, **GREEDY)
    assert traced == eager
    assert traced_runs == 1


def test_decoding_switches_from_eager_steps_to_the_graph_mid_generation(monkeypatch):
    # The default path: a signature's first steps run eagerly, then the
    # graph takes over the same in-place cache within one `generate()`.
    monkeypatch.setattr(backend, "_EAGER_STEPS_BEFORE_TRACING", 5)
    causal_lm = MistralCausalLM.from_preset(PRESET_DIR)
    traced, eager, traced_runs, eager_runs = _traced_and_eager(causal_lm, **GREEDY)
    assert traced == eager
    assert traced_runs == 5 + 1
    assert eager_runs > traced_runs


def test_traced_decoding_uses_weights_assigned_after_tracing():
    causal_lm = MistralCausalLM.from_preset(PRESET_DIR)
    before = causal_lm.generate(PROMPTS, max_length=MAX_LENGTH, **GREEDY)
    # Assigned in place (as `fit()` and `load_weights()` do): the same
    # variables, so the same traced graph, which must read the new values.
    rng = np.random.default_rng(1)
    for layer in causal_lm.backbone.transformer_layers:
        kernel = layer._feedforward_output_dense.kernel
        kernel.assign(rng.normal(0, 0.5, kernel.shape).astype("float32"))
    runs = _count_decode_steps(causal_lm)
    after = causal_lm.generate(PROMPTS, max_length=MAX_LENGTH, **GREEDY)
    assert runs == []
    causal_lm.run_eagerly = True
    eager = causal_lm.generate(PROMPTS, max_length=MAX_LENGTH, **GREEDY)
    assert after == eager
    assert after != before


def test_generate_after_full_fine_tuning_of_the_bfloat16_preset():
    # keras_hub's workflow: generate, fit, generate. `fit()` moves the
    # bfloat16 weights to float32 storage (same variables, mixed policy), so
    # the graph traced before no longer fits them.
    causal_lm = MistralCausalLM.from_preset(PRESET_DIR)
    causal_lm.generate(PROMPTS, max_length=MAX_LENGTH, **GREEDY)
    causal_lm.compile(optimizer=keras.optimizers.Adam(1e-2), sampler="greedy")
    with pytest.warns(UserWarning, match="float32"):
        causal_lm.fit(PROMPTS * 2, batch_size=2, epochs=1, verbose=0)
    assert {w.dtype for w in causal_lm.backbone.trainable_weights} == {"float32"}
    traced = causal_lm.generate(PROMPTS, max_length=MAX_LENGTH, **GREEDY)
    causal_lm.run_eagerly = True
    assert traced == causal_lm.generate(PROMPTS, max_length=MAX_LENGTH, **GREEDY)
