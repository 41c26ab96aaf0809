"""Keras 3 native Mistral language models for TensorFlow, JAX and PyTorch."""

from mistral_hub import models
from mistral_hub import samplers
from mistral_hub import tokenizers
from mistral_hub.models import Backbone
from mistral_hub.models import CausalLM
from mistral_hub.models import CausalLMPreprocessor
from mistral_hub.models import MistralBackbone
from mistral_hub.models import MistralCausalLM
from mistral_hub.models import MistralCausalLMPreprocessor
from mistral_hub.models import MistralTekkenTokenizer
from mistral_hub.models import MistralTokenizer
from mistral_hub.models import Preprocessor
from mistral_hub.models import Task

__version__ = "0.1.0"
