"""Keras layers shared by the models."""

from mistral_hub.layers.dense import Dense
from mistral_hub.layers.dense import EinsumDense
from mistral_hub.layers.reversible_embedding import ReversibleEmbedding
