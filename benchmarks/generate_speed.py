#!/usr/bin/env python
"""Generation speed and memory: mistral_hub vs keras_hub vs transformers.

One command runs every implementation on every Keras backend, each
measurement in its own fresh process, interleaved (for each round and
workload: mistral_hub and keras_hub on every backend, then transformers), and
prints one markdown table of medians:

* `tok/s`: new tokens x batch / median wall time of a warm `generate()` call
  (greedy, no stop token, prefill included),
* `first s`: wall time of the first call in a fresh process (trace +
  compile + run on JAX and TensorFlow, and on torch for
  `mistral_hub_compiled`: `compile(jit_compile=True)`, which
  `torch.compile`s the decode step; the first eager run otherwise),
* `prefill tok/s`: prompt tokens x batch / median wall time of a warm call
  that generates one token,
* `peak RSS`: the process's peak resident memory (model included),
* ratios of mistral_hub to each peer (> 1: mistral_hub is faster),
* `match`: leading greedy tokens equal to mistral_hub's (minimum over rows),
* for batch 1, the decode roofline and mistral_hub's share of it, for
  `generate()` as a whole and for decoding alone (generate minus the
  one-token prefill call): a float32 matrix-vector product is timed in its
  own process to measure the machine's memory bandwidth, and batch-1
  decoding cannot be faster than reading every float32 weight (plus the
  KV cache) once per token.

All implementations load the same random weights (saved once per model
config under `--cache-dir`). Library default threads unless `--threads N`.

    python benchmarks/generate_speed.py --quick          # a few minutes
    python benchmarks/generate_speed.py                  # the full table
    python benchmarks/generate_speed.py --backends jax --workloads medium_b1 \\
        --implementations mistral_hub mistral_hub_int8
    python benchmarks/generate_speed.py --summarize results.json
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {
    "small": dict(
        vocabulary_size=32000, hidden_dim=512, intermediate_dim=1536, num_layers=8,
        num_query_heads=8, num_key_value_heads=2, head_dim=64, sliding_window=4096,
    ),
    "medium": dict(
        vocabulary_size=32000, hidden_dim=1024, intermediate_dim=3584, num_layers=16,
        num_query_heads=16, num_key_value_heads=4, head_dim=64, sliding_window=4096,
    ),
}
CONFIGS["small_w256"] = dict(CONFIGS["small"], sliding_window=256)
CONFIGS["small_w1024"] = dict(CONFIGS["small"], sliding_window=1024)

# name: (config, prompt lengths (one per row), new tokens per row)
WORKLOADS = {
    "small_b1": ("small", [128], 128),
    "small_b8": ("small", [128] * 8, 128),
    "medium_b1": ("medium", [128], 64),
    "medium_b8": ("medium", [128] * 8, 64),
    "long": ("small_w256", [128], 1024),
    "long_prompt": ("small_w1024", [4096], 16),
    "mixed": ("small", [16 + 144 * i for i in range(8)], 64),
    "mixed_mean": ("small", [520] * 8, 64),
}
DEFAULT_WORKLOADS = ["small_b1", "small_b8", "medium_b1", "medium_b8", "long"]
QUICK_WORKLOADS = ["small_b1", "small_b8"]
KERAS_IMPLEMENTATIONS = ("mistral_hub", "keras_hub", "mistral_hub_int8", "mistral_hub_compiled")
# `compile(jit_compile=True)`: torch.compile of the decode step, torch only
# (JAX and TensorFlow compile the whole loop by default already).
TORCH_ONLY_IMPLEMENTATIONS = ("mistral_hub_compiled",)
IMPLEMENTATIONS = KERAS_IMPLEMENTATIONS + ("transformers",)
PEERS = ("keras_hub", "transformers")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="small_b1 and small_b8 with 32 new tokens, one round, "
                        "two timed calls (explicit flags still override).")
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS))
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS,
                        default=["mistral_hub", "keras_hub", "transformers"])
    parser.add_argument("--new-tokens", type=int,
                        help="Override every workload's new tokens per row.")
    parser.add_argument("--rounds", type=int, help="Processes per measurement (default 3).")
    parser.add_argument("--calls", type=int, help="Timed warm calls per process (default 3).")
    parser.add_argument("--no-prefill", action="store_true", help="Skip the prefill timing.")
    parser.add_argument("--threads", type=int, default=0,
                        help="Intra-op threads for every library; 0 (default) keeps "
                        "each library's default.")
    parser.add_argument("--cache-dir", default=os.path.join(
        tempfile.gettempdir(), "mistral_hub_benchmark_weights"))
    parser.add_argument("--json", metavar="PATH", help="Also write all records here.")
    parser.add_argument("--summarize", metavar="JSON", help="Only print the table of a --json file.")
    parser.add_argument("--timeout", type=float, default=1800, help="Seconds per process.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workloads is None:
        args.workloads = QUICK_WORKLOADS if args.quick else DEFAULT_WORKLOADS
    if args.new_tokens is None and args.quick:
        args.new_tokens = 32
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.calls is None:
        args.calls = 2 if args.quick else 3
    return args


# --- weights --------------------------------------------------------------------


def _random_array(path, shape, seed=0):
    import numpy as np

    rng = np.random.default_rng([seed, zlib.crc32(path.encode())])
    if path.endswith("scale"):
        # Norms away from exactly one, so a misplaced norm weight would show.
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype("float32")
    return (0.02 * rng.standard_normal(shape)).astype("float32")


def prepare_weights(config_name, cache_dir):
    """Saves one random model as Keras arrays (by path) and a transformers file."""
    directory = os.path.join(cache_dir, config_name)
    done = os.path.join(directory, "done")
    if os.path.exists(done):
        return directory
    os.makedirs(directory, exist_ok=True)
    code = (
        "import sys; sys.path.insert(0, {root!r}); "
        "from benchmarks.generate_speed import _write_weights; "
        "_write_weights({config!r}, {directory!r})"
    ).format(root=_REPO_ROOT, config=config_name, directory=directory)
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    open(done, "w").close()
    return directory


def _write_weights(config_name, directory):
    import numpy as np
    import safetensors.torch
    import torch

    import mistral_hub
    from mistral_hub.models.mistral.mistral_checkpoint_conversion import hf_weight_map

    backbone = mistral_hub.MistralBackbone(**CONFIGS[config_name])
    arrays = {}
    for variable in backbone.weights:
        arrays[variable.path] = _random_array(variable.path, tuple(variable.shape))
        variable.assign(arrays[variable.path])
    np.savez(os.path.join(directory, "keras.npz"), **arrays)
    state = {
        name: torch.from_numpy(np.ascontiguousarray(to_hf(arrays[variable.path])))
        for name, variable, _, to_hf in hf_weight_map(backbone)
    }
    safetensors.torch.save_file(state, os.path.join(directory, "model.safetensors"))


# --- worker ---------------------------------------------------------------------


def limit_threads(threads):
    """Caps intra-op threads; must run before the libraries are imported."""
    if threads <= 0:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1:
        flags += " --xla_cpu_multi_thread_eigen=false"
    flags += f" intra_op_parallelism_threads={threads}"
    os.environ["XLA_FLAGS"] = flags.strip()


def _inputs(prompt_lengths, new_tokens, vocabulary_size, seed=1):
    import numpy as np

    rng = np.random.RandomState(seed)
    total = max(prompt_lengths) + new_tokens
    token_ids = np.zeros((len(prompt_lengths), total), "int32")
    padding_mask = np.zeros((len(prompt_lengths), total), bool)
    for row, length in enumerate(prompt_lengths):
        token_ids[row, :length] = rng.randint(3, vocabulary_size, length)
        padding_mask[row, :length] = True
    return token_ids, padding_mask


def _keras_generator(spec, directory):
    import keras
    import numpy as np

    if spec["implementation"] == "keras_hub":
        import keras_hub as library
    else:
        import mistral_hub as library
    config = CONFIGS[spec["config"]]
    backbone = library.models.MistralBackbone(**config)
    with np.load(os.path.join(directory, "keras.npz")) as arrays:
        for variable in backbone.weights:
            variable.assign(arrays[variable.path])
    model = library.models.MistralCausalLM(backbone=backbone, preprocessor=None)
    model.compile(
        sampler="greedy", jit_compile=spec["implementation"] == "mistral_hub_compiled"
    )
    if spec["implementation"] == "mistral_hub_int8":
        model.quantize("int8")

    def generate(token_ids, padding_mask, new_tokens):
        lengths = padding_mask.sum(-1)
        total = int(lengths.max()) + new_tokens
        kwargs = {}
        if spec["implementation"] != "keras_hub":
            # Every row gets `new_tokens`, whatever its prompt length.
            kwargs["max_new_tokens"] = new_tokens
        output = model.generate(
            {"token_ids": token_ids[:, :total], "padding_mask": padding_mask[:, :total]},
            stop_token_ids=None, **kwargs,
        )
        ids = np.asarray(keras.ops.convert_to_numpy(output["token_ids"]))
        return [ids[row, length : length + new_tokens].tolist() for row, length in enumerate(lengths)]

    return generate


def _transformers_generator(spec, directory):
    import numpy as np
    import safetensors.torch
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    config = CONFIGS[spec["config"]]
    hf_config = transformers.MistralConfig(
        vocab_size=config["vocabulary_size"],
        hidden_size=config["hidden_dim"],
        intermediate_size=config["intermediate_dim"],
        num_hidden_layers=config["num_layers"],
        num_attention_heads=config["num_query_heads"],
        num_key_value_heads=config["num_key_value_heads"],
        head_dim=config["head_dim"],
        sliding_window=config["sliding_window"],
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=None,
        pad_token_id=0,
    )
    model = transformers.MistralForCausalLM(hf_config).eval()
    state = safetensors.torch.load_file(os.path.join(directory, "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [m for m in missing if "rotary" not in m] or unexpected:
        raise RuntimeError(f"weights: missing={missing} unexpected={unexpected}")
    del state

    def generate(token_ids, padding_mask, new_tokens):
        # transformers pads on the left.
        lengths = padding_mask.sum(-1)
        longest = int(lengths.max())
        ids = np.zeros((len(lengths), longest), "int64")
        mask = np.zeros((len(lengths), longest), "int64")
        for row, length in enumerate(lengths):
            ids[row, longest - length :] = token_ids[row, :length]
            mask[row, longest - length :] = 1
        with torch.inference_mode():
            output = model.generate(
                input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                num_beams=1, eos_token_id=None, pad_token_id=0,
            )
        return output[:, longest:].tolist()

    return generate


def run_worker(spec):
    limit_threads(spec["threads"])
    if spec["implementation"] == "transformers":
        import torch

        if spec["threads"] > 0:
            torch.set_num_threads(spec["threads"])
        generate = _transformers_generator(spec, spec["directory"])
    else:
        if spec["threads"] > 0 and spec["backend"] == "torch":
            import torch

            torch.set_num_threads(spec["threads"])
        generate = _keras_generator(spec, spec["directory"])
    token_ids, padding_mask = _inputs(
        spec["prompt_lengths"], spec["new_tokens"], CONFIGS[spec["config"]]["vocabulary_size"]
    )
    record = {}
    start = time.perf_counter()
    record["tokens"] = generate(token_ids, padding_mask, spec["new_tokens"])
    record["first_s"] = time.perf_counter() - start
    record["times"] = []
    for _ in range(spec["calls"]):
        start = time.perf_counter()
        generate(token_ids, padding_mask, spec["new_tokens"])
        record["times"].append(time.perf_counter() - start)
    record["prefill_times"] = []
    if spec["prefill"]:
        generate(token_ids, padding_mask, 1)
        for _ in range(max(1, spec["calls"] - 1)):
            start = time.perf_counter()
            generate(token_ids, padding_mask, 1)
            record["prefill_times"].append(time.perf_counter() - start)
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return record


def measure_bandwidth(threads):
    """GB/s of a float32 matrix-vector product over a 512 MB matrix (best of numpy, torch)."""
    limit_threads(threads)
    import numpy as np
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    rows, cols = 8192, 16384
    matrix = np.random.default_rng(0).standard_normal((rows, cols), dtype="float32")
    vector = np.ones(cols, "float32")
    results = {}
    for name, matvec in (
        ("numpy", lambda: matrix @ vector),
        ("torch", lambda m=torch.from_numpy(matrix), v=torch.from_numpy(vector): torch.mv(m, v)),
    ):
        matvec()
        times = []
        for _ in range(7):
            start = time.perf_counter()
            matvec()
            times.append(time.perf_counter() - start)
        results[name] = matrix.nbytes / statistics.median(times) / 1e9
    return {"gb_s": max(results.values()), **{f"{k}_gb_s": v for k, v in results.items()}}


def decode_bytes_per_token(config, context):
    """float32 bytes batch-1 decoding must read per token: weights and KV cache."""
    hidden, heads, kv_heads = config["hidden_dim"], config["num_query_heads"], config["num_key_value_heads"]
    head_dim = config["head_dim"]
    per_layer = (
        hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, k, v, output
        + 3 * hidden * config["intermediate_dim"]  # gate, up, down
        + 2 * hidden  # norms
    )
    window = min(context, config["sliding_window"] or context)
    kv_cache = 2 * kv_heads * head_dim * window
    weights = config["num_layers"] * (per_layer + kv_cache) + config["vocabulary_size"] * hidden + hidden
    return 4 * weights


# --- orchestration --------------------------------------------------------------


def _run_process(command_args, env_backend, timeout):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=_REPO_ROOT)
    if env_backend:
        env["KERAS_BACKEND"] = env_backend
    process = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *command_args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        tail = "\n".join((process.stderr or process.stdout).splitlines()[-15:])
        return {"error": tail}
    return json.loads(lines[-1])


def orchestrate(args):
    load = os.getloadavg()[0]
    print(f"load average {load:.2f}; cpus {os.cpu_count()}", file=sys.stderr)
    bandwidth = _run_process(["--worker", json.dumps({"bandwidth": True, "threads": args.threads})],
                             None, args.timeout)
    print(f"float32 matvec bandwidth: {bandwidth}", file=sys.stderr)
    directories = {}
    for name in args.workloads:
        config = WORKLOADS[name][0]
        if config not in directories:
            directories[config] = prepare_weights(config, args.cache_dir)
    keras_impls = [i for i in args.implementations if i in KERAS_IMPLEMENTATIONS]
    records = {}
    for round_index in range(args.rounds):
        for name in args.workloads:
            config, prompt_lengths, new_tokens = WORKLOADS[name]
            new_tokens = args.new_tokens or new_tokens
            runs = [
                (b, i) for b in args.backends for i in keras_impls
                if b == "torch" or i not in TORCH_ONLY_IMPLEMENTATIONS
            ]
            if "transformers" in args.implementations:
                runs.append(("torch", "transformers"))
            for backend, implementation in runs:
                spec = dict(
                    implementation=implementation, backend=backend, config=config,
                    prompt_lengths=prompt_lengths, new_tokens=new_tokens, calls=args.calls,
                    prefill=not args.no_prefill, threads=args.threads,
                    directory=directories[config],
                )
                started = time.perf_counter()
                result = _run_process(["--worker", json.dumps(spec)], backend, args.timeout)
                key = f"{name}|{'-' if implementation == 'transformers' else backend}|{implementation}"
                records.setdefault(key, []).append(result)
                status = result.get("error", "").splitlines()[-1:] or [
                    f"{len(prompt_lengths) * new_tokens / min(result['times']):.1f} tok/s"
                ]
                print(f"[round {round_index + 1}/{args.rounds}] {name} {backend} {implementation}: "
                      f"{status[0]} ({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    return {
        "bandwidth": bandwidth,
        "threads": args.threads,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "workloads": {n: WORKLOADS[n] for n in args.workloads},
        "backends": args.backends,
        "records": records,
        "new_tokens": args.new_tokens,
    }


# --- report ---------------------------------------------------------------------


def _aggregate(results, batch, prompt_tokens, new_tokens):
    results = [r for r in results if "error" not in r]
    if not results:
        return None
    times = [t for r in results for t in r["times"]]
    prefill = [t for r in results for t in r["prefill_times"]]
    decode_tok_s = None
    if prefill and statistics.median(times) > statistics.median(prefill):
        # The prefill call also generates one token.
        decode_tok_s = batch * (new_tokens - 1) / (
            statistics.median(times) - statistics.median(prefill)
        )
    return {
        "tok_s": batch * new_tokens / statistics.median(times),
        "decode_tok_s": decode_tok_s,
        "first_s": statistics.median(r["first_s"] for r in results),
        "prefill_tok_s": prompt_tokens / statistics.median(prefill) if prefill else None,
        "rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
        "tokens": results[0]["tokens"],
    }


def _matching(ours, theirs):
    if ours is None or theirs is None:
        return None
    leading = []
    for a, b in zip(ours["tokens"], theirs["tokens"]):
        equal = [x == y for x, y in zip(a, b)]
        leading.append(equal.index(False) if False in equal else len(equal))
    return min(leading)


def _fmt(value, spec="{:.1f}"):
    return "-" if value is None else spec.format(value)


def summarize(report):
    bandwidth = report["bandwidth"].get("gb_s")
    lines = [
        f"float32 matrix-vector bandwidth: {_fmt(bandwidth)} GB/s "
        f"(numpy {_fmt(report['bandwidth'].get('numpy_gb_s'))}, torch "
        f"{_fmt(report['bandwidth'].get('torch_gb_s'))}); threads: "
        f"{report['threads'] or 'library defaults'}; load average "
        f"{report['load_before']:.1f} -> {report['load_after']:.1f}",
        "",
        "| workload | backend | mistral_hub tok/s | keras_hub tok/s | transformers tok/s "
        "| mh/kh | mh/hf | roofline tok/s: mh generate / decode % | first call s mh / kh / hf "
        "| prefill tok/s mh / kh / hf | peak RSS MB mh / kh / hf | match kh / hf |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|---|---|---|",
    ]
    int8_lines = []
    compiled_lines = []
    for name, (config_name, prompt_lengths, new_tokens) in report["workloads"].items():
        new_tokens = report["new_tokens"] or new_tokens
        batch, prompt_tokens = len(prompt_lengths), sum(prompt_lengths)
        config = CONFIGS[config_name]

        def get(backend, implementation):
            key = f"{name}|{'-' if implementation == 'transformers' else backend}|{implementation}"
            return _aggregate(report["records"].get(key, []), batch, prompt_tokens, new_tokens)

        hf = get(None, "transformers")
        roofline = None
        if batch == 1 and bandwidth:
            context = prompt_lengths[0] + new_tokens // 2
            roofline = bandwidth * 1e9 / decode_bytes_per_token(config, context)
        for backend in report["backends"]:
            mh, kh, mh8 = get(backend, "mistral_hub"), get(backend, "keras_hub"), get(backend, "mistral_hub_int8")
            if mh is None and kh is None:
                continue
            trio = (mh, kh, hf)

            def ratio(a, b):
                return None if a is None or b is None else a["tok_s"] / b["tok_s"]

            lines.append(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    f"{name} (B={batch}, prompt {min(prompt_lengths)}"
                    + (f"..{max(prompt_lengths)}" if len(set(prompt_lengths)) > 1 else "")
                    + f", {new_tokens} new)",
                    backend,
                    _fmt(mh and mh["tok_s"]), _fmt(kh and kh["tok_s"]), _fmt(hf and hf["tok_s"]),
                    _fmt(ratio(mh, kh), "{:.2f}x"), _fmt(ratio(mh, hf), "{:.2f}x"),
                    "-" if roofline is None else "{:.1f}: {} / {}".format(
                        roofline,
                        _fmt(mh and 100 * mh["tok_s"] / roofline, "{:.0f}%"),
                        _fmt(mh and mh["decode_tok_s"] and 100 * mh["decode_tok_s"] / roofline, "{:.0f}%"),
                    ),
                    " / ".join(_fmt(r and r["first_s"]) for r in trio),
                    " / ".join(_fmt(r and r["prefill_tok_s"], "{:.0f}") for r in trio),
                    " / ".join(_fmt(r and r["rss_mb"], "{:.0f}") for r in trio),
                    " / ".join(f"{_fmatch(mh, r, new_tokens)}" for r in (kh, hf)),
                )
            )
            mhc = get(backend, "mistral_hub_compiled")
            if mhc is not None:
                compiled_lines.append(
                    f"| {name} | {backend} | {_fmt(mh and mh['tok_s'])} | {_fmt(mhc['tok_s'])} "
                    f"| {_fmt(ratio(mhc, mh), '{:.2f}x')} | {_fmt(ratio(mhc, hf), '{:.2f}x')} "
                    f"| {_fmt(mh and mh['first_s'])} / {_fmt(mhc['first_s'])} "
                    f"| {_fmt(mh and mh['prefill_tok_s'], '{:.0f}')} / "
                    f"{_fmt(mhc['prefill_tok_s'], '{:.0f}')} | {_fmatch(mh, mhc, new_tokens)} |"
                )
            if mh8 is not None:
                int8_lines.append(
                    f"| {name} | {backend} | {_fmt(mh and mh['tok_s'])} | {_fmt(mh8['tok_s'])} "
                    f"| {_fmt(ratio(mh8, mh), '{:.2f}x')} | {_fmatch(mh, mh8, new_tokens)} "
                    f"| {_fmt(mh and mh['rss_mb'], '{:.0f}')} / {_fmt(mh8['rss_mb'], '{:.0f}')} |"
                )
    if int8_lines:
        lines += [
            "",
            "| workload | backend | float32 tok/s | int8 tok/s | int8/float32 | match | peak RSS MB f32 / int8 |",
            "|---|---|--:|--:|--:|---|---|",
            *int8_lines,
        ]
    if compiled_lines:
        lines += [
            "",
            "| workload | backend | eager tok/s | jit_compile tok/s | jit/eager | jit/hf "
            "| first call s eager / jit | prefill tok/s eager / jit | match |",
            "|---|---|--:|--:|--:|--:|---|---|---|",
            *compiled_lines,
        ]
    errors = [
        f"{key}: {r['error'].splitlines()[-1] if r['error'] else 'failed'}"
        for key, results in report["records"].items() for r in results if "error" in r
    ]
    if errors:
        lines += ["", "Failed runs:", *errors]
    return "\n".join(lines)


def _fmatch(ours, theirs, new_tokens):
    matched = _matching(ours, theirs)
    return "-" if matched is None else f"{matched}/{new_tokens}"


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        if spec.get("bandwidth"):
            print(json.dumps(measure_bandwidth(spec["threads"])))
        else:
            print(json.dumps(run_worker(spec)))
        return 0
    if args.summarize:
        with open(args.summarize) as f:
            print(summarize(json.load(f)))
        return 0
    report = orchestrate(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f)
    print(summarize(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
