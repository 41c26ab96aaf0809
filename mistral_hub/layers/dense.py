import re

import keras
from keras import ops

from mistral_hub.layers.int8_inference import store_contraction_major
from mistral_hub.layers.int8_inference import weight_only_matmul
from mistral_hub.layers.variable_deletion import DeferredVariableDeletion


def _save_calibrated_variables(layer, store):
    """Writes a GPTQ or AWQ layer's variables in the order Keras loads them.

    Keras 3.15's `save_own_variables` takes the merged-LoRA zero point,
    always None for these modes, for "no zero point" and drops
    `kernel_zero`, so every saved GPTQ/AWQ model fails to load
    (keras-team/keras#23321). This mirrors Keras' `load_own_variables`.
    """
    index = 0
    for name in layer.variable_serialization_spec[layer.quantization_mode]:
        if name == "bias" and layer.bias is None:
            continue
        if name in ("kernel_zero", "g_idx") and not hasattr(layer, name):
            continue
        store[str(index)] = getattr(layer, name)
        index += 1


class _CalibrationFixes:
    """Keras' layer, with GPTQ and AWQ that calibrate, save and load again."""

    def quantize(self, mode=None, type_check=True, config=None):
        # Keras' type check refuses subclasses, which could hold other
        # weights; these hold exactly Keras' weights.
        super().quantize(mode, type_check=False, config=config)

    def quantized_call(self, *args, **kwargs):
        # Keras' GPTQ and AWQ record each layer's inputs by patching its
        # `call`, but a layer already in gptq/awq mode runs `quantized_call`
        # instead, so Keras 3.15 calibrates on no data at all (plain
        # rounding, AWQ scales of 1). Until calibrated, both compute with the
        # float kernel: `call` is the same computation, hooks included.
        mode = self.quantization_mode
        if mode in ("gptq", "awq") and not getattr(self, f"is_{mode}_calibrated", False):
            return self.call(*args, **kwargs)
        return super().quantized_call(*args, **kwargs)

    def save_own_variables(self, store):
        # Keras merges LoRA adapters into float and int kernels only.
        if self.built and self.quantization_mode in ("gptq", "awq") and not self.lora_enabled:
            _save_calibrated_variables(self, store)
        else:
            super().save_own_variables(store)


class _Int8Inference:
    """Keras' int8 layer, multiplying int8 weights directly on torch.

    See `int8_inference`: on torch the int8 kernel is stored with its
    contracted axes innermost, and products outside autograd (generation,
    `predict`) use int8 weights with bfloat16 activations, LoRA adapters
    (QLoRA) added as Keras adds them. Training and the other backends run
    Keras' int8 code unchanged.
    """

    def _int8_build(self, kernel_shape, config=None):
        super()._int8_build(kernel_shape, config)
        # Kept as a plain attribute: the decode step reads it every call,
        # also inside `torch.compile`, which cannot trace `re`.
        self._int8_contracted_axes = self._contracted_axes()
        if self._int8_contracted_axes:
            store_contraction_major(self, self._kernel, self._int8_contracted_axes)

    def _int8_call(self, inputs, training=None):
        axes = self._int8_contracted_axes
        if axes:
            outputs = weight_only_matmul(inputs, self._kernel, self._int8_unit_scale(), axes)
            if outputs is not None:
                if self.lora_enabled:
                    outputs = outputs + self._int8_lora_outputs(inputs)
                if self.bias is not None:
                    outputs = outputs + self.bias
                if self.activation is not None:
                    outputs = self.activation(outputs)
                return outputs
        return super()._int8_call(inputs, training=training)


@keras.saving.register_keras_serializable(package="mistral_hub")
class Dense(_Int8Inference, _CalibrationFixes, DeferredVariableDeletion, keras.layers.Dense):
    """`keras.layers.Dense` with complete GPTQ/AWQ and fast int8 on torch.

    Two Keras 3.15 bugs: `quantize("gptq")` and `quantize("awq")` never see
    the calibration data (their input hooks are bypassed), and the zero
    point of a calibrated layer is left out of the saved weights, so
    `save_to_preset()` gives a preset that does not load. And on torch, an
    int8 layer outside autograd multiplies its int8 weights directly (see
    `mistral_hub.layers.int8_inference`). Everything else, weights and
    their names included, is Keras' layer.

    Example:
    >>> layer = Dense(4)
    >>> layer.build((None, 8))
    >>> layer.quantize("int8")
    >>> tuple(layer(keras.ops.ones((2, 8))).shape)
    (2, 4)
    """

    def _contracted_axes(self):
        return 1

    def _int8_unit_scale(self):
        return self.kernel_scale

    def _int8_lora_outputs(self, inputs):
        # As in Keras' `Dense._int8_call`.
        lora_x = ops.matmul(ops.matmul(inputs, self.lora_kernel_a), self.lora_kernel_b)
        return (self.lora_alpha / self.lora_rank) * lora_x


@keras.saving.register_keras_serializable(package="mistral_hub")
class EinsumDense(
    _Int8Inference, _CalibrationFixes, DeferredVariableDeletion, keras.layers.EinsumDense
):
    """`keras.layers.EinsumDense` with complete GPTQ/AWQ and fast int8 on torch.

    See `Dense`: the same Keras 3.15 fixes; the torch int8 product applies to
    equations that contract the inputs' trailing axes with the kernel's
    leading ones in order (`"bqm,muh->bquh"`, `"bqah,ahm->bqm"`), which
    covers every projection of the Mistral model.

    Example:
    >>> layer = EinsumDense("bm,mh->bh", output_shape=4)
    >>> layer.build((None, 8))
    >>> layer.quantize("int8")
    >>> tuple(layer(keras.ops.ones((2, 8))).shape)
    (2, 4)
    """

    def _contracted_axes(self):
        """Leading kernel axes contracted with the inputs' trailing axes.

        0 when the equation is not of that form (the layer then always runs
        Keras' int8 code).
        """
        specs = re.fullmatch(r"([a-zA-Z.]+),([a-zA-Z]+)->([a-zA-Z.]+)", self.equation)
        if specs is None:
            return 0
        inputs, kernel, outputs = specs.groups()
        contracted = "".join(axis for axis in kernel if axis not in outputs)
        kept = kernel[len(contracted):]
        if (
            contracted
            and kernel.startswith(contracted)
            and inputs.endswith(contracted)
            and outputs == inputs[: -len(contracted)] + kept
        ):
            return len(contracted)
        return 0

    def _int8_unit_scale(self):
        return self._adjust_scale_for_dequant(self.kernel_scale)

    def _int8_lora_outputs(self, inputs):
        # As in Keras' `EinsumDense._int8_call`.
        lora_x = ops.einsum(self.equation, inputs, self.lora_kernel_a)
        lora_x = ops.matmul(lora_x, self.lora_kernel_b)
        return ops.cast((self.lora_alpha / self.lora_rank) * lora_x, self.compute_dtype)
