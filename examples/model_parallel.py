"""`mistral_hub_demo` sharded over 8 devices with the Keras distribution API.

`MistralBackbone.get_layout_map(mesh)` says how each weight is split; a
`keras.distribution.ModelParallel` set before the model is built creates
every weight directly on its devices; `generate()` and `fit()` then run
unchanged. Without accelerators, the script makes JAX show 8 virtual CPU
devices, so it runs on a laptop (in about 30 s on 2 cores):

    python examples/model_parallel.py

The mesh is 4 x 2: the demo model has 2 key/value heads, so the model
axis splits them (and the query heads, MLP units and vocabulary) in 2,
and the batch axis splits every batch, and the other dimension of each
weight, in 4. For Mistral 7B on 8 GPUs, `(1, 8)` is the usual mesh.

On several hosts, run the same script on each, pointing at host 0 (the
coordinator) and numbering the processes; `--local-devices` is only for
CPUs (GPUs and TPUs show what they have):

    python examples/model_parallel.py --coordinator 10.0.0.1:1234 \\
        --num-processes 2 --process-id 0   # on 10.0.0.1
    python examples/model_parallel.py --coordinator 10.0.0.1:1234 \\
        --num-processes 2 --process-id 1   # on the other host

`keras.distribution.initialize()` joins the processes (JAX's distributed
runtime), `list_devices()` then lists the devices of all hosts, and each
host feeds its own slice of every batch.
"""

import argparse
import os
import time

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--coordinator", help="host:port of process 0, for several processes")
parser.add_argument("--num-processes", type=int, default=1)
parser.add_argument("--process-id", type=int, default=0)
parser.add_argument(
    "--local-devices", type=int, default=None,
    help="virtual CPU devices of this process (default: 8 / num-processes)",
)
args = parser.parse_args()

# JAX fixes the number of CPU devices when it starts: set it first.
local_devices = args.local_devices or 8 // args.num_processes
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" --xla_force_host_platform_device_count={local_devices}"
)
os.environ["KERAS_BACKEND"] = "jax"  # The distribution API runs on JAX.

import jax  # noqa: E402
import keras  # noqa: E402

from mistral_hub import MistralBackbone  # noqa: E402
from mistral_hub import MistralCausalLM  # noqa: E402

PROMPTS = ["The Zen of Python", "A class definition", "Exceptions are", "The for statement"]
TEXTS = [
    "Beautiful is better than ugly.",
    "Explicit is better than implicit.",
    "Simple is better than complex.",
    "Complex is better than complicated.",
]


def log(*values):
    if jax.process_index() == 0:  # One copy of the output, not one per host.
        print(*values, flush=True)


def main():
    start = time.perf_counter()
    if args.coordinator:
        keras.distribution.initialize(
            job_addresses=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    devices = keras.distribution.list_devices()
    log(f"{len(devices)} devices over {jax.process_count()} process(es)")
    mesh = keras.distribution.DeviceMesh(
        shape=(len(devices) // 2, 2), axis_names=("batch", "model"), devices=devices
    )
    distribution = keras.distribution.ModelParallel(
        layout_map=MistralBackbone.get_layout_map(mesh),
        batch_dim_name="batch",
        # With several hosts, each passes its own rows of every batch.
        auto_shard_dataset=jax.process_count() == 1,
    )
    keras.distribution.set_distribution(distribution)

    causal_lm = MistralCausalLM.from_preset("mistral_hub_demo", dtype="float32")
    layer = causal_lm.backbone.get_layer("transformer_layer_0")
    for variable in layer.weights[:4] + causal_lm.backbone.token_embedding.weights:
        shard = variable.value.addressable_shards[0].data.shape
        log(f"{variable.path:<58} {str(tuple(variable.shape)):<15} "
            f"{str(variable.value.sharding.spec):<24} per device {shard}")

    # Four prompts: one per row of the batch axis.
    outputs = causal_lm.generate(PROMPTS, max_new_tokens=16, sampler="greedy")
    for prompt, output in zip(PROMPTS, outputs):
        log(f"{prompt!r} -> {output!r}")

    per_host = len(TEXTS) // jax.process_count()
    texts = TEXTS[args.process_id * per_host : (args.process_id + 1) * per_host]
    causal_lm.preprocessor.sequence_length = 16
    causal_lm.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = causal_lm.fit(texts, batch_size=per_host, epochs=2, verbose=0)
    log("fit losses:", [round(loss, 4) for loss in history.history["loss"]])
    log(f"Done in {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
