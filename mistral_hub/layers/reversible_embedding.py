import keras
from keras import ops

from mistral_hub.layers.int8_inference import store_contraction_major
from mistral_hub.layers.int8_inference import weight_only_matmul
from mistral_hub.layers.variable_deletion import DeferredVariableDeletion


@keras.saving.register_keras_serializable(package="mistral_hub")
class ReversibleEmbedding(DeferredVariableDeletion, keras.layers.ReversibleEmbedding):
    """`keras.layers.ReversibleEmbedding` whose int8 output projection trains.

    Keras' int8 reverse projection (`reverse=True`) quantizes its inputs to
    int8 by rounding, which has no gradient, so after `quantize("int8")`
    nothing before the output projection gets a useful gradient: LoRA
    adapters on an int8 backbone (QLoRA) would not learn. Here that
    projection computes the same output, and its gradient with respect to
    the inputs is the straight-through one Keras' int8 `Dense` and
    `EinsumDense` use: `upstream @ dequantized_kernel.T`. On torch, an
    untied int8 output projection outside autograd multiplies its int8
    weights directly (see `mistral_hub.layers.int8_inference`). Everything
    else, weights and their names included, is Keras' layer.

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

    def _int8_build(self, embeddings_shape, config=None):
        super()._int8_build(embeddings_shape, config)
        if not self.tie_weights:
            store_contraction_major(self, self.reverse_embeddings, 1)

    def _int8_call(self, inputs, reverse=False):
        if reverse and not self.tie_weights:
            logits = weight_only_matmul(
                inputs, self.reverse_embeddings, self.reverse_embeddings_scale, 1
            )
            if logits is not None:
                return self._soft_cap(logits)
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
        return self._soft_cap(logits)

    def _soft_cap(self, logits):
        if self.logit_soft_cap is None:
            return logits
        soft_cap = self.logit_soft_cap
        return ops.multiply(ops.tanh(ops.divide(logits, soft_cap)), soft_cap)
