"""`generate()`'s arguments, validated into one immutable object.

Every check of a `generate()` argument lives in `generation_options()`; the
rest of generation reads the resulting `GenerationOptions` and checks
nothing again. `DecodeOptions` holds the static settings of one compiled
decode loop (the cache key of the compiled function).

Example:
>>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
>>> from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
>>> backbone = MistralBackbone(vocabulary_size=10, num_layers=1,
...     num_query_heads=2, hidden_dim=8, intermediate_dim=16,
...     num_key_value_heads=1)
>>> options = generation_options(MistralCausalLM(backbone),
...     stop_token_ids=[2], max_new_tokens=4, top_k=3, seed=7)
>>> type(options.sampler).__name__, options.sampler.k, options.seed
('TopKSampler', 3, 7)
>>> generation_options(MistralCausalLM(backbone), stop_token_ids=None, seed=-1)
Traceback (most recent call last):
...
ValueError: `seed` must be an int in [0, 4294967295] or None. Received: seed=-1
"""

import collections
import dataclasses
import json
from typing import Any
from typing import Callable
from typing import Optional

import numpy as np
from keras import ops

from mistral_hub import samplers
from mistral_hub.samplers import logits_processors as processors_lib
from mistral_hub.samplers.stop_strings import StopStringMatcher
from mistral_hub.utils import validation

# NumPy's seed range: `generate()` seeds a `np.random.RandomState` with it.
_MAX_SEED = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """The validated arguments of one `generate()` call.

    Attributes:
        sampler: the sampler to use (the compiled one, or an override with
            the per-call `temperature`/`top_k`/`top_p` applied).
        max_length: int or None. Total length of prompt plus completion.
        max_new_tokens: int or None. Tokens to generate per prompt.
        stop_token_ids: tuple of ids that end a row, or None.
        strip_prompt: bool. Return only the generated part.
        seed: int or None.
        streamer: callable receiving text deltas, or None.
        stop_condition: a `StopStringMatcher` for `stop_strings`, or None.
        keep_stop_strings: bool.
        num_return_sequences: int. Samples per prompt.
        logits_processors: tuple of callables, the built-in controls first.
    """

    sampler: Any
    max_length: Optional[int] = None
    max_new_tokens: Optional[int] = None
    stop_token_ids: Optional[tuple] = None
    strip_prompt: bool = False
    seed: Optional[int] = None
    streamer: Optional[Callable] = None
    stop_condition: Optional[StopStringMatcher] = None
    keep_stop_strings: bool = False
    num_return_sequences: int = 1
    logits_processors: tuple = ()

    @property
    def stop_strings(self):
        """The stop strings (a list), or an empty tuple without them."""
        return self.stop_condition.stop_strings if self.stop_condition else ()


class DecodeOptions(
    collections.namedtuple(
        "DecodeOptions",
        [
            "stop_token_ids",
            "prefill_length",
            "stream",
            "logits_processors",
            "stop_condition",
            "left_padded",
        ],
        defaults=[None, None, False, (), None, False],
    )
):
    """Static settings of one compiled decode loop (part of its cache key).

    The arguments of `generate_step` other than the inputs, the sampler and
    the seed; `stream` stands for the streaming callback.
    """


def generation_options(
    causal_lm,
    max_length=None,
    stop_token_ids="auto",
    strip_prompt=False,
    *,
    max_new_tokens=None,
    sampler=None,
    seed=None,
    streamer=None,
    temperature=None,
    top_k=None,
    top_p=None,
    min_p=None,
    repetition_penalty=None,
    presence_penalty=None,
    frequency_penalty=None,
    stop_strings=None,
    keep_stop_strings=False,
    num_return_sequences=1,
    logits_processors=None,
):
    """Validates `generate()`'s arguments for `causal_lm`.

    Takes `generate()`'s arguments other than `inputs` (see
    `CausalLM.generate` for their meaning).

    Returns:
        A `GenerationOptions`.

    Raises:
        ValueError: naming the first invalid argument, what was expected and
            what was received.
    """
    has_preprocessor = causal_lm.preprocessor is not None
    stop_token_ids = resolve_stop_token_ids(causal_lm, stop_token_ids)
    max_length = validation.check_int("max_length", max_length, low=2, allow_none=True)
    max_new_tokens = validation.check_int(
        "max_new_tokens", max_new_tokens, low=1, allow_none=True
    )
    if max_length is not None and max_new_tokens is not None:
        raise ValueError("Pass either `max_length` or `max_new_tokens`, not both.")
    strip_prompt = validation.check_bool("strip_prompt", strip_prompt)
    keep_stop_strings = validation.check_bool("keep_stop_strings", keep_stop_strings)
    if streamer is not None and not has_preprocessor:
        raise ValueError("`streamer` needs a preprocessor to decode text.")
    if streamer is not None and not callable(streamer):
        raise ValueError(f"`streamer` must be callable. Received: {streamer!r}")
    seed = validation.check_int("seed", seed, low=0, high=_MAX_SEED, allow_none=True)
    if temperature is not None:
        temperature = validation.check_positive_float("temperature", temperature)
    top_k = validation.check_positive_int("top_k", top_k, allow_none=True)
    if top_p is not None:
        top_p = validation.check_finite_float("top_p", top_p, low=0, high=1, include_low=False)
    sampler = _override_sampler(
        samplers.get(sampler) or causal_lm.sampler, temperature, top_k, top_p
    )
    num_return_sequences = validation.check_positive_int(
        "num_return_sequences", num_return_sequences
    )
    if num_return_sequences > 1 and isinstance(
        sampler, (samplers.GreedySampler, samplers.BeamSampler)
    ):
        raise ValueError(
            "`num_return_sequences` > 1 needs a sampling sampler (top_k, "
            f"top_p, random, ...); {type(sampler).__name__} would return "
            "identical sequences."
        )
    processors = _builtin_processors(
        min_p, repetition_penalty, presence_penalty, frequency_penalty
    ) + _check_processors(logits_processors)
    stop_condition = None
    if stop_strings is not None:
        if not has_preprocessor:
            raise ValueError("`stop_strings` needs a preprocessor to decode text.")
        if isinstance(sampler, samplers.BeamSampler):
            raise ValueError("`stop_strings` is not supported with beam search.")
        stop_condition = _stop_string_matcher(causal_lm, _check_stop_strings(stop_strings))
    return GenerationOptions(
        sampler=sampler,
        max_length=max_length,
        max_new_tokens=max_new_tokens,
        stop_token_ids=stop_token_ids,
        strip_prompt=strip_prompt,
        seed=seed,
        streamer=streamer,
        stop_condition=stop_condition,
        keep_stop_strings=keep_stop_strings,
        num_return_sequences=num_return_sequences,
        logits_processors=processors,
    )


