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
    >>> from tests.test_data import mistral_test_proto
    >>> tokenizer = MistralTokenizer(proto=mistral_test_proto())
    >>> preprocessor = MistralCausalLMPreprocessor(tokenizer, sequence_length=8)
    >>> x, y, sample_weight = preprocessor("the quick brown fox")
    >>> x["token_ids"].tolist()
    [1, 3, 8, 4, 6, 2, 0, 0]
    >>> y.tolist()
    [3, 8, 4, 6, 2, 0, 0, 0]
    """

    backbone_cls = MistralBackbone
    tokenizer_cls = MistralTokenizer
