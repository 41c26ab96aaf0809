"""Multi-device runs for `test_layout_map.py`, in a fresh JAX process.

JAX fixes its device count when it starts, so the tests run this script with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` in a subprocess:

    python distributed_worker.py single OUT_DIR
        One process, 8 CPU devices: the single-device reference, then the
        same forward pass, greedy generation and fit steps under
        `DataParallel` and `ModelParallel` with
        `MistralBackbone.get_layout_map` (meshes 2x4, 8x1 and 1x8, the
        last for the forward pass only), and an int4-quantized model with LoRA adapters
        under the 2x4 mesh.
        Writes `results.npz`, `shardings.json` and the reference weights.

    python distributed_worker.py host OUT_DIR PROCESS_ID COORDINATOR
        One of two processes (4 CPU devices each) that join through
        `keras.distribution.initialize()` and train and generate with a 2x4
        mesh spanning both, each feeding its half of the batch. Reads the
        reference weights; writes `host_<PROCESS_ID>.npz`.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone  # noqa: E402
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM  # noqa: E402

# Every sharded dimension divides 8 and 4; head_dim is explicit so that the
# 8-way data axis divides it too. A window shorter than the generated length
# exercises the rolling KV cache.
CONFIG = dict(
    vocabulary_size=128, num_layers=2, num_query_heads=16, num_key_value_heads=8,
    hidden_dim=64, head_dim=8, intermediate_dim=128, sliding_window=6,
)
BATCH, LENGTH, PROMPT = 8, 12, 5
ALL_PROJECTIONS = [
    "query", "key", "value", "attention_output",
    "feedforward_gate_dense", "feedforward_intermediate_dense", "feedforward_output_dense",
]
WEIGHTS_FILE = "reference.weights.h5"


def data():
    rng = np.random.default_rng(0)
    token_ids = rng.integers(3, CONFIG["vocabulary_size"], (BATCH, LENGTH)).astype("int32")
    prompt_mask = np.zeros_like(token_ids)
    prompt_mask[:, :PROMPT] = 1
    return (
        {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)},
        np.roll(token_ids, -1, axis=1),
        {"token_ids": token_ids * prompt_mask, "padding_mask": prompt_mask},
    )


def compile_for_fit(causal_lm):
    causal_lm.compile(optimizer=keras.optimizers.SGD(0.5), sampler="greedy")


def run_model(causal_lm, full=True):
    """Logits; unless `full` is False, greedy tokens and two fit steps' losses."""
    x, y, prompt = data()
    results = {"logits": causal_lm.predict_on_batch(x)}
    if full:
        results["tokens"] = causal_lm.generate(prompt, stop_token_ids=None, sampler="greedy")["token_ids"]
        compile_for_fit(causal_lm)
        history = causal_lm.fit(x, y, epochs=2, batch_size=BATCH, shuffle=False, verbose=0)
        results["losses"] = np.array(history.history["loss"])
    return results


def adapted(causal_lm):
    """int4-quantizes, adds LoRA to every projection, sets the adapters."""
    causal_lm.quantize("int4")
    causal_lm.backbone.enable_lora(2, target_layer_names=ALL_PROJECTIONS)
    rng = np.random.default_rng(1)
    for variable in causal_lm.backbone.weights:
        if "lora" in variable.path:
            variable.assign(0.1 * rng.standard_normal(variable.shape).astype("float32"))
    x, _, _ = data()
    return causal_lm.predict_on_batch(x)


def fresh_model(weights):
    causal_lm = MistralCausalLM(MistralBackbone(**CONFIG))
    causal_lm.set_weights(weights)
    return causal_lm


def model_parallel(shape, devices, **kwargs):
    mesh = keras.distribution.DeviceMesh(shape, ("batch", "model"), devices)
    return keras.distribution.ModelParallel(
        layout_map=MistralBackbone.get_layout_map(mesh),
        batch_dim_name="batch",
        **kwargs,
    )


def shardings(causal_lm):
    return {
        v.path: {
            "shape": list(v.shape),
            "spec": list(v.value.sharding.spec),
            "shard_shape": list(v.value.addressable_shards[0].data.shape),
        }
        for v in causal_lm.backbone.weights
    }


def single(out_dir):
    devices = keras.distribution.list_devices()
    assert len(devices) == 8, devices
    keras.utils.set_random_seed(0)
    reference = MistralCausalLM(MistralBackbone(**CONFIG))
    weights = reference.get_weights()
    reference.save_weights(os.path.join(out_dir, WEIGHTS_FILE))
    results = {f"reference/{k}": v for k, v in run_model(reference).items()}
    results["reference/int4_lora"] = adapted(fresh_model(weights))

    distributions = {
        "data_parallel": keras.distribution.DataParallel(devices=devices),
        "model_parallel_2x4": model_parallel((2, 4), devices),
        "model_parallel_8x1": model_parallel((8, 1), devices),
        "model_parallel_1x8": model_parallel((1, 8), devices),
    }
    specs = {}
    for name, distribution in distributions.items():
        with distribution.scope():
            causal_lm = fresh_model(weights)
            specs[name] = shardings(causal_lm)
            run = run_model(causal_lm, full=name != "model_parallel_1x8")
            results.update({f"{name}/{k}": v for k, v in run.items()})
    with distributions["model_parallel_2x4"].scope():
        causal_lm = fresh_model(weights)
        results["model_parallel_2x4/int4_lora"] = adapted(causal_lm)
        specs["model_parallel_2x4/int4_lora"] = shardings(causal_lm)
    np.savez(os.path.join(out_dir, "results.npz"), **results)
    with open(os.path.join(out_dir, "shardings.json"), "w") as f:
        json.dump(specs, f)


def host(out_dir, process_id, coordinator):
    keras.distribution.initialize(
        job_addresses=coordinator, num_processes=2, process_id=process_id
    )
    devices = keras.distribution.list_devices()
    assert len(devices) == 8, devices
    # Each process owns one row of the 2x4 mesh, so one half of the batch.
    distribution = model_parallel((2, 4), devices, auto_shard_dataset=False)
    x, y, _ = data()
    half = slice(process_id * BATCH // 2, (process_id + 1) * BATCH // 2)
    with distribution.scope():
        causal_lm = MistralCausalLM(MistralBackbone(**CONFIG))
        causal_lm.load_weights(os.path.join(out_dir, WEIGHTS_FILE))
        _, _, prompt = data()
        tokens = causal_lm.generate(prompt, stop_token_ids=None, sampler="greedy")["token_ids"]
        compile_for_fit(causal_lm)
        history = causal_lm.fit(
            {k: v[half] for k, v in x.items()}, y[half],
            epochs=2, batch_size=BATCH // 2, shuffle=False, verbose=0,
        )
    np.savez(
        os.path.join(out_dir, f"host_{process_id}.npz"),
        tokens=tokens,
        losses=np.array(history.history["loss"]),
    )


if __name__ == "__main__":
    mode, out_dir = sys.argv[1], sys.argv[2]
    if mode == "single":
        single(out_dir)
    else:
        host(out_dir, int(sys.argv[3]), sys.argv[4])
