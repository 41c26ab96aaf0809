"""Tokenizer files shared by the tests.

`V1_MODEL`, `V3_MODEL`, `V7_MODEL` and `TEKKEN_MODEL` are paths (str) to the
real Mistral tokenizers shipped in the `mistral_common` wheel:
- `V1_MODEL`: Mistral 7B v0.1/v0.2 and Mixtral 8x7B (32000 pieces).
- `V3_MODEL`: what `mistral_common`'s `MistralTokenizer.v3()` loads (32768
  pieces, `[INST]`... control pieces).
- `V7_MODEL`: `MistralTokenizer.v7()` (adds `[SYSTEM_PROMPT]`).
- `TEKKEN_MODEL`: Tekken byte-level BPE, `tekken_240718.json` (Mistral NeMo,
  131072 ids; `MistralTokenizer.v3(is_tekken=True)`); also
  `TEKKEN_240911_MODEL` (the multimodal variant, Pixtral).
`mistral_test_proto()` returns keras_hub's tiny Mistral test vocabulary.
"""

import functools
import importlib.resources
import io

import sentencepiece

_DATA = importlib.resources.files("mistral_common") / "data"

V1_MODEL = str(_DATA / "tokenizer.model.v1")
V3_MODEL = str(_DATA / "mistral_instruct_tokenizer_240323.model.v3")
V7_MODEL = str(_DATA / "mistral_instruct_tokenizer_241114.model.v7")
TEKKEN_MODEL = str(_DATA / "tekken_240718.json")
TEKKEN_240911_MODEL = str(_DATA / "tekken_240911.json")


@functools.lru_cache(maxsize=None)
def mistral_test_proto() -> bytes:
    """keras_hub's Mistral test vocabulary, trained in memory.

    Pieces: 0 `<unk>`, 1 `<s>`, 2 `</s>`, 3 `▁the`, 4 `▁brown`, 5 `▁earth`,
    6 `▁fox`, 7 `▁is`, 8 `▁quick`, 9 `▁round`.
    """
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["the quick brown fox", "the earth is round"]),
        model_writer=model,
        vocab_size=10,
        model_type="WORD",
        pad_id=-1,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        minloglevel=2,
    )
    return model.getvalue()
