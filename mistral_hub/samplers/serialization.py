"""Looking samplers up by name and (de)serialising them."""

import keras

from mistral_hub.samplers.beam_sampler import BeamSampler
from mistral_hub.samplers.contrastive_sampler import ContrastiveSampler
from mistral_hub.samplers.greedy_sampler import GreedySampler
from mistral_hub.samplers.random_sampler import RandomSampler
from mistral_hub.samplers.sampler import Sampler
from mistral_hub.samplers.top_k_sampler import TopKSampler
from mistral_hub.samplers.top_p_sampler import TopPSampler

_SAMPLERS = {
    "beam": BeamSampler,
    "contrastive": ContrastiveSampler,
    "greedy": GreedySampler,
    "random": RandomSampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
}
_SAMPLERS.update({cls.__name__: cls for cls in list(_SAMPLERS.values())})
# `get` matches names case-insensitively.
_NAMES = {name.lower(): cls for name, cls in _SAMPLERS.items()}


def serialize(sampler):
    """Returns the Keras config dict of `sampler`.

    Example:

    ```python
    from mistral_hub import samplers

    config = samplers.serialize(samplers.TopKSampler(k=10))
    samplers.deserialize(config).k  # 10
    ```
    """
    return keras.saving.serialize_keras_object(sampler)


def deserialize(config, custom_objects=None):
    """Rebuilds a sampler from a `serialize` config (or a sampler name).

    Args:
        config: A dict from `serialize`, or a registered name such as
            `"top_k"`.
        custom_objects: Optional dict of extra classes, for custom samplers.

    Returns:
        A `Sampler` instance.

    Raises:
        ValueError: If `config` does not describe a sampler.
    """
    sampler = keras.saving.deserialize_keras_object(
        config,
        module_objects=_SAMPLERS,
        custom_objects=custom_objects,
        printable_module_name="sampler",
    )
    # Keras hands back unknown class names as plain strings.
    if not isinstance(sampler, Sampler):
        raise ValueError(
            f"`config` does not describe a sampler. Received: {config!r}"
        )
    return sampler


def get(identifier):
    """Returns a sampler for a name, a config dict or an instance.

    Names are case-insensitive and may be a short name (`"greedy"`,
    `"top_k"`, `"top_p"`, `"random"`, `"beam"`, `"contrastive"`) or a class
    name (`"TopKSampler"`); they build the sampler with default arguments.

    Args:
        identifier: `None`, a `Sampler`, a name or a `serialize` dict.

    Returns:
        A `Sampler`, or `None` for `None`.

    Raises:
        ValueError: For an unknown name or an unsupported identifier type.

    Example:

    ```python
    from mistral_hub import samplers

    samplers.get("top_k").k  # 5
    samplers.get({"class_name": "GreedySampler", "config": {}})
    ```
    """
    if identifier is None or isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        cls = _NAMES.get(identifier.lower())
        if cls is None:
            raise ValueError(
                f"Unknown sampler `identifier`: {identifier!r}. Valid names "
                f"are: {', '.join(sorted(_NAMES))}."
            )
        return cls()
    raise ValueError(
        "Sampler `identifier` must be None, a `Sampler`, a name or a config "
        f"dict. Received: {identifier!r}"
    )
