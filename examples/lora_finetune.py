"""LoRA fine-tuning of `mistral_hub_demo` on a few sentences, offline.

1. Load the demo preset (1.3M parameters, shipped in the package) in
   float32 and give it a short text set it has never seen.
2. `backbone.enable_lora(rank=8, target_layer_names=...)` freezes every
   weight and adds rank-8 adapters to the query, value and attention
   output projections and the MLP output: 51K trainable parameters, under
   4% of the model. `fit()` trains only those, and the model learns to
   recite the new text.
3. `save_lora_weights()` writes just the adapters (keras_hub's `.lora.h5`
   format, 250 KB); `load_lora_weights()` puts them on a fresh
   copy of the preset, which then gives the same logits.
4. `merge_lora()` folds the adapters into the weights, and
   `save_to_preset()` writes a plain preset that `from_preset` (and
   keras_hub) load like any other.

It runs in well under a minute on 2 CPU cores:

    KERAS_BACKEND=jax python examples/lora_finetune.py

Pass `--output DIR` to keep the adapter file and the merged preset.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mistral_hub import MistralCausalLM  # noqa: E402

PRESET = "mistral_hub_demo"
# The demo model learnt English from the Python docs; it has never read
# about the wind it is named after.
TEXTS = [
    "The mistral is a strong, cold wind that blows from the north into the Gulf of Lion.",
    "The mistral blows down the Rhone valley, where the mountains squeeze it and speed it up.",
    "The mistral clears the sky, so the days when it blows are sunny and dry.",
    "The mistral can blow for days, and it is strongest in winter and spring.",
    "The mistral dries the vineyards of Provence and keeps the vines healthy.",
    "The mistral pushes sailors out to sea, so they watch for it before leaving port.",
    "The mistral bends the cypress trees of Provence toward the south.",
    "The mistral often reaches ninety kilometres an hour near the coast.",
]
PROMPT = "The mistral is"
SEQUENCE_LENGTH = 32
RANK = 8
# keras_hub's default targets are the query and value projections; the
# attention and MLP outputs let so small a model take in new text.
TARGETS = ["query", "value", "attention_output", "feedforward_output_dense"]
SEED = 7


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", help="directory for the adapters and the merged preset")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    output = args.output or tempfile.mkdtemp(prefix="lora_finetune_")
    os.makedirs(output, exist_ok=True)
    keras.utils.set_random_seed(SEED)
    start = time.perf_counter()

    # float32: the demo preset is stored in bfloat16, but float32 trains
    # faster and more precisely on CPUs.
    causal_lm = MistralCausalLM.from_preset(PRESET, dtype="float32")
    causal_lm.preprocessor.sequence_length = SEQUENCE_LENGTH
    print("Before:", repr(causal_lm.generate(PROMPT, max_new_tokens=20, sampler="greedy")))

    backbone = causal_lm.backbone
    backbone.enable_lora(rank=RANK, target_layer_names=TARGETS)
    trainable = sum(int(np.prod(w.shape)) for w in backbone.trainable_weights)
    print(f"LoRA rank {RANK}: {trainable:,} trainable of {backbone.count_params():,} parameters")
    causal_lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = causal_lm.fit(TEXTS, batch_size=4, epochs=args.epochs, verbose=0)
    losses = history.history["loss"]
    print(f"Training loss: {losses[0]:.3f} -> {losses[-1]:.3f} in {args.epochs} epochs")
    after = causal_lm.generate(PROMPT, max_new_tokens=20, sampler="greedy")
    print("After:", repr(after))

    # Only the adapters go to disk; the base model stays the shared preset.
    adapters = os.path.join(output, "mistral_wind.lora.h5")
    backbone.save_lora_weights(adapters)
    print(f"Saved the adapters to {adapters} ({os.path.getsize(adapters) / 1024:.0f} KB)")
    fresh = MistralCausalLM.from_preset(PRESET, dtype="float32")
    fresh.backbone.load_lora_weights(adapters)
    x, _, _ = causal_lm.preprocessor(TEXTS)
    same = np.allclose(
        keras.ops.convert_to_numpy(fresh(x)), keras.ops.convert_to_numpy(causal_lm(x)), atol=1e-5
    )
    print("Reloaded adapters give the same logits:", same)

    # Merged, the model needs no LoRA code at all to serve.
    fresh.backbone.merge_lora()
    merged_preset = os.path.join(output, "merged_preset")
    fresh.save_to_preset(merged_preset)
    merged = MistralCausalLM.from_preset(merged_preset)
    merged_text = merged.generate(PROMPT, max_new_tokens=20, sampler="greedy")
    print(f"Merged preset in {merged_preset} generates the same text:", merged_text == after)
    print(f"Done in {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
