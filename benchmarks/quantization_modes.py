#!/usr/bin/env python
"""Quality, size and speed of every Keras quantization mode on the demo preset.

`mistral_hub_demo` (1.3M parameters, trained on Python's `pydoc_data`
language reference and the Zen of Python) is loaded once per mode and
compared with the same preset loaded in float32:

* `max err` / `mean err`: absolute logits error against float32 over every
  real token of the held-out text;
* `tokens` / `prompts`: greedy agreement with float32 on a fixed set of 16
  prompts (first line of 16 `pydoc_data` topics) and `--new-tokens` new
  tokens each: the share of generated token positions equal to float32's,
  and the number of prompts whose whole completion is equal;
* `ppl`: perplexity on held-out text the model never saw (docstrings of a
  few standard-library modules, 64 rows of `<s>` + 127 tokens; the tiny
  model memorized its corpus more than it learned English, so this is
  high); `train ppl`: the same on 16 rows of its training text;
* `weight bytes`: bytes of the backbone's variables (int4 values are packed
  two to a byte);
* `tok/s`: batch-1 greedy `generate()` of `--new-tokens` tokens (prefill
  included), median of `--calls` warm calls.

Every mode but `bfloat16` (the preset as shipped) quantizes the float32 load,
so the error is the quantization's alone; `gptq` and `awq` calibrate on 32
windows of 128 tokens of the training text. Everything runs in one process
on the backend of `KERAS_BACKEND` (default JAX):

    python benchmarks/quantization_modes.py
    python benchmarks/quantization_modes.py --modes float32 int8 gptq
"""

import argparse
import inspect
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pydoc_data.topics  # noqa: E402

from mistral_hub import MistralCausalLM  # noqa: E402

MODES = ["float32", "bfloat16", "int8", "int4", "float8", "gptq", "awq"]
# Standard-library modules whose docstrings are the held-out text.
HELD_OUT_MODULES = [
    "argparse", "collections", "csv", "difflib", "functools", "heapq",
    "itertools", "json", "logging", "pathlib", "shutil", "textwrap",
]
SEQUENCE_LENGTH = 128


def prompts():
    """First lines of 16 topics spread over `pydoc_data.topics`."""
    topics = pydoc_data.topics.topics
    names = sorted(topics)
    picked = [names[i] for i in np.linspace(0, len(names) - 1, 16).astype(int)]
    return [topics[name].strip().split("\n")[0] for name in picked]


def held_out_text():
    docs = []
    for name in HELD_OUT_MODULES:
        module = __import__(name)
        docs.append(inspect.getdoc(module) or "")
        for _, member in sorted(inspect.getmembers(module, inspect.isfunction)):
            if member.__module__ == name and member.__doc__:
                docs.append(inspect.getdoc(member))
    return "\n\n".join(docs)


def calibration_text():
    topics = pydoc_data.topics.topics
    return [topics[name] for name in sorted(topics)]


def load(mode, tokenizer=None):
    dtype = "bfloat16" if mode == "bfloat16" else "float32"
    causal_lm = MistralCausalLM.from_preset(
        "mistral_hub_demo", sequence_length=SEQUENCE_LENGTH, dtype=dtype
    )
    if mode in ("int8", "int4", "float8"):
        causal_lm.quantize(mode)
    elif mode in ("gptq", "awq"):
        config_class = {"gptq": keras.quantizers.GPTQConfig, "awq": keras.quantizers.AWQConfig}
        config = config_class[mode](
            dataset=calibration_text(),
            tokenizer=causal_lm.preprocessor.tokenizer,
            num_samples=32,
            sequence_length=SEQUENCE_LENGTH,
        )
        causal_lm.quantize(mode, config=config)
    return causal_lm


