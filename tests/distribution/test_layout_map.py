"""`MistralBackbone.get_layout_map` with the Keras distribution API.

The multi-device runs happen in `distributed_worker.py`, in subprocesses
with virtual CPU devices (JAX fixes its device count when it starts): one
process for all single-host cases, and two processes joined through
`keras.distribution.initialize()` for the multi-host case. The reference
is the same model on one device, in the same process.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from tests.distribution import distributed_worker as worker

WORKER = os.path.abspath(worker.__file__)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(WORKER)))
FAKE_DEVICES = [f"cpu:{i}" for i in range(8)]
MESH_SHAPES = {"model_parallel_2x4": (2, 4), "model_parallel_8x1": (8, 1), "model_parallel_1x8": (1, 8)}
TIMEOUT_S = 900


def _mesh(shape=(2, 4), names=("batch", "model")):
    return keras.distribution.DeviceMesh(shape, names, FAKE_DEVICES)


def _run_worker(args, device_count):
    # The Keras distribution API runs on JAX only, whatever the suite's backend.
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={device_count}",
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
        PYTHONPATH=os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    return subprocess.Popen(
        [sys.executable, WORKER, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(process):
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    assert process.returncode == 0, f"worker failed:\n{output[-6000:]}"


@pytest.fixture(scope="module")
def single_host(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("distribution"))
    _wait(_run_worker(["single", out_dir], device_count=8))
    with open(os.path.join(out_dir, "shardings.json")) as f:
        shardings = json.load(f)
    return out_dir, dict(np.load(os.path.join(out_dir, "results.npz"))), shardings


# --- the layout map itself (no devices needed) -------------------------------


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="device_mesh"):
        MistralBackbone.get_layout_map("model")
    with pytest.raises(ValueError, match="model_parallel_dim_name.*'tensor'"):
        MistralBackbone.get_layout_map(_mesh(), model_parallel_dim_name="tensor")
    with pytest.raises(ValueError, match="data_parallel_dim_name.*'data'"):
        MistralBackbone.get_layout_map(_mesh(), data_parallel_dim_name="data")
    with pytest.raises(ValueError, match="different mesh axes"):
        MistralBackbone.get_layout_map(
            _mesh(), model_parallel_dim_name="batch", data_parallel_dim_name="batch"
        )


@pytest.mark.parametrize("mode", [None, "int8", "int4", "float8"])
def test_every_weight_matrix_is_sharded_with_a_spec_that_fits(mode):
    """Kernels, embeddings and adapters get a layout their rank accepts.

    int4 kernels are 2-D packed arrays under the same paths as the 3-D float
    kernels; a spec longer than a variable's rank would fail when the
    variable is created. Scales, zero points and norms stay replicated.
    """
    backbone = MistralBackbone(**{**worker.CONFIG, "num_layers": 1})
    if mode:
        backbone.quantize(mode)
    backbone.enable_lora(2, target_layer_names=worker.ALL_PROJECTIONS)
    layout_map = MistralBackbone.get_layout_map(_mesh())
    sharded = set()
    for variable in backbone.weights:
        layout = layout_map[variable.path]
        name = variable.path.rsplit("/", 1)[-1]
        if name in ("kernel", "embeddings", "reverse_embeddings", "lora_kernel_a"):
            assert layout is not None, variable.path
        if layout is None:
            continue
        assert len(layout.axes) <= len(variable.shape), (variable.path, layout.axes)
        assert "model" in layout.axes or "batch" in layout.axes, variable.path
        assert name in ("kernel", "embeddings", "reverse_embeddings") or "lora" in name
        sharded.add(name)
    assert sharded >= {"kernel", "embeddings", "reverse_embeddings", "lora_kernel_a", "lora_kernel_b"}


# --- one host, 8 virtual devices ---------------------------------------------


@pytest.mark.parametrize(
    "case", ["data_parallel", "model_parallel_2x4", "model_parallel_8x1", "model_parallel_1x8"]
)
def test_logits_match_one_device(single_host, case):
    _, results, _ = single_host
    np.testing.assert_allclose(
        results[f"{case}/logits"], results["reference/logits"], rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("case", ["data_parallel", "model_parallel_2x4", "model_parallel_8x1"])
def test_greedy_generation_matches_one_device(single_host, case):
    _, results, _ = single_host
    reference = results["reference/tokens"]
    # Generated past the prompt and past the sliding window.
    assert reference.shape == (worker.BATCH, worker.LENGTH)
    np.testing.assert_array_equal(results[f"{case}/tokens"], reference)


@pytest.mark.parametrize("case", ["data_parallel", "model_parallel_2x4", "model_parallel_8x1"])
def test_fit_losses_match_one_device(single_host, case):
    _, results, _ = single_host
    reference = results["reference/losses"]
    assert reference[1] < reference[0]
    np.testing.assert_allclose(results[f"{case}/losses"], reference, rtol=1e-5)


@pytest.mark.parametrize(
    "case",
    ["model_parallel_2x4", "model_parallel_8x1", "model_parallel_1x8", "model_parallel_2x4/int4_lora"],
)
def test_variables_are_split_as_the_layout_map_says(single_host, case):
    """Each device holds only its slice of every sharded weight."""
    _, _, shardings = single_host
    mesh_shape = MESH_SHAPES[case.split("/")[0]]
    layout_map = MistralBackbone.get_layout_map(_mesh(mesh_shape))
    axis_size = {None: 1, **dict(zip(("batch", "model"), mesh_shape))}
    split = 0
    for path, sharding in shardings[case].items():
        layout = layout_map[path]
        axes = list(layout.axes) if layout is not None else []
        shape, spec = sharding["shape"], sharding["spec"]
        spec = spec + [None] * (len(shape) - len(spec))
        assert spec == axes + [None] * (len(shape) - len(axes)), path
        expected = [dim // axis_size[axis] for dim, axis in zip(shape, spec)]
        assert sharding["shard_shape"] == expected, path
        split += expected != shape
    # Both embeddings and the 7 kernels of each of the 2 blocks, at least.
    assert split >= 16
    if case == "model_parallel_2x4":
        # (hidden, heads, head_dim) = (64, 16, 8): hidden over 2, heads over 4.
        query = shardings[case]["transformer_layer_0/self_attention/query/kernel"]
        assert query["shard_shape"] == [32, 4, 8]


def test_int4_model_with_lora_matches_one_device(single_host):
    _, results, _ = single_host
    np.testing.assert_allclose(
        results["model_parallel_2x4/int4_lora"],
        results["reference/int4_lora"],
        rtol=1e-5,
        atol=1e-5,
    )
    # The adapters change the output: the check is not vacuous.
    assert np.abs(results["reference/int4_lora"] - results["reference/logits"]).max() > 1e-2


# --- two hosts ----------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_generate_like_one_device(single_host):
    """A 2x4 mesh over two processes of 4 CPU devices each (gloo collectives).

    Each process feeds its half of every batch (`auto_shard_dataset=False`);
    losses and greedy tokens equal the single-device run.
    """
    out_dir, results, _ = single_host
    coordinator = f"127.0.0.1:{_free_port()}"
    processes = [
        _run_worker(["host", out_dir, str(i), coordinator], device_count=4)
        for i in range(2)
    ]
    for process in processes:
        _wait(process)
    for i in range(2):
        host = np.load(os.path.join(out_dir, f"host_{i}.npz"))
        np.testing.assert_allclose(host["losses"], results["reference/losses"], rtol=1e-5)
        np.testing.assert_array_equal(host["tokens"], results["reference/tokens"])
