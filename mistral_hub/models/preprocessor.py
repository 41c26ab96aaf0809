import keras


class Preprocessor(keras.layers.Layer):
    """Base class for preprocessors: owns a tokenizer and serializes it.

    Preset loading and saving (`from_preset`, `save_to_preset`) are added on
    top of this class by `mistral_hub.utils.preset_utils`.
    """

    tokenizer_cls = None

    def __init__(self, tokenizer=None, config_file="preprocessor.json", **kwargs):
        super().__init__(**kwargs)
        # Preprocessors take raw strings and numpy arrays, not tensors.
        self._allow_non_tensor_positional_args = True
        self._convert_input_args = False
        self.built = True
        self.tokenizer = tokenizer
        self.config_file = config_file

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
                "config_file": self.config_file,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("tokenizer"), dict):
            config["tokenizer"] = keras.saving.deserialize_keras_object(
                config["tokenizer"]
            )
        return cls(**config)
