"""Keras layers shared by the models."""

from mistral_hub.layers.reversible_embedding import ReversibleEmbedding