def resolve_stop_token_ids(causal_lm, stop_token_ids):
    """Turns `generate()`'s `stop_token_ids` into a tuple of ids or None.

    `"auto"` is the checkpoint's generation config (`default_stop_token_ids`)
    or else the tokenizer's end token.
    """
    if isinstance(stop_token_ids, str):
        if stop_token_ids != "auto":
            raise ValueError(
                '`stop_token_ids` must be "auto", None or a sequence of '
                f"ints. Received: {stop_token_ids!r}"
            )
        if causal_lm.preprocessor is None:
            raise ValueError(
                '`stop_token_ids="auto"` needs a preprocessor to find the '
                "end token; pass explicit ids or None."
            )
        configured = getattr(causal_lm, "default_stop_token_ids", None)
        if configured:
            return tuple(int(i) for i in configured)
        return (causal_lm.preprocessor.tokenizer.end_token_id,)
    if stop_token_ids is None:
        return None
    vocabulary_size = causal_lm.backbone.vocabulary_size
    if hasattr(stop_token_ids, "shape"):
        # An array or tensor of ids: its elements as Python numbers.
        array = np.asarray(ops.convert_to_numpy(stop_token_ids))
        stop_token_ids = array.tolist() if array.ndim == 1 else stop_token_ids
    try:
        ids = [validation.check_int("stop_token_ids", i) for i in stop_token_ids]
    except (TypeError, ValueError):
        ids = None
    if not ids or any(i < 0 or i >= vocabulary_size for i in ids):
        raise ValueError(
            "`stop_token_ids` must be \"auto\", None or a non-empty sequence of "
            f"ids in [0, {vocabulary_size}). Received: {stop_token_ids!r}"
        )
    return tuple(ids)


def sampler_key(sampler):
    """A hashable identity of a sampler's type and configuration."""
    return (type(sampler).__name__, json.dumps(sampler.get_config(), sort_keys=True, default=str))


def _override_sampler(sampler, temperature, top_k, top_p):
    """Applies per-call `temperature` / `top_k` / `top_p` to a sampler."""
    if temperature is None and top_k is None and top_p is None:
        return sampler
    config = sampler.get_config()
    temperature = temperature if temperature is not None else config.get("temperature", 1.0)
    seed = config.get("seed")
    if top_p is not None:
        k = top_k if top_k is not None else config.get("k") if isinstance(sampler, samplers.TopKSampler) else None
        return samplers.TopPSampler(p=top_p, k=k, seed=seed, temperature=temperature)
    if top_k is not None:
        return samplers.TopKSampler(k=top_k, seed=seed, temperature=temperature)
    return type(sampler).from_config({**config, "temperature": temperature})


def _builtin_processors(min_p, repetition_penalty, presence_penalty, frequency_penalty):
    processors = []
    if repetition_penalty is not None:
        processors.append(processors_lib.RepetitionPenalty(repetition_penalty))
    if presence_penalty is not None or frequency_penalty is not None:
        processors.append(
            processors_lib.OccurrencePenalty(presence_penalty or 0.0, frequency_penalty or 0.0)
        )
    if min_p is not None:
        processors.append(processors_lib.MinP(min_p))
    return tuple(processors)


def _check_processors(processors):
    if processors is None:
        return ()
    if callable(processors):
        processors = [processors]
    if not isinstance(processors, (list, tuple)):
        raise ValueError(
            "`logits_processors` must be a list of callables. "
            f"Received: logits_processors={processors!r}"
        )
    for processor in processors:
        if not callable(processor):
            raise ValueError(
                "`logits_processors` must be a list of callables "
                f"`(logits, token_ids, index, prompt_mask) -> logits`. Received: {processor!r}"
            )
    return tuple(processors)


def _check_stop_strings(stop_strings):
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    if (
        not isinstance(stop_strings, (list, tuple))
        or not stop_strings
        or any(not isinstance(s, str) or not s for s in stop_strings)
    ):
        raise ValueError(
            "`stop_strings` must be a non-empty string or a non-empty list of "
            f"non-empty strings. Received: stop_strings={stop_strings!r}"
        )
    return tuple(stop_strings)


def _stop_string_matcher(causal_lm, stop_strings):
    # Building the matcher reads every token's bytes: keep one per set of
    # stop strings on the model.
    matchers = causal_lm.__dict__.setdefault("_stop_string_matchers", {})
    if stop_strings not in matchers:
        matchers[stop_strings] = StopStringMatcher(
            causal_lm.preprocessor.tokenizer.token_bytes(), stop_strings
        )
    return matchers[stop_strings]