def text_batch(tokenizer, text, max_chunks):
    """`<s>` + 127 tokens per row, as the preset was trained."""
    ids = np.asarray(keras.ops.convert_to_numpy(tokenizer.tokenize(text)))
    n = min(max_chunks, len(ids) // (SEQUENCE_LENGTH - 1))
    body = ids[: n * (SEQUENCE_LENGTH - 1)].reshape(n, SEQUENCE_LENGTH - 1)
    bos = np.full((n, 1), tokenizer.start_token_id)
    token_ids = np.concatenate([bos, body], axis=1).astype("int32")
    return {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}


def forward(causal_lm, batch, chunk=16):
    outputs = []
    for start in range(0, len(batch["token_ids"]), chunk):
        part = {key: value[start : start + chunk] for key, value in batch.items()}
        logits = causal_lm(part)
        outputs.append(keras.ops.convert_to_numpy(keras.ops.cast(logits, "float32")))
    return np.concatenate(outputs)


def perplexity(logits, token_ids):
    logits = logits[:, :-1].astype("float64")
    targets = token_ids[:, 1:]
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return float(np.exp(np.mean(log_z - picked)))


def weight_bytes(causal_lm):
    return sum(keras.ops.convert_to_numpy(v).nbytes for v in causal_lm.backbone.weights)


def completions(causal_lm, texts, new_tokens):
    # A long enough max_length for every prompt: the longest prompt's
    # tokens plus the new ones (greedy, no stop token).
    tokenizer = causal_lm.preprocessor.tokenizer
    longest = max(len(keras.ops.convert_to_numpy(tokenizer.tokenize(t))) for t in texts)
    outputs = causal_lm.generate(
        texts, max_length=longest + 1 + new_tokens, sampler="greedy",
        stop_token_ids=None, strip_prompt=True,
    )
    return [list(keras.ops.convert_to_numpy(tokenizer.tokenize(o))) for o in outputs], outputs


def decode_speed(causal_lm, prompt, new_tokens, calls):
    tokenizer = causal_lm.preprocessor.tokenizer
    length = len(keras.ops.convert_to_numpy(tokenizer.tokenize(prompt))) + 1 + new_tokens
    kwargs = dict(max_length=length, sampler="greedy", stop_token_ids=None)
    causal_lm.generate(prompt, **kwargs)  # Trace and compile.
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        causal_lm.generate(prompt, **kwargs)
        times.append(time.perf_counter() - start)
    return new_tokens / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    modes = ["float32"] + [m for m in args.modes if m != "float32"]

    texts = prompts()
    rows, reference = [], None
    for mode in modes:
        start = time.perf_counter()
        causal_lm = load(mode)
        setup_s = time.perf_counter() - start
        tokenizer = causal_lm.preprocessor.tokenizer
        held_out = text_batch(tokenizer, held_out_text(), max_chunks=64)
        train = text_batch(tokenizer, "\n\n".join(calibration_text()), max_chunks=16)
        logits = forward(causal_lm, held_out)
        train_logits = forward(causal_lm, train)
        ids, strings = completions(causal_lm, texts, args.new_tokens)
        if reference is None:
            reference = (logits, ids, strings)
        ref_logits, ref_ids, ref_strings = reference
        error = np.abs(logits - ref_logits)
        matching = sum(
            sum(a == b for a, b in zip(x, y)) for x, y in zip(ids, ref_ids)
        )
        positions = sum(len(y) for y in ref_ids)
        rows.append(
            dict(
                mode=mode,
                max_err=float(error.max()),
                mean_err=float(error.mean()),
                tokens=matching / positions,
                prompts=sum(a == b for a, b in zip(strings, ref_strings)),
                ppl=perplexity(logits, held_out["token_ids"]),
                train_ppl=perplexity(train_logits, train["token_ids"]),
                bytes=weight_bytes(causal_lm),
                tok_s=decode_speed(causal_lm, texts[0], args.new_tokens, args.calls),
                setup_s=setup_s,
            )
        )
        print(f"{mode}: done in {time.perf_counter() - start:.0f} s", flush=True)

    n_tokens = held_out["token_ids"].size
    print(
        f"\nBackend {keras.backend.backend()}, {len(texts)} prompts x {args.new_tokens} "
        f"greedy tokens, held-out text {n_tokens} tokens; tok/s measured on a "
        "shared, loaded machine.\n"
    )
    print("| mode | max err | mean err | tokens | prompts | ppl | train ppl | weight bytes | tok/s | setup s |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['max_err']:.3f} | {r['mean_err']:.4f} | {r['tokens']:.1%} "
            f"| {r['prompts']}/{len(texts)} | {r['ppl']:.1f} | {r['train_ppl']:.2f} | {r['bytes']:,} "
            f"| {r['tok_s']:.0f} | {r['setup_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
