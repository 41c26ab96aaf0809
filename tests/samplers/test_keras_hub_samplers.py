"""keras_hub samplers and keras_hub-style custom samplers on mistral_hub.

keras_hub's sampler objects and configs become the mistral_hub sampler of
the same class and arguments; a custom sampler written against keras_hub's
`Sampler` (a `get_next_token(probabilities)` override) runs in our loop by
changing its base class.
"""

import inspect

import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

from mistral_hub import samplers
from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from tests.samplers.helpers import LENGTH
from tests.samplers.helpers import VOCAB_SIZE
from tests.samplers.helpers import BigramModel
from tests.samplers.helpers import call_sampler
from tests.samplers.helpers import compile_sampler
from tests.samplers.helpers import ids
from tests.samplers.helpers import logits_next

# One instance with non-default arguments per keras_hub sampler class that
# has a mistral_hub twin.
KERAS_HUB_SAMPLERS = {
    "GreedySampler": lambda: keras_hub.samplers.GreedySampler(temperature=0.5),
    "TopKSampler": lambda: keras_hub.samplers.TopKSampler(k=7, seed=3, temperature=0.7),
    "TopPSampler": lambda: keras_hub.samplers.TopPSampler(p=0.8, k=40, seed=4),
    "RandomSampler": lambda: keras_hub.samplers.RandomSampler(seed=5, temperature=1.5),
    "BeamSampler": lambda: keras_hub.samplers.BeamSampler(num_beams=3, return_all_beams=True),
    "ContrastiveSampler": lambda: keras_hub.samplers.ContrastiveSampler(k=4, alpha=0.3),
}


def test_every_keras_hub_sampler_class_is_covered():
    classes = {
        name
        for name, value in vars(keras_hub.samplers).items()
        if inspect.isclass(value)
        and issubclass(value, keras_hub.samplers.Sampler)
        and value is not keras_hub.samplers.Sampler
    }
    # SpeculativeSampler needs a draft model and is refused (tested below).
    assert classes == set(KERAS_HUB_SAMPLERS) | {"SpeculativeSampler"}


@pytest.mark.parametrize("name", list(KERAS_HUB_SAMPLERS))
def test_keras_hub_samplers_and_configs_become_ours(name):
    keras_hub_sampler = KERAS_HUB_SAMPLERS[name]()
    keras_hub_config = keras_hub_sampler.get_config()
    serialized = keras_hub.samplers.serialize(keras_hub_sampler)
    for translated in (
        samplers.get(keras_hub_sampler),
        samplers.get(serialized),
        samplers.deserialize(serialized),
        # keras_hub's documented short form of a config.
        samplers.get({"class_name": f"keras_hub>{name}", "config": keras_hub_config}),
    ):
        assert type(translated) is getattr(samplers, name)
        config = translated.get_config()
        assert {k: config[k] for k in keras_hub_config} == keras_hub_config


def test_compile_accepts_a_keras_hub_sampler():
    backbone = MistralBackbone(
        vocabulary_size=10, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=8, intermediate_dim=16,
    )
    causal_lm = MistralCausalLM(backbone)
    causal_lm.compile(sampler=keras_hub.samplers.TopKSampler(k=3, seed=1))
    assert type(causal_lm.sampler) is samplers.TopKSampler
    assert causal_lm.sampler.k == 3 and causal_lm.sampler.seed == 1


def test_speculative_sampler_is_refused_with_what_to_pass():
    speculative = keras_hub.samplers.SpeculativeSampler()
    for identifier in (speculative, keras_hub.samplers.serialize(speculative)):
        with pytest.raises(ValueError, match="SpeculativeSampler.*Pass `sampler` as one of"):
            samplers.get(identifier)


def test_custom_keras_hub_subclass_is_refused_with_what_to_pass():
    class Custom(keras_hub.samplers.Sampler):
        def get_next_token(self, probabilities):
            return ops.argmax(probabilities, axis=-1)

    with pytest.raises(ValueError, match="Subclass `mistral_hub.samplers.Sampler`"):
        samplers.get(Custom())
    # A keras_hub built-in refined by a user is custom too.
    with pytest.raises(ValueError, match="custom subclass of keras_hub's `Sampler`"):
        samplers.get(type("MyTopK", (keras_hub.samplers.TopKSampler,), {})())


def test_unknown_keras_hub_class_name():
    with pytest.raises(ValueError, match="Unknown keras_hub sampler class `NoSampler`"):
        samplers.get({"class_name": "keras_hub>NoSampler", "config": {}})


def test_bad_keras_hub_config_names_the_problem():
    with pytest.raises(ValueError, match="Cannot build `GreedySampler`.*beams"):
        samplers.get({"class_name": "keras_hub>GreedySampler", "config": {"beams": 2}})


# --- keras_hub-style custom samplers (issue 18, item 11) --------------------


def forbidding_sampler(base):
    """keras_hub's documented custom sampler, subclassing `base`."""

    # Greedy search with some tokens forbidden (verbatim from the docstring
    # of `keras_hub.samplers.Sampler`).
    class CustomSampler(base):
        def __init__(self, forbidden_tokens, **kwargs):
            super().__init__(**kwargs)
            self.forbidden_tokens = forbidden_tokens

        def get_next_token(self, probs):
            batch_size, vocab_size = keras.ops.shape(probs)
            for id in self.forbidden_tokens:
                update = keras.ops.zeros((batch_size, 1))
                probs = keras.ops.slice_update(probs, (0, id), update)
            return keras.ops.argmax(probs, axis=-1)

    return CustomSampler


def test_keras_hub_style_custom_sampler_matches_keras_hub(compiled):
    model = BigramModel(seed=2)
    prompt = ids("ab" + "z" * (LENGTH - 2), "cd" + "z" * (LENGTH - 2))
    greedy = model.greedy(prompt, 2)
    # Forbid what greedy search picks first, so that the override matters.
    forbidden = sorted({int(t) for t in greedy[:, 2]})
    expected = ops.convert_to_numpy(
        forbidding_sampler(keras_hub.samplers.Sampler)(forbidden)(
            model.table_next, prompt, index=2
        )
    )
    output = call_sampler(
        forbidding_sampler(samplers.Sampler)(forbidden),
        model.table_next,
        compiled,
        prompt=prompt,
        index=2,
    )
    np.testing.assert_array_equal(output, expected)
    assert not np.isin(output[:, 2:], forbidden).any()
    assert (output != greedy).any()


class KerasHubStyleRandomSampler(samplers.Sampler):
    """Draws like keras_hub's `RandomSampler`, from a `SeedGenerator`."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def get_next_token(self, probabilities):
        return keras.random.categorical(
            ops.log(probabilities), 1, seed=self.seed_generator, dtype="int32"
        )[:, 0]


def test_keras_hub_style_random_sampler_draws_fresh_tokens(compiled):
    # Uniform over the vocabulary: a generator whose state never advanced
    # would repeat one token along each row and across calls.
    sampler = KerasHubStyleRandomSampler(seed=0)
    run = compile_sampler(sampler, logits_next(np.zeros(VOCAB_SIZE)), compiled)
    prompt = np.zeros((8, LENGTH), "int32")

    def sample(seed):
        return run(prompt=prompt, index=1, seed=np.array([0, seed], "int32"))

    first = sample(1)
    assert all(len(set(row[1:])) > 3 for row in first)
    np.testing.assert_array_equal(sample(1), first)
    assert (sample(2) != first).any()
