"""Trains `mistral_hub_demo`, the tiny preset that ships inside the package.

The demo preset lets `examples/generate.py` run offline right after
installation. Everything it learns from comes with Python itself, so the
script needs no download and is reproducible on any machine:

- `pydoc_data.topics`: the Python language reference behind `help()`
  (about 460 KB of English and code);
- `this`: the Zen of Python, repeated a few times so that the model knows it
  by heart (the first prompt of `examples/generate.py` asks for it).

Steps: train a 2048-piece SentencePiece BPE vocabulary in memory with
Mistral's settings (byte fallback, digits split, `<unk>` 0, `<s>` 1, `</s>` 2,
no padding piece); cut the text into overlapping chunks of at most
`SEQUENCE_LENGTH` tokens along line boundaries; train a ~1.3M parameter
`MistralBackbone` with `MistralCausalLM.fit()` on the raw strings; save the
weights in bfloat16 with `save_to_preset()` (about 2.7 MB).

It takes about 6 minutes on 2 CPU cores with the JAX backend (final
training loss 1.39); any backend works, with different numerics:

    KERAS_BACKEND=jax python examples/train_demo_preset.py

Pass `--output DIR` to write somewhere else than the packaged preset, and
`--epochs 1` for a quick smoke test. With the same backend and library
versions, a rerun writes the same weights.
"""

import argparse
import codecs
import contextlib
import io
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import pydoc_data.topics  # noqa: E402
import sentencepiece  # noqa: E402

from mistral_hub import MistralBackbone  # noqa: E402
from mistral_hub import MistralCausalLM  # noqa: E402
from mistral_hub import MistralCausalLMPreprocessor  # noqa: E402
from mistral_hub import MistralTokenizer  # noqa: E402

OUTPUT_DIR = os.path.normpath(
    os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        os.pardir,
        "mistral_hub",
        "presets",
        "mistral_hub_demo",
    )
)
VOCABULARY_SIZE = 2048
SEQUENCE_LENGTH = 128
# Small enough to train in minutes on a laptop CPU, big enough to write
# English-looking sentences. Grouped-query attention and a sliding window
# keep the code paths of the real 7B models (generating past 128 tokens
# rolls the KV cache).
BACKBONE_CONFIG = dict(
    vocabulary_size=VOCABULARY_SIZE,
    num_layers=4,
    num_query_heads=4,
    num_key_value_heads=2,
    hidden_dim=128,
    intermediate_dim=384,
    sliding_window=SEQUENCE_LENGTH,
    rope_max_wavelength=10000,
)
# The Zen is 1/500 of the corpus; repeats make it stick.
ZEN_REPEATS = 8
SEED = 1337


def load_documents():
    """Returns the corpus as a list of documents (str)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this  # Prints the Zen on import; keep the log clean.
    zen = codecs.decode(this.s, "rot13")
    topics = pydoc_data.topics.topics
    return [topics[name] for name in sorted(topics)] + [zen] * ZEN_REPEATS


def train_vocabulary(documents):
    """Trains a SentencePiece BPE model; returns its serialized proto."""
    # One sentence per line: SentencePiece never learns pieces across
    # lines, and newlines become the byte piece `<0x0A>` as in Mistral's
    # vocabularies.
    lines = [line for doc in documents for line in doc.splitlines() if line.strip()]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=VOCABULARY_SIZE,
        model_type="bpe",
        # Mistral's trainer settings: identity normalization keeps
        # indentation, so code round-trips exactly.
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=0.99995,
        max_sentencepiece_length=16,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,  # Deterministic.
        minloglevel=2,
    )
    return model.getvalue()


def make_chunks(documents, tokenizer, max_tokens, stride):
    """Cuts documents into overlapping chunks of whole lines.

    A chunk holds at most about `max_tokens` tokens and a new one starts
    every `stride` tokens, so each line is seen at several offsets and the
    model learns to continue text from anywhere, not only from a title.
    """
    chunks = []
    for doc in documents:
        lines = doc.strip("\n").split("\n")
        # +1 for the newline joining the lines.
        lengths = [len(ids) + 1 for ids in tokenizer.tokenize(lines)]
        start = 0
        while start < len(lines):
            end, total = start, 0
            while end < len(lines) and (end == start or total + lengths[end] <= max_tokens):
                total += lengths[end]
                end += 1
            chunk = "\n".join(lines[start:end]).strip("\n")
            if chunk.strip():
                chunks.append(chunk)
            if end == len(lines):
                break
            next_start, skipped = start + 1, lengths[start]
            while next_start < end and skipped < stride:
                skipped += lengths[next_start]
                next_start += 1
            start = next_start
    return chunks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=OUTPUT_DIR, help="preset directory")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    args = parser.parse_args()
    keras.utils.set_random_seed(SEED)
    start_time = time.time()

    documents = load_documents()
    tokenizer = MistralTokenizer(proto=train_vocabulary(documents))
    # Leave room for `<s>` and `</s>`, and for the tokens a line gains or
    # loses when tokenized inside a chunk rather than alone.
    chunks = make_chunks(documents, tokenizer, SEQUENCE_LENGTH - 8, SEQUENCE_LENGTH // 2)
    print(f"{len(chunks)} training chunks, vocabulary of {tokenizer.vocabulary_size()}")

    preprocessor = MistralCausalLMPreprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH)
    backbone = MistralBackbone(**BACKBONE_CONFIG)
    causal_lm = MistralCausalLM(backbone, preprocessor)
    print(f"{backbone.count_params():,} parameters")

    steps = args.epochs * -(-len(chunks) // args.batch_size)
    # Linear warmup, then cosine decay. On this corpus 2e-3 trains faster
    # than 1e-3, 3e-3 or 5e-3; a batch of 16 gives twice the optimizer steps
    # of 32 for the same CPU time, which matters more in a 10-minute run.
    warmup_steps = max(1, steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        warmup_target=args.learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=steps - warmup_steps,
        alpha=0.05,
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=0.01, beta_2=0.98, clipnorm=1.0
    )
    # Decaying norm scales and embedding rows would only slow them down.
    optimizer.exclude_from_weight_decay(var_names=["scale", "embeddings"])
    causal_lm.compile(optimizer=optimizer)
    history = causal_lm.fit(
        chunks, batch_size=args.batch_size, epochs=args.epochs, shuffle=True
    )
    loss = history.history["loss"][-1]
    print(f"final training loss {loss:.3f}, {time.time() - start_time:.0f} s in all")

    # Train in float32, ship in bfloat16: half the size, and the loss of
    # this model only changes in the fourth decimal. Loading the preset with
    # `dtype="float32"` computes in float32 again.
    demo_backbone = MistralBackbone.from_config(
        {**backbone.get_config(), "dtype": "bfloat16"}
    )
    demo_backbone.set_weights(backbone.get_weights())
    demo = MistralCausalLM(demo_backbone, preprocessor)
    demo.save_to_preset(args.output, overwrite=True)
    print(f"saved {os.path.abspath(args.output)}")
    for prompt in ("The Zen of Python", "A class definition", "Exceptions are"):
        print(repr(demo.generate(prompt, max_new_tokens=32, sampler="greedy")))


if __name__ == "__main__":
    main()
