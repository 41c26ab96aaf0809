"""Autoregressive samplers for `mistral_hub` language models."""

from mistral_hub.samplers import stateless_random
from mistral_hub.samplers.beam_sampler import BeamSampler
from mistral_hub.samplers.contrastive_sampler import ContrastiveSampler
from mistral_hub.samplers.greedy_sampler import GreedySampler
from mistral_hub.samplers.random_sampler import RandomSampler
from mistral_hub.samplers.sampler import Sampler
from mistral_hub.samplers.serialization import deserialize
from mistral_hub.samplers.serialization import get
from mistral_hub.samplers.serialization import serialize
from mistral_hub.samplers.top_k_sampler import TopKSampler
from mistral_hub.samplers.top_p_sampler import TopPSampler
