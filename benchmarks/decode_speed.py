#!/usr/bin/env python
"""Greedy decoding speed: mistral_hub vs keras_hub vs transformers.

Builds one random-weight Mistral model, copies the exact same weights into
`mistral_hub.MistralCausalLM`, `keras_hub.models.MistralCausalLM` (same Keras
backend, same process) and transformers' `MistralForCausalLM` (torch, default
attention implementation), then times `generate()` with greedy decoding for
every (batch size, prompt length) workload.

Each implementation is called once to warm up and then timed on the next
`--repeats` calls, round-robin across implementations so that background
load hits them alike; the best time is kept. Compiled paths (Keras on JAX
and TensorFlow) warm up on the full workload, which traces and compiles;
eager paths (transformers, Keras on torch) have nothing to compile and warm
up on a short call (`--eager-warmup-tokens` new tokens). Reported per run:

* `first_s`: wall time of the first call (compile + run; compiled paths),
* `compile_s`: `first_s - steady_s`, an estimate of the one-off compile cost,
* `steady_s`: best wall time of the timed calls (prefill + all decode steps),
* `tok_s`: `new_tokens * batch / steady_s`,
* `ms_step`: `steady_s / new_tokens` (one decode step for the whole batch,
  prefill amortized in),
* `cpu_s`: least process CPU time of the timed calls; with `--threads 1`
  it is much less sensitive to other load on the machine than wall time,
  and the table also gives the mistral_hub ratios by CPU time,
* `peak_mb`: peak growth of the process RSS during the timed call, sampled
  every few milliseconds from /proc (approximate, Linux only),
* `match_*`: the number of leading generated tokens on which two
  implementations agree (minimum over rows). Random tiny models can have
  near-ties in their logits, so a divergence late in the sequence is not a
  failure.

The Keras backend is chosen with the `KERAS_BACKEND` environment variable.
`--threads 1` caps every library at one intra-op thread; on a small or
shared machine this gives much steadier numbers (see benchmarks/README.md).

Examples:

    KERAS_BACKEND=jax python benchmarks/decode_speed.py --tiny
    KERAS_BACKEND=torch python benchmarks/decode_speed.py \
        --batch-sizes 1 4 --prompt-lengths 64 512 --new-tokens 256 \
        --json /tmp/torch.jsonl
    python benchmarks/decode_speed.py --summarize /tmp/*.jsonl
"""

import argparse
import json
import os
import platform
import sys
import threading
import time

# Run from a checkout without installing: put the repository root first.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

IMPLEMENTATIONS = ("mistral_hub", "keras_hub", "transformers")

