import keras
import pytest

from mistral_hub import samplers

ALL = [
    samplers.GreedySampler(temperature=0.5),
    samplers.TopKSampler(k=7, seed=3, temperature=0.7),
    samplers.TopPSampler(p=0.8, k=40, seed=4),
    samplers.RandomSampler(seed=5, temperature=1.5),
    samplers.BeamSampler(num_beams=3, return_all_beams=True),
    samplers.ContrastiveSampler(k=4, alpha=0.3),
]


@pytest.mark.parametrize("sampler", ALL, ids=lambda s: type(s).__name__)
def test_serialization_round_trip(sampler):
    config = samplers.serialize(sampler)
    assert config["registered_name"] == f"mistral_hub>{type(sampler).__name__}"
    for restored in (
        samplers.deserialize(config),
        samplers.get(config),
        keras.saving.deserialize_keras_object(config),
    ):
        assert type(restored) is type(sampler)
        assert restored.get_config() == sampler.get_config()


@pytest.mark.parametrize(
    "name, cls",
    [
        ("greedy", samplers.GreedySampler),
        ("top_k", samplers.TopKSampler),
        ("top_p", samplers.TopPSampler),
        ("random", samplers.RandomSampler),
        ("beam", samplers.BeamSampler),
        ("contrastive", samplers.ContrastiveSampler),
        ("TOP_K", samplers.TopKSampler),
        ("TopPSampler", samplers.TopPSampler),
        ("beamsampler", samplers.BeamSampler),
    ],
)
def test_get_by_name(name, cls):
    sampler = samplers.get(name)
    assert type(sampler) is cls
    assert sampler.get_config() == cls().get_config()


def test_keras_hub_defaults():
    assert samplers.get("top_k").k == 5
    assert samplers.get("top_p").p == 0.1 and samplers.get("top_p").k is None
    assert samplers.get("beam").num_beams == 5
    assert samplers.get("contrastive").alpha == 0.6
    assert samplers.get("greedy").temperature == 1.0


def test_get_config_dict_and_instance():
    sampler = samplers.get({"class_name": "TopKSampler", "config": {"k": 3}})
    assert isinstance(sampler, samplers.TopKSampler) and sampler.k == 3
    assert isinstance(
        samplers.get({"class_name": "greedy", "config": {}}),
        samplers.GreedySampler,
    )
    assert samplers.get(sampler) is sampler
    assert samplers.get(None) is None


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="top_k") as error:
        samplers.get("nucleus")
    assert "nucleus" in str(error.value)


@pytest.mark.parametrize(
    "identifier",
    [3, samplers.GreedySampler, {"class_name": "Foo", "config": {}}],
)
def test_invalid_identifier(identifier):
    with pytest.raises(ValueError):
        samplers.get(identifier)
