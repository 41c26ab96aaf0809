"""int8 layers outside autograd: the product of the dequantized weights.

On torch they multiply their int8 weights directly (`int8_inference`); on
JAX and TensorFlow they run Keras' int8 code. Either way the result must be
close to the inputs times the dequantized kernel, computed here in float64.
"""

import keras
import numpy as np
import pytest

from mistral_hub.layers.dense import Dense
from mistral_hub.layers.dense import EinsumDense
from mistral_hub.layers.reversible_embedding import ReversibleEmbedding

TORCH = keras.config.backend() == "torch"


def _inference(function, *args):
    """Runs `function` the way generate() and predict() do (no autograd)."""
    if TORCH:
        import torch

        with torch.no_grad():
            return keras.ops.convert_to_numpy(function(*args))
    return keras.ops.convert_to_numpy(function(*args))


def _ran_int8_kernel(function, *args):
    import torch

    with torch.no_grad(), torch.profiler.profile() as profile:
        function(*args)
    return any(event.name == "aten::_weight_int8pack_mm" for event in profile.events())


def _numpy(value):
    return keras.ops.convert_to_numpy(value).astype("float64")


def _dequantized_kernel(layer):
    """The float kernel an int8 layer stands for, LoRA adapters included."""
    scale = layer.kernel_scale
    if isinstance(layer, EinsumDense):
        scale = layer._adjust_scale_for_dequant(scale)
    kernel = _numpy(layer._kernel) / _numpy(scale)
    if layer.lora_enabled:
        adapters = _numpy(layer.lora_kernel_a) @ _numpy(layer.lora_kernel_b)
        kernel = kernel + (layer.lora_alpha / layer.lora_rank) * adapters
    return kernel


# (layer factory, input shape, product of inputs and float kernel in numpy)
CASES = {
    "dense": (
        lambda: Dense(48, use_bias=True, bias_initializer="random_normal"),
        (3, 5, 32),
        lambda layer, x, kernel: x @ kernel + _numpy(layer.bias),
    ),
    "query": (
        lambda: EinsumDense("bqm,muh->bquh", output_shape=(None, 4, 8)),
        (2, 3, 32),
        lambda layer, x, kernel: np.einsum("bqm,muh->bquh", x, kernel),
    ),
    "attention_output": (
        lambda: EinsumDense("bqah,ahm->bqm", output_shape=(None, 32)),
        (2, 3, 4, 8),
        lambda layer, x, kernel: np.einsum("bqah,ahm->bqm", x, kernel),
    ),
}


