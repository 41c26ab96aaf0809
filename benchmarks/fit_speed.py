#!/usr/bin/env python
"""`fit()` tokens/s and peak memory: mistral_hub vs keras_hub's MistralCausalLM.

Both libraries train the `small` model of `generate_speed.py` (vocab 32000,
hidden 512, 8 layers, 8 query / 2 KV heads, head_dim 64, MLP 1536) from
random float32 weights with Adam and a from-logits sparse cross-entropy, no
metrics, on the same preprocessed token ids (tokenization is not measured),
each run in its own fresh process:

* `tok/s`: batch x sequence tokens / median wall time of a warm step (an
  epoch of `--steps` steps, timed from epoch start to epoch end, where the
  logs are read back so the device work is done; the first epoch traces
  and compiles and is left out);
* `CPU s/step`: the process's CPU time (all threads) per warm step, taken
  the same way. On a machine shared with other jobs the wall time of a
  step depends on how often the backend's worker threads get a core (a
  JAX step waits at every parallel op for its slowest thread), so the
  wall-clock ratio between two runs moves by 2-3x from run to run; the
  CPU time is the work done and moves by a few percent;
* `peak RSS`: the process's peak resident memory, model, optimizer state and
  compiled functions included;
* each configuration once without and once with LoRA (`enable_lora(4)` on
  the backbone, so only the adapters train).

    python benchmarks/fit_speed.py                       # all three backends
    python benchmarks/fit_speed.py --backends jax --batch-size 4 --sequence-length 64
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = dict(
    vocabulary_size=32000, hidden_dim=512, intermediate_dim=1536, num_layers=8,
    num_query_heads=8, num_key_value_heads=2, head_dim=64, sliding_window=4096,
)
IMPLEMENTATIONS = ("mistral_hub", "keras_hub")


def worker(spec):
    """Trains one model in this process; prints one JSON line."""
    import keras
    import numpy as np

    if spec["implementation"] == "keras_hub":
        import keras_hub as library
    else:
        import mistral_hub as library
    keras.utils.set_random_seed(0)
    backbone = library.models.MistralBackbone(**SMALL)
    causal_lm = library.models.MistralCausalLM(backbone=backbone, preprocessor=None)
    if spec["lora"]:
        backbone.enable_lora(4)
    causal_lm.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=None,
    )
    batch, length, steps = spec["batch_size"], spec["sequence_length"], spec["steps"]
    rng = np.random.default_rng(1)
    ids = rng.integers(3, SMALL["vocabulary_size"], (batch * steps, length + 1)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((batch * steps, length), "int32")}
    y = ids[:, 1:]

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []
            self.cpu_times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()
            self.cpu_start = time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            float(logs["loss"])  # The loss is computed: the steps are done.
            self.times.append(time.perf_counter() - self.start)
            self.cpu_times.append(time.process_time() - self.cpu_start)

    timer = Timer()
    history = causal_lm.fit(
        x, y, batch_size=batch, epochs=spec["epochs"], shuffle=False, verbose=0,
        callbacks=[timer],
    )
    step_s = statistics.median(timer.times[1:]) / steps
    cpu_step_s = statistics.median(timer.cpu_times[1:]) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(
        spec, step_s=step_s, tok_s=batch * length / step_s, cpu_step_s=cpu_step_s,
        first_epoch_s=timer.times[0],
        peak_rss_mb=peak, losses=[float(v) for v in history.history["loss"]],
        trainable=int(sum(np.prod(v.shape) for v in causal_lm.trainable_weights)),
    )))


def run(spec):
    env = dict(os.environ, KERAS_BACKEND=spec["backend"], TF_CPP_MIN_LOG_LEVEL="3")
    code = (
        f"import sys, json; sys.path.insert(0, {_REPO_ROOT!r}); "
        "from benchmarks.fit_speed import worker; "
        f"worker(json.loads({json.dumps(spec)!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{spec} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="the first one is not timed")
    parser.add_argument("--no-lora", action="store_true", help="skip the LoRA runs")
    args = parser.parse_args()

    results = []
    for backend in args.backends:
        for lora in (False,) if args.no_lora else (False, True):
            for implementation in IMPLEMENTATIONS:
                spec = dict(
                    backend=backend, implementation=implementation, lora=lora,
                    batch_size=args.batch_size, sequence_length=args.sequence_length,
                    steps=args.steps, epochs=args.epochs,
                )
                result = run(spec)
                results.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)

    print(
        f"\n`small`, float32, Adam, batch {args.batch_size} x {args.sequence_length}, "
        f"median of {args.epochs - 1} warm epochs of {args.steps} steps; measured on a "
        "shared, loaded machine.\n"
    )
    print("| backend | LoRA | mistral_hub tok/s | keras_hub tok/s | mh/kh "
          "| mistral_hub CPU s/step | keras_hub CPU s/step | kh/mh CPU "
          "| mistral_hub peak RSS | keras_hub peak RSS |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    by_key = {(r["backend"], r["lora"], r["implementation"]): r for r in results}
    for backend in args.backends:
        for lora in (False,) if args.no_lora else (False, True):
            mh, kh = by_key[backend, lora, "mistral_hub"], by_key[backend, lora, "keras_hub"]
            print(
                f"| {backend} | {'rank 4' if lora else 'no'} | {mh['tok_s']:.0f} | {kh['tok_s']:.0f} "
                f"| {mh['tok_s'] / kh['tok_s']:.2f} | {mh['cpu_step_s']:.3f} "
                f"| {kh['cpu_step_s']:.3f} | {kh['cpu_step_s'] / mh['cpu_step_s']:.2f} "
                f"| {mh['peak_rss_mb']:.0f} MB "
                f"| {kh['peak_rss_mb']:.0f} MB |"
            )


if __name__ == "__main__":
    main()
