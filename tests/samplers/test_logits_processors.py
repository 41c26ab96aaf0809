"""Built-in logits processors compare by value, so generate() reuses its loop."""

import keras
import pytest

from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.samplers import logits_processors


def test_built_in_processors_compare_by_value():
    assert logits_processors.RepetitionPenalty(1.2) == logits_processors.RepetitionPenalty(1.2)
    assert hash(logits_processors.MinP(0.1)) == hash(logits_processors.MinP(0.1))
    assert logits_processors.RepetitionPenalty(1.2) != logits_processors.RepetitionPenalty(1.3)
    assert logits_processors.OccurrencePenalty(0.5, 0.0) != logits_processors.OccurrencePenalty(
        0.0, 0.5
    )
    assert logits_processors.MinP(0.5) != logits_processors.RepetitionPenalty(0.5)


@pytest.mark.skipif(
    keras.config.backend() == "torch",
    reason="torch runs the decode loop eagerly: there is no trace to reuse",
)
def test_same_penalties_do_not_retrace_the_decode_loop(monkeypatch):
    traces = []
    original = logits_processors.RepetitionPenalty.__call__

    def counting_call(self, *args):
        traces.append(self.penalty)
        return original(self, *args)

    monkeypatch.setattr(logits_processors.RepetitionPenalty, "__call__", counting_call)
    causal_lm = MistralCausalLM.from_preset("mistral_hub_demo")
    causal_lm.generate("The Zen", max_new_tokens=4, repetition_penalty=1.2)
    first = len(traces)
    assert first > 0
    causal_lm.generate("The Zen", max_new_tokens=4, repetition_penalty=1.2)
    assert len(traces) == first
    causal_lm.generate("The Zen", max_new_tokens=4, repetition_penalty=1.3)
    assert len(traces) > first
