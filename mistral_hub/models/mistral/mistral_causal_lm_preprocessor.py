import keras

from mistral_hub.models.causal_lm_preprocessor import CausalLMPreprocessor
from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer


@keras.saving.register_keras_serializable(package="mistral_hub")
class MistralCausalLMPreprocessor(CausalLMPreprocessor):
    """Mistral preprocessor for `MistralCausalLM` training and generation.

    See `CausalLMPreprocessor` for the packing rules.

    Args:
        tokenizer: A `MistralTokenizer` (or `MistralTekkenTokenizer`).
        sequence_length: int. Packed length; default total generation length.
        add_start_token: bool. Prepend `<s>`.
        add_end_token: bool. Append `</s>` to training examples.

    Example:
    >>> tokenizer = MistralTokenizer.from_preset("mistral_hub_demo")
    >>> preprocessor = MistralCausalLMPreprocessor(tokenizer, sequence_length=8)
    >>> x, y, sample_weight = preprocessor("the fox")
    >>> x["token_ids"].tolist()
    [1, 270, 288, 1957, 1980, 2, 0, 0]
    >>> y.tolist()
    [270, 288, 1957, 1980, 2, 0, 0, 0]
    """

    backbone_cls = MistralBackbone
    tokenizer_cls = MistralTokenizer