DEFAULT_CONFIG = dict(
    vocabulary_size=32000,
    hidden_dim=512,
    intermediate_dim=1408,
    num_layers=8,
    num_query_heads=8,
    num_key_value_heads=2,
    sliding_window=256,
)
TINY_CONFIG = dict(
    vocabulary_size=1000,
    hidden_dim=64,
    intermediate_dim=128,
    num_layers=2,
    num_query_heads=4,
    num_key_value_heads=2,
    sliding_window=32,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="Quick smoke run: a tiny model, batch 1 and 2, prompts 8 and 40, "
        "16 new tokens (explicit flags still override).",
    )
    parser.add_argument("--vocabulary-size", type=int)
    parser.add_argument("--hidden-dim", type=int)
    parser.add_argument("--intermediate-dim", type=int)
    parser.add_argument("--num-layers", type=int)
    parser.add_argument("--num-query-heads", type=int)
    parser.add_argument("--num-key-value-heads", type=int)
    parser.add_argument(
        "--sliding-window", type=int, help="0 disables the sliding window."
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--prompt-lengths", type=int, nargs="+")
    parser.add_argument("--new-tokens", type=int, help="Tokens generated per row.")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="Timed calls per implementation after the warm-up call, run "
        "round-robin; the best is reported.",
    )
    parser.add_argument(
        "--implementations",
        nargs="+",
        choices=IMPLEMENTATIONS,
        default=list(IMPLEMENTATIONS),
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="Intra-op threads for every library (torch, XLA/JAX, TensorFlow, "
        "OpenMP/MKL). 0 keeps each library's default. On a shared or small "
        "machine, 1 gives far more stable numbers: a 2-thread torch op whose "
        "second thread is descheduled waits a whole scheduler tick.",
    )
    parser.add_argument(
        "--eager-warmup-tokens",
        type=int,
        default=8,
        help="New tokens in the warm-up call of implementations that do not "
        "compile per shape (transformers, and Keras on torch); the compiled "
        "ones (JAX, TensorFlow) warm up on the full workload.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-memory", action="store_true", help="Skip the RSS sampling thread."
    )
    parser.add_argument(
        "--json", metavar="PATH", help="Append one JSON record per workload."
    )
    parser.add_argument(
        "--summarize",
        nargs="+",
        metavar="JSONL",
        help="Only print a markdown table of the records in these files.",
    )
    args = parser.parse_args(argv)

    base = TINY_CONFIG if args.tiny else DEFAULT_CONFIG
    for key, default in base.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.sliding_window == 0:
        args.sliding_window = None
    if args.batch_sizes is None:
        args.batch_sizes = [1, 2] if args.tiny else [1, 4]
    if args.prompt_lengths is None:
        args.prompt_lengths = [8, 40] if args.tiny else [64, 512]
    if args.new_tokens is None:
        args.new_tokens = 16 if args.tiny else 256
    return args


# --- memory -----------------------------------------------------------------


def _rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class PeakRSS:
    """Samples the process RSS in a thread; `growth_mb` is peak - start."""

    def __init__(self, enabled=True, interval=0.005):
        self.enabled = enabled and _rss_bytes() > 0
        self.interval = interval
        self.start = self.peak = 0

    def __enter__(self):
        self.start = self.peak = _rss_bytes()
        if self.enabled:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def growth_mb(self):
        if not self.enabled:
            return None
        return (self.peak - self.start) / 2**20


def limit_threads(threads):
    """Caps intra-op threads; must run before the libraries are imported."""
    if threads <= 0:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        flags += " --xla_cpu_multi_thread_eigen=false"
    if "intra_op_parallelism_threads" not in flags:
        flags += f" intra_op_parallelism_threads={threads}"
    os.environ["XLA_FLAGS"] = flags.strip()


def _load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# --- models -----------------------------------------------------------------


def backbone_kwargs(args):
    return dict(
        vocabulary_size=args.vocabulary_size,
        num_layers=args.num_layers,
        num_query_heads=args.num_query_heads,
        hidden_dim=args.hidden_dim,
        intermediate_dim=args.intermediate_dim,
        num_key_value_heads=args.num_key_value_heads,
        sliding_window=args.sliding_window,
        layer_norm_epsilon=1e-6,
        rope_max_wavelength=10000,
    )


