"""Smoke tests: the examples run offline, as shipped, and say what they did."""

import os
import re
import subprocess
import sys

EXAMPLES_DIR = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "examples")
REPO_ROOT = os.path.dirname(EXAMPLES_DIR)


def _run(script, *args, backend="jax"):
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND=backend,
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p),
    )
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES_DIR, script), *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_lora_finetune(tmp_path):
    out = _run("lora_finetune.py", "--output", str(tmp_path))
    first, last = map(float, re.search(r"Training loss: ([\d.]+) -> ([\d.]+)", out).groups())
    assert last < 0.5 * first, out
    assert "Reloaded adapters give the same logits: True" in out
    assert "generates the same text: True" in out
    assert (tmp_path / "mistral_wind.lora.h5").is_file()
    assert (tmp_path / "merged_preset" / "model.weights.h5").is_file()


def test_model_parallel():
    out = _run("model_parallel.py")
    assert "8 devices over 1 process(es)" in out
    # The query kernel (128, 4, 32) is split 4 x 2 (hidden x heads).
    assert re.search(r"query/kernel +\(128, 4, 32\) .* per device \(32, 2, 32\)", out), out
    assert out.count(" -> ") == 4
    losses = [float(x) for x in re.search(r"fit losses: \[(.*)\]", out).group(1).split(",")]
    assert losses[1] < losses[0]


def test_quantized_inference(tmp_path):
    out = _run("quantized_inference.py", "--output", str(tmp_path))
    sizes = re.search(r"Weights: ([\d,]+) -> ([\d,]+) bytes", out).groups()
    before, after = (int(size.replace(",", "")) for size in sizes)
    assert after < 0.3 * before, out
    assert "Reloaded preset gives the same logits: True" in out
    assert "generates the same text: True" in out
    assert (tmp_path / "demo_int8" / "model.weights.h5").is_file()
