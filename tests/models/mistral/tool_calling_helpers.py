"""A tiny instruct model that really calls a tool, for function-calling tests.

The demo preset's v1 vocabulary has no `[TOOL_CALLS]` token, and a random
model never writes valid JSON after it. This module trains (in about a
hundred steps) a small Mistral on a v3-style SentencePiece vocabulary with
Mistral's control tokens to answer `WEATHER_QUESTION` with a call to
`get_weather`, and the conversation with its result with `ANSWER`.
"""

import functools
import io
import json

import keras
import numpy as np
import sentencepiece

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.models.mistral.mistral_causal_lm_preprocessor import (
    MistralCausalLMPreprocessor,
)
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from mistral_hub.utils import preset_utils

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALL_ID = "a1b2c3d4e"
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOL_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": CALL_ID,
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}
TOOL_RESULT = {"role": "tool", "tool_call_id": CALL_ID, "content": '{"temperature": 21}'}
ANSWER = "It is 21 degrees in Paris."
CONTROL_TOKENS = [
    "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]",
]  # fmt: skip


@functools.lru_cache(maxsize=None)
def tool_tokenizer_proto():
    """A 400-piece BPE vocabulary with Mistral's v3 control tokens."""
    texts = [
        json.dumps(TOOLS),
        WEATHER_QUESTION[0]["content"],
        json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}, "id": CALL_ID}]),
        json.dumps({"content": {"temperature": 21}, "call_id": CALL_ID}),
        ANSWER,
    ]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 20),
        model_writer=model,
        vocab_size=400,
        model_type="bpe",
        control_symbols=CONTROL_TOKENS,
        byte_fallback=True,
        hard_vocab_limit=False,
        pad_id=-1,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        minloglevel=2,
    )
    return model.getvalue()


def _training_data(tokenizer):
    examples = [
        (WEATHER_QUESTION, TOOL_CALL),
        (WEATHER_QUESTION + [TOOL_CALL, TOOL_RESULT], {"role": "assistant", "content": ANSWER}),
    ]
    sequences = []
    for conversation, reply in examples:
        prompt = tokenizer.apply_chat_template(conversation, tools=TOOLS)
        full = tokenizer.apply_chat_template(
            conversation + [reply], tools=TOOLS, add_generation_prompt=False
        )
        sequences.append((full, len(prompt)))
    length = max(len(s) for s, _ in sequences) + 1
    x = np.zeros((len(sequences), length), "int32")
    y = np.zeros_like(x)
    weights = np.zeros(x.shape, "float32")
    for row, (ids, prompt_length) in enumerate(sequences):
        x[row, : len(ids)] = ids
        y[row, : len(ids) - 1] = ids[1:]
        weights[row, prompt_length - 1 : len(ids) - 1] = 1.0  # the replies only
    return x, y, weights


@functools.lru_cache(maxsize=None)
def tool_calling_causal_lm():
    """The trained model, with a preprocessor (built once per session)."""
    tokenizer = MistralTokenizer(tool_tokenizer_proto())
    x, y, weights = _training_data(tokenizer)
    with preset_utils.skip_random_initialization():
        backbone = MistralBackbone(
            vocabulary_size=tokenizer.vocabulary_size(),
            num_layers=2,
            num_query_heads=4,
            num_key_value_heads=2,
            hidden_dim=64,
            intermediate_dim=128,
        )
    rng = np.random.default_rng(0)
    for variable in backbone.weights:
        if "norm" in variable.path:
            values = np.ones(variable.shape)
        else:
            values = rng.normal(0.0, 0.05, variable.shape)
        variable.assign(values.astype("float32"))
    trainer = MistralCausalLM(backbone)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    # Every batch holds both examples.
    repeats = (8, 1)
    trainer.fit(
        {"token_ids": np.tile(x, repeats), "padding_mask": np.tile(x > 0, repeats)},
        np.tile(y, repeats),
        sample_weight=np.tile(weights, repeats),
        epochs=8,
        batch_size=2,
        shuffle=False,
        verbose=0,
    )
    preprocessor = MistralCausalLMPreprocessor(tokenizer, sequence_length=x.shape[1] + 16)
    causal_lm = MistralCausalLM(backbone, preprocessor)
    causal_lm.compile(sampler="greedy")
    return causal_lm
