"""Peak memory of loading a transformers checkpoint with `from_preset`.

Writes a random bfloat16 Mistral checkpoint in the transformers format
(`config.json`, `model.safetensors`, about `--size-gb` GB, written with
`safetensors` directly) into a temporary directory, then loads it with
`MistralBackbone.from_preset(dir)` in a fresh subprocess per backend and
reports:

- `load_ratio`: (peak RSS while loading - RSS before loading) / checkpoint
  size. The model itself is 1.0; the rest is what loading costs on top
  (temporaries, mapped file pages). Target: <= 1.15.
- `total_ratio`: peak RSS of the whole process (Python, Keras and the
  backend included) / checkpoint size.

The peak is Linux's `VmHWM`, reset through `/proc/self/clear_refs` after the
imports so that import-time peaks do not count.

Usage:
    python benchmarks/load_memory.py [--size-gb 1.0] [--backends jax,torch,tensorflow]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Mistral-7B proportions scaled down: with 32 layers the largest tensor (the
# embedding) is ~6% of the model, as in real checkpoints (1.8% for 7B).
BASE_CONFIG = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "vocab_size": 32000,
    "hidden_size": 1024,
    "intermediate_size": 3584,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "dtype": "bfloat16",
}


def _tensor_shapes(config):
    h, i = config["hidden_size"], config["intermediate_size"]
    d = config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    shapes = {
        "model.embed_tokens.weight": (config["vocab_size"], h),
        "lm_head.weight": (config["vocab_size"], h),
        "model.norm.weight": (h,),
    }
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        shapes.update(
            {
                f"{p}.input_layernorm.weight": (h,),
                f"{p}.post_attention_layernorm.weight": (h,),
                f"{p}.self_attn.q_proj.weight": (q, h),
                f"{p}.self_attn.k_proj.weight": (kv, h),
                f"{p}.self_attn.v_proj.weight": (kv, h),
                f"{p}.self_attn.o_proj.weight": (h, q),
                f"{p}.mlp.gate_proj.weight": (i, h),
                f"{p}.mlp.up_proj.weight": (i, h),
                f"{p}.mlp.down_proj.weight": (h, i),
            }
        )
    return shapes


def _num_layers_for(size_bytes):
    config = dict(BASE_CONFIG, num_hidden_layers=1)
    per_layer = sum(
        2 * int(__import__("numpy").prod(s))
        for n, s in _tensor_shapes(config).items()
        if n.startswith("model.layers.0.")
    )
    fixed = 2 * (2 * config["vocab_size"] * config["hidden_size"] + config["hidden_size"])
    return max(1, round((size_bytes - fixed) / per_layer))


def write_checkpoint(directory, size_gb):
    """Writes a random bfloat16 transformers checkpoint; returns its size."""
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file

    config = dict(BASE_CONFIG, num_hidden_layers=_num_layers_for(size_gb * 1e9))
    rng = np.random.default_rng(0)
    tensors = {}
    for name, shape in _tensor_shapes(config).items():
        values = rng.standard_normal(shape, dtype=np.float32)
        values *= 1.0 if "norm" in name else 0.02
        tensors[name] = values.astype(ml_dtypes.bfloat16)
        del values
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return os.path.getsize(os.path.join(directory, "model.safetensors"))


_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {root!r})

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

import keras
from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
import numpy as np

before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # Resets VmHWM (peak RSS) to the current RSS.
start = time.perf_counter()
backbone = MistralBackbone.from_preset({directory!r})
seconds = time.perf_counter() - start
peak = status("VmHWM")
print(json.dumps({{
    "backend": keras.config.backend(),
    "dtype": backbone.dtype_policy.name,
    "rss_before": before,
    "peak": peak,
    "seconds": seconds,
}}))
"""


def measure(directory, backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    code = _CHILD.format(root=ROOT, directory=directory)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"{backend} run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--backends", default="jax,torch,tensorflow")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="mistral_hub_load_memory_")
    try:
        size = write_checkpoint(directory, args.size_gb)
        print(f"checkpoint: {size / 1e9:.3f} GB bfloat16 in {directory}")
        for backend in args.backends.split(","):
            r = measure(directory, backend)
            load_ratio = (r["peak"] - r["rss_before"]) / size
            total_ratio = r["peak"] / size
            print(
                f"{backend:>10}: load_ratio={load_ratio:.3f} "
                f"total_ratio={total_ratio:.3f} (RSS before {r['rss_before'] / 1e9:.2f} GB, "
                f"peak {r['peak'] / 1e9:.2f} GB, {r['seconds']:.1f} s, dtype {r['dtype']})"
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