def build_models(args):
    """Returns `{name: generate_fn(token_ids, padding_mask) -> np tokens}`."""
    import keras
    import numpy as np

    import mistral_hub

    keras.utils.set_random_seed(args.seed)
    backbone = mistral_hub.MistralBackbone(**backbone_kwargs(args))
    # The default initializers leave the RMSNorm scales at exactly one and
    # give very flat logits; perturb the norms so that a misplaced norm
    # weight would show up as a token mismatch.
    rng = np.random.RandomState(args.seed)
    for variable in backbone.weights:
        if variable.path.endswith("scale"):
            variable.assign(
                1.0 + 0.1 * rng.standard_normal(variable.shape).astype("float32")
            )

    fns = {}
    if "mistral_hub" in args.implementations:
        model = mistral_hub.MistralCausalLM(backbone, preprocessor=None)
        model.compile(sampler="greedy")

        def mistral_hub_generate(token_ids, padding_mask, model=model):
            out = model.generate(
                {"token_ids": token_ids, "padding_mask": padding_mask},
                stop_token_ids=None,
            )
            return np.asarray(out["token_ids"])

        fns["mistral_hub"] = mistral_hub_generate

    if "keras_hub" in args.implementations:
        import keras_hub

        kh_backbone = keras_hub.models.MistralBackbone(**backbone_kwargs(args))
        kh_backbone.set_weights(backbone.get_weights())
        kh_model = keras_hub.models.MistralCausalLM(
            backbone=kh_backbone, preprocessor=None
        )
        kh_model.compile(sampler="greedy")

        def keras_hub_generate(token_ids, padding_mask, model=kh_model):
            out = model.generate(
                {"token_ids": token_ids, "padding_mask": padding_mask},
                stop_token_ids=None,
            )
            return np.asarray(keras.ops.convert_to_numpy(out["token_ids"]))

        fns["keras_hub"] = keras_hub_generate

    if "transformers" in args.implementations:
        import torch
        import transformers

        from mistral_hub.utils.transformers.convert_mistral import hf_weight_map

        transformers.logging.set_verbosity_error()
        config = transformers.MistralConfig(
            vocab_size=args.vocabulary_size,
            hidden_size=args.hidden_dim,
            intermediate_size=args.intermediate_dim,
            num_hidden_layers=args.num_layers,
            num_attention_heads=args.num_query_heads,
            num_key_value_heads=args.num_key_value_heads,
            head_dim=args.hidden_dim // args.num_query_heads,
            sliding_window=args.sliding_window,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            max_position_embeddings=max(
                4096, max(args.prompt_lengths) + args.new_tokens
            ),
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=None,
            pad_token_id=0,
        )
        hf_model = transformers.MistralForCausalLM(config).eval()
        state = {
            name: torch.from_numpy(
                np.ascontiguousarray(
                    to_hf(keras.ops.convert_to_numpy(variable.value))
                ).astype("float32")
            )
            for name, variable, _, to_hf in hf_weight_map(backbone)
        }
        missing, unexpected = hf_model.load_state_dict(state, strict=False)
        missing = [m for m in missing if "rotary" not in m]
        if missing or unexpected:
            raise RuntimeError(f"HF weights: missing={missing} unexpected={unexpected}")

        def transformers_generate(token_ids, padding_mask, model=hf_model):
            # Inputs are right padded to max_length; transformers takes the
            # prompt only (all rows have the same length here).
            prompt_length = int(padding_mask.sum(-1).min())
            new_tokens = token_ids.shape[1] - prompt_length
            with torch.inference_mode():
                out = model.generate(
                    input_ids=torch.from_numpy(
                        token_ids[:, :prompt_length].astype("int64")
                    ),
                    attention_mask=torch.ones(
                        (token_ids.shape[0], prompt_length), dtype=torch.long
                    ),
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    num_beams=1,
                    eos_token_id=None,
                    pad_token_id=0,
                )
            return out.numpy()

        fns["transformers"] = transformers_generate
    return fns


# --- benchmark ----------------------------------------------------------------


def matching_prefix(a, b, start):
    """Leading generated positions (from `start`) equal in every row."""
    import numpy as np

    a, b = np.asarray(a)[:, start:], np.asarray(b)[:, start:]
    if a.shape != b.shape:
        return -1
    equal = np.all(a == b, axis=0)
    return int(equal.size if equal.all() else np.argmin(equal))