@pytest.mark.parametrize("lora", [False, True], ids=["int8", "qlora"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_int8_layer_computes_the_dequantized_product(case, lora):
    make_layer, input_shape, product = CASES[case]
    layer = make_layer()
    layer.build((None,) + input_shape[1:])
    layer.quantize("int8")
    rng = np.random.default_rng(0)
    if lora:
        layer.enable_lora(rank=2)
        # Trained adapters: `lora_kernel_b` starts at zero.
        b = layer.lora_kernel_b
        b.assign(rng.normal(scale=0.2, size=tuple(b.shape)).astype("float32"))
    x = rng.normal(size=input_shape).astype("float32")

    outputs = _inference(layer, x)
    expected = product(layer, x.astype("float64"), _dequantized_kernel(layer))

    assert outputs.shape == expected.shape
    # bfloat16 activations (torch) or int8 activations (Keras): ~1% of the
    # output range.
    np.testing.assert_allclose(outputs, expected, atol=0.02 * np.abs(expected).max())
    if TORCH:
        assert _ran_int8_kernel(layer, x)


def test_int8_output_projection_computes_the_dequantized_product():
    layer = ReversibleEmbedding(input_dim=64, output_dim=32, tie_weights=False)
    layer.build((None,))
    layer.quantize("int8")
    x = np.random.default_rng(1).normal(size=(2, 3, 32)).astype("float32")

    logits = _inference(lambda x: layer(x, reverse=True), x)
    expected = x.astype("float64") @ (
        _numpy(layer.reverse_embeddings) / _numpy(layer.reverse_embeddings_scale)
    )

    np.testing.assert_allclose(logits, expected, atol=0.02 * np.abs(expected).max())
    if TORCH:
        assert _ran_int8_kernel(lambda x: layer(x, reverse=True), x)


@pytest.mark.skipif(not TORCH, reason="the int8 weight layout is torch's")
def test_int8_kernel_layout_survives_saving_and_loading():
    layer = EinsumDense("bqm,muh->bquh", output_shape=(None, 4, 8))
    layer.build((None, None, 32))
    layer.quantize("int8")
    store = {}
    layer.save_own_variables(store)
    loaded = EinsumDense.from_config(layer.get_config())
    loaded.build((None, None, 32))
    loaded.load_own_variables(store)
    x = np.random.default_rng(2).normal(size=(2, 3, 32)).astype("float32")

    # Same int8 values, stored with the contracted axis innermost, and used
    # by the int8 kernel.
    np.testing.assert_array_equal(_numpy(loaded._kernel), _numpy(layer._kernel))
    assert loaded._kernel.value.stride()[0] == 1
    np.testing.assert_array_equal(_inference(loaded, x), _inference(layer, x))
    assert _ran_int8_kernel(loaded, x)
    # The torch module lists the parameter the layer computes with.
    parameters = dict(loaded.named_parameters())
    assert any(p is loaded._kernel.value for p in parameters.values())


@pytest.mark.skipif(not TORCH, reason="the int8 weight layout is torch's")
def test_training_keeps_keras_int8_path_and_its_gradient():
    import torch

    layer = Dense(16)
    layer.build((None, 32))
    layer.quantize("int8")
    x = torch.tensor(
        np.random.default_rng(3).normal(size=(4, 32)).astype("float32"),
        requires_grad=True,
    )
    with torch.profiler.profile() as profile:
        layer(x).sum().backward()
    assert not any(e.name == "aten::_weight_int8pack_mm" for e in profile.events())
    # Keras' straight-through gradient: the dequantized kernel's row sums.
    dequantized = _dequantized_kernel(layer)
    np.testing.assert_allclose(
        x.grad.numpy(), np.tile(dequantized.sum(axis=1), (4, 1)), rtol=1e-4, atol=1e-4
    )


@pytest.mark.skipif(
    not TORCH, reason="JAX and TensorFlow run Keras' int8 code, tested in its own tests"
)
def test_int8_demo_model_matches_its_dequantized_float_model():
    from mistral_hub import MistralCausalLM

    quantized = MistralCausalLM.from_preset("mistral_hub_demo", dtype="float32")
    dequantized = MistralCausalLM.from_preset("mistral_hub_demo", dtype="float32")
    quantized.quantize("int8")
    float_layers = {layer.path: layer for layer in dequantized.backbone._flatten_layers()}
    for layer in quantized.backbone._flatten_layers():
        if layer.quantization_mode != "int8":
            continue
        target = float_layers[layer.path]
        if isinstance(layer, ReversibleEmbedding):
            target.embeddings.assign(
                _numpy(layer._embeddings) / _numpy(layer.embeddings_scale)[:, None]
            )
            target.reverse_embeddings.assign(
                _numpy(layer.reverse_embeddings) / _numpy(layer.reverse_embeddings_scale)
            )
        else:
            target.kernel.assign(_dequantized_kernel(layer))
    inputs = quantized.preprocessor.generate_preprocess(
        ["def read_file(path):\n    with open(path) as f:"], sequence_length=32
    )

    logits = _inference(quantized, inputs)
    expected = _inference(dequantized, inputs)

    # Every weight in both models is the same; only the activations are
    # rounded to bfloat16 (Keras' int8 x int8 product is 2.2-2.6% off here).
    error = np.abs(logits - expected).max() / np.abs(expected).max()
    assert error < 0.015, error


@pytest.mark.skipif(not TORCH, reason="the int8 weight layout is torch's")
def test_long_prefills_use_keras_int8_product():
    layer = Dense(16)
    layer.build((None, None, 32))
    layer.quantize("int8")
    x = np.random.default_rng(4).normal(size=(1, 300, 32)).astype("float32")

    expected = x.astype("float64") @ _dequantized_kernel(layer)

    # More rows than the int8-weight kernel is faster for.
    assert not _ran_int8_kernel(layer, x)
    np.testing.assert_allclose(
        _inference(layer, x), expected, atol=0.02 * np.abs(expected).max()
    )


@pytest.mark.skipif(not TORCH, reason="torch.compile is torch's")
def test_int8_and_qlora_decode_step_compiles_with_jit_compile():
    import warnings

    from mistral_hub import MistralBackbone
    from mistral_hub import MistralCausalLM

    backbone = MistralBackbone(
        vocabulary_size=64, num_layers=1, num_query_heads=4, hidden_dim=32,
        intermediate_dim=64, num_key_value_heads=2, sliding_window=8,
    )
    causal_lm = MistralCausalLM(backbone)
    causal_lm.quantize("int8")
    # QLoRA adapters on the query projection only: the compiled step holds
    # int8 layers with and without adapters.
    backbone.enable_lora(2, target_layer_names=["query"])
    rng = np.random.default_rng(5)
    for variable in backbone.weights:
        if "lora_kernel_b" in variable.path:
            variable.assign(rng.normal(scale=0.2, size=tuple(variable.shape)).astype("float32"))
    token_ids = rng.integers(1, 64, (1, 16)).astype("int32")
    inputs = {"token_ids": token_ids, "padding_mask": (np.arange(16) < 6)[None].astype("int32")}
    causal_lm.compile(sampler="greedy")
    eager = causal_lm.generate(inputs, stop_token_ids=None)["token_ids"]

    causal_lm.compile(sampler="greedy", jit_compile=True)
    with warnings.catch_warnings():
        # Inductor lowers the int8 kernel: no fallback to eager decoding.
        warnings.simplefilter("error", UserWarning)
        compiled = causal_lm.generate(inputs, stop_token_ids=None)["token_ids"]

    np.testing.assert_array_equal(np.asarray(compiled), np.asarray(eager))


@pytest.mark.skipif(not TORCH, reason="the int8 weight layout is torch's")
def test_shipped_bfloat16_preset_decodes_with_int8_weights_after_reloading(tmp_path):
    from mistral_hub import MistralCausalLM

    causal_lm = MistralCausalLM.from_preset("mistral_hub_demo")
    causal_lm.quantize("int8")
    prompt = "def read_file(path):"
    generate = lambda model: model.generate(prompt, max_length=24, sampler="greedy")
    text = generate(causal_lm)
    causal_lm.save_to_preset(tmp_path / "preset")

    restored = MistralCausalLM.from_preset(tmp_path / "preset")

    # As shipped: bfloat16 activations, int8 weights re-stored on loading.
    assert restored.backbone.compute_dtype == "bfloat16"
    assert _ran_int8_kernel(generate, restored)
    assert generate(restored) == text
