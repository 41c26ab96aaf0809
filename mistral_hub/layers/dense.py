import keras


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


@keras.saving.register_keras_serializable(package="mistral_hub")
class Dense(_CalibrationFixes, keras.layers.Dense):
    """`keras.layers.Dense` whose GPTQ and AWQ calibrate and save completely.

    Two Keras 3.15 bugs: `quantize("gptq")` and `quantize("awq")` never see
    the calibration data (their input hooks are bypassed), and the zero
    point of a calibrated layer is left out of the saved weights, so
    `save_to_preset()` gives a preset that does not load. Everything else,
    weights and their names included, is Keras' layer.

    Example:
    >>> layer = Dense(4)
    >>> layer.build((None, 8))
    >>> layer.quantize("int8")
    >>> tuple(layer(keras.ops.ones((2, 8))).shape)
    (2, 4)
    """


@keras.saving.register_keras_serializable(package="mistral_hub")
class EinsumDense(_CalibrationFixes, keras.layers.EinsumDense):
    """`keras.layers.EinsumDense` whose GPTQ and AWQ calibrate and save completely.

    See `Dense`: the same Keras 3.15 fixes, nothing else changed.

    Example:
    >>> layer = EinsumDense("bm,mh->bh", output_shape=4)
    >>> layer.build((None, 8))
    >>> layer.quantize("int8")
    >>> tuple(layer(keras.ops.ones((2, 8))).shape)
    (2, 4)
    """