def run_workload(fns, args, batch_size, prompt_length):
    import keras
    import numpy as np

    new_tokens = args.new_tokens
    max_length = prompt_length + new_tokens
    rng = np.random.RandomState(args.seed + 1000 * batch_size + prompt_length)
    token_ids = np.zeros((batch_size, max_length), "int32")
    token_ids[:, :prompt_length] = rng.randint(
        1, args.vocabulary_size, (batch_size, prompt_length)
    )
    padding_mask = np.zeros((batch_size, max_length), "int32")
    padding_mask[:, :prompt_length] = 1

    record = {
        "batch": batch_size,
        "prompt": prompt_length,
        "new_tokens": new_tokens,
        "load_before": _load_average(),
        "results": {},
    }
    # Warm up every implementation, then time them round-robin so that
    # background load (a shared machine) spreads over all of them alike.
    compiled = {
        name: name != "transformers" and keras.config.backend() != "torch"
        for name in fns
    }
    warmup_length = prompt_length + min(new_tokens, args.eager_warmup_tokens)
    first, times, cpu_times, peaks, outputs = {}, {}, {}, {}, {}
    for name, fn in fns.items():
        if compiled[name]:
            warmup = (token_ids, padding_mask)
        else:
            warmup = (token_ids[:, :warmup_length], padding_mask[:, :warmup_length])
        start = time.perf_counter()
        fn(*warmup)
        first[name] = time.perf_counter() - start if compiled[name] else None
        times[name], cpu_times[name], peaks[name] = [], [], []
    for _ in range(max(1, args.repeats)):
        for name, fn in fns.items():
            with PeakRSS(enabled=not args.no_memory) as memory:
                start, cpu_start = time.perf_counter(), time.process_time()
                tokens = fn(token_ids, padding_mask)
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
            peaks[name].append(memory.growth_mb)
            outputs[name] = tokens
    for name in fns:
        tokens = outputs[name]
        if tokens.shape != (batch_size, max_length):
            raise RuntimeError(
                f"{name} returned shape {tokens.shape}, expected "
                f"{(batch_size, max_length)}"
            )
        if not np.array_equal(tokens[:, :prompt_length], token_ids[:, :prompt_length]):
            raise RuntimeError(f"{name} did not keep the prompt")
        steady = min(times[name])
        peak = None if peaks[name][0] is None else max(peaks[name])
        result = record["results"][name] = {
            "first_s": first[name],
            "steady_s": steady,
            "all_s": times[name],
            "cpu_s": min(cpu_times[name]),
            "all_cpu_s": cpu_times[name],
            "compile_s": None if first[name] is None else max(0.0, first[name] - steady),
            "tok_s": new_tokens * batch_size / steady,
            "ms_step": 1000 * steady / new_tokens,
            "peak_mb": peak,
        }
        print(
            f"  {name:<12} first "
            + ("      -" if first[name] is None else f"{first[name]:6.2f}s")
            + f"  best {steady:7.3f}s "
            f"(of {' '.join(f'{t:.3f}' for t in times[name])})  "
            f"{result['tok_s']:8.1f} tok/s  {result['ms_step']:7.2f} ms/step  "
            f"cpu {result['cpu_s']:.3f}s"
            + ("" if peak is None else f"  peak RSS +{peak:.0f} MB"),
            flush=True,
        )
    record["load_after"] = _load_average()
    record["match"] = {}
    if "mistral_hub" in outputs:
        for other in ("keras_hub", "transformers"):
            if other in outputs:
                record["match"][other] = matching_prefix(
                    outputs["mistral_hub"], outputs[other], prompt_length
                )
    if "keras_hub" in outputs and "transformers" in outputs:
        record["match"]["keras_hub~transformers"] = matching_prefix(
            outputs["keras_hub"], outputs["transformers"], prompt_length
        )
    results = record["results"]
    if "mistral_hub" in results:
        for other in ("keras_hub", "transformers"):
            if other in results:
                record[f"speedup_vs_{other}"] = (
                    results["mistral_hub"]["tok_s"] / results[other]["tok_s"]
                )
                record[f"cpu_speedup_vs_{other}"] = (
                    results[other]["cpu_s"] / results["mistral_hub"]["cpu_s"]
                )
    print(
        "  greedy tokens matching (of {}): {}".format(
            new_tokens,
            ", ".join(f"mistral_hub~{k}={v}" if "~" not in k else f"{k}={v}"
                      for k, v in record["match"].items()),
        )
        + "".join(
            f"\n  mistral_hub / {o} tok/s: {record['speedup_vs_' + o]:.2f}x"
            for o in ("keras_hub", "transformers")
            if f"speedup_vs_{o}" in record
        ),
        flush=True,
    )
    return record


