from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.models.mistral.mistral_causal_lm_preprocessor import (
    MistralCausalLMPreprocessor,
)
from mistral_hub.models.mistral.mistral_tekken_tokenizer import MistralTekkenTokenizer
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
