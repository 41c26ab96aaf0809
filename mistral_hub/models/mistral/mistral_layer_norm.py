import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mistral_hub")
class MistralLayerNormalization(keras.layers.Layer):
    """Root-mean-square layer normalization, as in Mistral.

    The statistics are computed in float32 and the normalized value is cast
    back to the compute dtype *before* the learned scale is applied, which is
    the order Hugging Face's `MistralRMSNorm` uses; keeping that order makes
    bfloat16 outputs match the reference bit for bit more often.

    Args:
        epsilon: float. Added to the mean square for numerical stability.
        **kwargs: Standard `keras.layers.Layer` arguments.

    Example:
    >>> layer = MistralLayerNormalization(epsilon=1e-6)
    >>> layer(keras.ops.ones((1, 2, 4))).shape
    (1, 2, 4)
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale",
            shape=(input_shape[-1],),
            initializer="ones",
        )
        self.built = True

    def call(self, x):
        x32 = ops.cast(x, "float32")
        variance = ops.mean(ops.square(x32), axis=-1, keepdims=True)
        normalized = ops.cast(x32 * ops.rsqrt(variance + self.epsilon), self.compute_dtype)
        return normalized * ops.cast(self.scale, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config