def main(argv=None):
    args = parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0

    limit_threads(args.threads)
    import keras
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)
    backend = keras.config.backend()
    print(
        f"backend={backend} keras={keras.__version__} torch={torch.__version__} "
        f"torch_threads={torch.get_num_threads()} cpus={os.cpu_count()} "
        f"python={platform.python_version()} load={_load_average()}"
        + (f" XLA_FLAGS={os.environ['XLA_FLAGS']!r}" if args.threads else ""),
        flush=True,
    )
    print("config: " + json.dumps(backbone_kwargs(args)), flush=True)
    start = time.perf_counter()
    fns = build_models(args)
    print(f"built models in {time.perf_counter() - start:.1f}s", flush=True)

    records = []
    for prompt_length in args.prompt_lengths:
        for batch_size in args.batch_sizes:
            print(
                f"\n[{backend}] batch={batch_size} prompt={prompt_length} "
                f"new_tokens={args.new_tokens}",
                flush=True,
            )
            record = run_workload(fns, args, batch_size, prompt_length)
            record["backend"] = backend
            record["threads"] = args.threads or None
            record["config"] = backbone_kwargs(args)
            records.append(record)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(record) + "\n")
    print()
    print(summarize_records(records))
    return 0


# --- reporting ----------------------------------------------------------------


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def summarize_records(records):
    """A markdown table: one row per (backend, batch, prompt) record."""
    lines = [
        "| backend | batch | prompt | new | mistral_hub tok/s | keras_hub tok/s "
        "| transformers tok/s | mh/kh | mh/hf | CPU-time mh/kh / mh/hf "
        "| ms/step mh / kh / hf "
        "| compile s mh / kh | peak RSS MB mh / kh / hf | match kh / hf "
        "| load |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|---|---|---|---|--:|",
    ]
    for r in records:
        res = r["results"]

        def get(name, key, spec):
            return _fmt(res.get(name, {}).get(key), spec)

        def trio(key, spec, names=IMPLEMENTATIONS):
            return " / ".join(get(n, key, spec) for n in names)

        match = r.get("match", {})
        lines.append(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} "
            "| {} | {} |".format(
                r.get("backend", "?"),
                r["batch"],
                r["prompt"],
                r["new_tokens"],
                get("mistral_hub", "tok_s", ".1f"),
                get("keras_hub", "tok_s", ".1f"),
                get("transformers", "tok_s", ".1f"),
                _fmt(r.get("speedup_vs_keras_hub"), ".2f"),
                _fmt(r.get("speedup_vs_transformers"), ".2f"),
                " / ".join(
                    _fmt(r.get(f"cpu_speedup_vs_{o}"), ".2f")
                    for o in ("keras_hub", "transformers")
                ),
                trio("ms_step", ".1f"),
                trio("compile_s", ".1f", IMPLEMENTATIONS[:2]),
                trio("peak_mb", ".0f"),
                " / ".join(
                    f"{match[k]}/{r['new_tokens']}" if k in match else "-"
                    for k in ("keras_hub", "transformers")
                ),
                _fmt(r.get("load_before"), ".1f"),
            )
        )
    return "\n".join(lines)


def summarize(paths):
    records = []
    for path in paths:
        with open(path) as f:
            records.extend(json.loads(line) for line in f if line.strip())
    if not records:
        return "(no records)"
    config = records[0].get("config") or {}
    header = "Model: " + ", ".join(f"{k}={v}" for k, v in config.items())
    threads = records[0].get("threads")
    header += f"; threads per library: {threads or 'library default'}"
    header += (
        ".\nmh/kh and mh/hf are tokens/s ratios (>1: mistral_hub is faster); "
        "tok/s = new tokens x batch / best wall time of generate() "
        "(prefill included); CPU-time ratios use the process CPU time of "
        "the same calls instead (steadier on a loaded machine when "
        "--threads 1); match = leading greedy tokens equal to "
        "mistral_hub's; load = 1-minute load average when the workload "
        "started.\n\n"
    )
    return header + summarize_records(records)


if __name__ == "__main__":
    sys.exit(main())
