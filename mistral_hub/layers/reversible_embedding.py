import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mistral_hub")
class ReversibleEmbedding(keras.layers.ReversibleEmbedding):
    """`keras.layers.ReversibleEmbedding` whose int8 output projection trains.

    Keras' int8 reverse projection (`reverse=True`) quantizes its inputs to
    int8 by rounding, which has no gradient, so after `quantize("int8")`
    nothing before the output projection gets a useful gradient: LoRA
    adapters on an int8 backbone (QLoRA) would not learn. Here that
    projection computes the same output, and its gradient with respect to
    the inputs is the straight-through one Keras' int8 `Dense` and
    `EinsumDense` use: `upstream @ dequantized_kernel.T`. Everything else,
    weights and their names included, is Keras' layer.

    Example:
    >>> layer = ReversibleEmbedding(input_dim=10, output_dim=4, tie_weights=False)
    >>> layer.build((None,))
    >>> layer.quantize("int8")
    >>> tuple(layer(keras.ops.ones((2, 4)), reverse=True).shape)
    (2, 10)
    """

    def quantize(self, mode=None, type_check=True, config=None):
        # Keras' type check refuses subclasses, which could hold other
        # weights; this one holds exactly Keras' weights.
        super().quantize(mode, type_check=False, config=config)

    def _int8_call(self, inputs, reverse=False):
        if not reverse or self.inputs_quantizer is None:
            return super()._int8_call(inputs, reverse=reverse)
        if self.tie_weights:
            kernel = ops.transpose(self._embeddings)
            scale = ops.transpose(self.embeddings_scale)
        else:
            kernel = self.reverse_embeddings
            scale = self.reverse_embeddings_scale

        @ops.custom_gradient
        def project(inputs, kernel, scale):
            def grad_fn(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                float_kernel = ops.divide(ops.cast(kernel, self.compute_dtype), scale)
                return ops.matmul(upstream, ops.transpose(float_kernel)), None, None

            quantized, inputs_scale = self.inputs_quantizer(inputs)
            logits = ops.cast(ops.matmul(quantized, kernel), self.compute_dtype)
            return ops.divide(logits, ops.multiply(inputs_scale, scale)), grad_fn

        logits = project(inputs, ops.convert_to_tensor(kernel), ops.convert_to_tensor(scale))
        if self.logit_soft_cap is not None:
            soft_cap = self.logit_soft_cap
            logits = ops.multiply(ops.tanh(ops.divide(logits, soft_cap)), soft_cap)
        return logits
