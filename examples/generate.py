"""Generates text offline with `mistral_hub_demo`, the preset in the package.

The demo model is tiny (1.3M parameters, trained in minutes on the Python
reference documentation by `examples/train_demo_preset.py`), so its text
only looks like English and Python docs; the point is to see the whole
pipeline (preset loading, tokenizer, KV-cached compiled generation) work
in seconds on any backend, without a download:

    KERAS_BACKEND=jax python examples/generate.py
    KERAS_BACKEND=torch python examples/generate.py
    KERAS_BACKEND=tensorflow python examples/generate.py

Swap the preset for e.g. `"mistral_7b_en"` to run a real model.
"""

import os
import time

import keras

import mistral_hub
from mistral_hub import MistralCausalLM

PROMPTS = ["The Zen of Python", "A class definition", "Exceptions are"]
MAX_NEW_TOKENS = 48
# Greedy decoding gives this small model its most fluent text; "top_k"
# samples varied completions, repeatable through the seed.
SAMPLER = "greedy"
SEED = 42


def demo_preset():
    """The built-in name if registered, else the packaged directory."""
    if "mistral_hub_demo" in MistralCausalLM.presets:
        return "mistral_hub_demo"
    package_dir = os.path.dirname(os.path.abspath(mistral_hub.__file__))
    return os.path.join(package_dir, "presets", "mistral_hub_demo")


def main():
    print(f"Keras {keras.version()}, backend: {keras.config.backend()}")
    causal_lm = MistralCausalLM.from_preset(demo_preset())

    def generate():
        # All prompts in one batch: one compiled function, one decode loop.
        return causal_lm.generate(
            PROMPTS, max_new_tokens=MAX_NEW_TOKENS, sampler=SAMPLER, seed=SEED
        )

    start = time.perf_counter()
    outputs = generate()
    first_call = time.perf_counter() - start
    for prompt, output in zip(PROMPTS, outputs):
        print(f"\n>>> {prompt!r}\n{output}")

    # The first call also traced and compiled the generation loop; time a
    # second, identical one for the steady-state speed.
    start = time.perf_counter()
    generate()
    second_call = time.perf_counter() - start
    tokenizer = causal_lm.preprocessor.tokenizer
    prompt_tokens = sum(map(len, tokenizer(PROMPTS)))
    # Re-tokenizing the outputs counts the new tokens (an end token aside).
    new_tokens = sum(map(len, tokenizer(outputs))) - prompt_tokens
    print(
        f"\nFirst call (with compilation): {first_call:.1f} s. Second call: "
        f"{second_call:.2f} s for {prompt_tokens} prompt + {new_tokens} new "
        f"tokens, {(prompt_tokens + new_tokens) / second_call:.0f} tokens/s."
    )


if __name__ == "__main__":
    main()
