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
_CLASSES = {cls.__name__: cls for cls in _SAMPLERS.values()}
_SAMPLERS.update(_CLASSES)
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

    A config of a keras_hub sampler (from `keras_hub.samplers.serialize`)
    builds the mistral_hub sampler of the same class and arguments.

    Args:
        config: A dict from `serialize` or `keras_hub.samplers.serialize`, or
            a registered name such as `"top_k"`.
        custom_objects: Optional dict of extra classes, for custom samplers.

    Returns:
        A `Sampler` instance.

    Raises:
        ValueError: If `config` does not describe a sampler.
    """
    if _is_keras_hub_config(config):
        return _from_keras_hub(
            config["class_name"].split(">")[-1], config.get("config") or {}
        )
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
    keras_hub's built-in samplers, as instances or configs, become the
    mistral_hub sampler of the same class and arguments.

    Args:
        identifier: `None`, a `Sampler`, a name, a `serialize` dict, or a
            keras_hub sampler or its config.

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
    if _is_keras_hub_sampler(identifier):
        return _keras_hub_sampler_to_ours(identifier)
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


def _is_keras_hub_sampler(obj):
    return any(
        cls.__module__.startswith("keras_hub.") and cls.__name__ == "Sampler"
        for cls in type(obj).__mro__
    )


def _is_keras_hub_config(config):
    if not isinstance(config, dict) or not isinstance(
        config.get("class_name"), str
    ):
        return False
    return (
        config["class_name"].startswith("keras_hub>")
        or str(config.get("registered_name", "")).startswith("keras_hub>")
        or str(config.get("module", "")).startswith("keras_hub.")
    )


def _keras_hub_sampler_to_ours(sampler):
    cls = type(sampler)
    if not cls.__module__.startswith("keras_hub."):
        raise ValueError(
            f"`sampler` is a custom subclass of keras_hub's `Sampler` "
            f"({cls.__module__}.{cls.__name__}), whose sampling loop mistral_hub "
            "does not run. Subclass `mistral_hub.samplers.Sampler` instead: "
            "a `get_next_token(probabilities)` written for keras_hub works "
            "there unchanged."
        )
    return _from_keras_hub(cls.__name__, sampler.get_config())


def _from_keras_hub(class_name, config):
    """Builds our sampler of keras_hub's class `class_name` from its config."""
    valid = ", ".join(sorted(_CLASSES))
    if class_name == "SpeculativeSampler":
        raise ValueError(
            "keras_hub's `SpeculativeSampler` has no mistral_hub equivalent "
            "(it needs a draft model). Pass `sampler` as one of "
            f"{valid}, from keras_hub or `mistral_hub.samplers`."
        )
    cls = _CLASSES.get(class_name)
    if cls is None:
        raise ValueError(
            f"Unknown keras_hub sampler class `{class_name}`. mistral_hub "
            f"translates {valid}."
        )
    try:
        return cls.from_config(config)
    except TypeError as error:
        raise ValueError(
            f"Cannot build `{class_name}` from the keras_hub config "
            f"{config!r}: {error}"
        ) from None
