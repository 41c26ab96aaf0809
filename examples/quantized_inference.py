"""Quantized inference with `mistral_hub_demo`, offline.

1. Load the demo preset (1.3M parameters, shipped in the package) and
   generate greedily as a reference.
2. `quantize("int8")` turns every kernel and the embedding into int8 with
   a float scale per output channel (and quantizes the activations that
   feed them), about a quarter of the float32 size; the quantized model
   generates straight away.
3. `save_to_preset()` writes the int8 weights and the per-layer
   quantization policies; `from_preset()` loads them back as they were,
   so the reloaded model gives the same logits and text.

Other modes: `quantize("int4")`, `quantize("float8")`, and the calibrated
`quantize("gptq", config=keras.quantizers.GPTQConfig(dataset, tokenizer))`
and `"awq"` (`keras.quantizers.AWQConfig`); see
`benchmarks/quantization_modes.py` for their quality and size.

It runs in well under a minute on 2 CPU cores:

    KERAS_BACKEND=jax python examples/quantized_inference.py

Pass `--output DIR` to keep the quantized preset.
"""

import argparse
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mistral_hub import MistralCausalLM  # noqa: E402

PRESET = "mistral_hub_demo"
PROMPT = "Beautiful is better than"
MAX_LENGTH = 24


def weight_bytes(causal_lm):
    return sum(keras.ops.convert_to_numpy(v).nbytes for v in causal_lm.backbone.weights)


def directory_bytes(path):
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def logits(causal_lm):
    x, _, _ = causal_lm.preprocessor([PROMPT])
    return keras.ops.convert_to_numpy(keras.ops.cast(causal_lm(x), "float32"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", help="directory for the quantized preset")
    args = parser.parse_args()
    output = args.output or tempfile.mkdtemp()
    preset_dir = os.path.join(output, "demo_int8")

    # float32 so that the int8 scales are computed from full-precision
    # weights, and the reference is the unrounded model.
    causal_lm = MistralCausalLM.from_preset(PRESET, sequence_length=32, dtype="float32")
    float_bytes = weight_bytes(causal_lm)
    reference = causal_lm.generate(PROMPT, max_length=MAX_LENGTH, sampler="greedy")
    print(f"float32 ({float_bytes / 1e6:.2f} MB of weights): {reference!r}")

    causal_lm.quantize("int8")
    int8_bytes = weight_bytes(causal_lm)
    text = causal_lm.generate(PROMPT, max_length=MAX_LENGTH, sampler="greedy")
    print(f"int8 ({int8_bytes / 1e6:.2f} MB of weights): {text!r}")
    print(f"Weights: {float_bytes:,} -> {int8_bytes:,} bytes ({float_bytes / int8_bytes:.1f}x smaller)")

    causal_lm.save_to_preset(preset_dir)
    print(f"Saved {preset_dir}: {directory_bytes(preset_dir):,} bytes on disk")
    restored = MistralCausalLM.from_preset(preset_dir)
    same_logits = np.array_equal(logits(restored), logits(causal_lm))
    print(f"Reloaded preset gives the same logits: {same_logits}")
    restored_text = restored.generate(PROMPT, max_length=MAX_LENGTH, sampler="greedy")
    print(f"Reloaded preset generates the same text: {restored_text == text}")


if __name__ == "__main__":
    main()
