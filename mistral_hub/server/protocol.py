"""The OpenAI API schema, requests: validation into `generate()` controls.

Requests are checked field by field against the OpenAI API (types, ranges,
unknown fields) and mapped to `generate()` controls; every problem becomes an
`APIError` that renders in OpenAI's error schema with the right HTTP status.
Response bodies are built in `responses.py`.
"""

import dataclasses
import math
from collections.abc import Mapping

# Fields OpenAI clients may send that change nothing here (metadata, routing
# or OpenAI-side features); accepted and ignored.
_IGNORED = ("user", "metadata", "store", "service_tier", "parallel_tool_calls")
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions.
MAX_STOP_STRINGS = 4


class APIError(Exception):
    """An error answered in OpenAI's schema.

    Args:
        status: HTTP status code.
        message: what went wrong, for the client.
        type: OpenAI error type (`"invalid_request_error"`, ...).
        param: the request field at fault, if any.
        code: OpenAI error code (`"model_not_found"`, ...), if any.

    Example:
    >>> APIError(404, "No such model.", code="model_not_found").body()["error"]["code"]
    'model_not_found'
    """

    def __init__(self, status, message, type="invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self):
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _invalid(param, message):
    return APIError(400, message, param=param, code="invalid_value" if param else None)


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """The per-request generation controls, mapped to `generate()`.

    Requests whose options are equal (except `max_new_tokens`, the longest
    of a batch is used and each row is cut to its own) can share one
    `generate()` call; see `batch_key()`. `temperature=0` means greedy
    decoding; any int `seed` works (taken modulo 2**32).

    Example:
    >>> options = GenerationOptions(max_new_tokens=8, temperature=0.7, top_p=0.9, seed=3)
    >>> options.generate_kwargs()
    {'sampler': 'random', 'temperature': 0.7, 'seed': 3, 'top_p': 0.9}
    >>> options.batch_key() is None  # seeded sampling runs alone
    True
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    n: int = 1

    @property
    def greedy(self):
        return self.temperature == 0

    def generate_kwargs(self):
        """The `generate()` arguments for these options, lengths aside (one
        row per prompt for greedy decoding, whose `n` copies are identical)."""
        kwargs = {}
        if self.greedy:
            kwargs["sampler"] = "greedy"
        else:
            seed = None if self.seed is None else self.seed % 2**32
            kwargs.update(sampler="random", temperature=self.temperature, seed=seed)
            if self.top_p < 1:
                kwargs["top_p"] = self.top_p
            if self.n > 1:
                kwargs["num_return_sequences"] = self.n
        if self.stop:
            kwargs["stop_strings"] = list(self.stop)
        if self.presence_penalty or self.frequency_penalty:
            kwargs["presence_penalty"] = self.presence_penalty
            kwargs["frequency_penalty"] = self.frequency_penalty
        return kwargs

    def batch_key(self):
        """What requests must share to be generated together, or None.

        A seeded sampling request runs alone, so that it gives what the same
        lone `generate(seed=...)` call gives (random draws depend on the
        batch shape). Greedy decoding ignores the seed.
        """
        if self.seed is not None and not self.greedy:
            return None
        return dataclasses.replace(self, max_new_tokens=0, seed=None)


# --- field checks ------------------------------------------------------------


def _type_name(value):
    return "null" if value is None else type(value).__name__


def _number(body, name, default, low, high, low_inclusive=True):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _invalid(name, f"`{name}` must be a number. Received {_type_name(value)} {value!r}.")
    if value > high or value < low or (value == low and not low_inclusive):
        bracket = "[" if low_inclusive else "("
        raise _invalid(name, f"`{name}` must be in {bracket}{low}, {high}]. Received {value!r}.")
    return float(value)


def _integer(body, name, default, low, high=None):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(
            name, f"`{name}` must be an integer. Received {_type_name(value)} {value!r}."
        )
    if value < low or (high is not None and value > high):
        limit = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _invalid(name, f"`{name}` must be {limit}. Received {value}.")
    return value


def _boolean(body, name, default=False):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(name, f"`{name}` must be a boolean. Received {_type_name(value)} {value!r}.")
    return value


def _stop(body):
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_STOP_STRINGS
        or not all(isinstance(s, str) and s for s in value)
    ):
        raise _invalid(
            "stop",
            f"`stop` must be a non-empty string or a list of 1 to {MAX_STOP_STRINGS} "
            f"non-empty strings. Received {value!r}.",
        )
    return tuple(value)


def _stream_options(body, stream):
    value = body.get("stream_options")
    if value is None:
        return False
    if not stream:
        raise _invalid("stream_options", "`stream_options` is only allowed with `stream: true`.")
    if not isinstance(value, Mapping) or set(value) - {"include_usage", "include_obfuscation"}:
        raise _invalid(
            "stream_options",
            f"`stream_options` must be an object with `include_usage`. Received {value!r}.",
        )
    return _boolean(value, "include_usage")


def _check_fields(body, allowed):
    if not isinstance(body, Mapping):
        raise APIError(400, f"The request body must be a JSON object. Received {_type_name(body)}.")
    for name in body:
        if name not in allowed and name not in _IGNORED:
            raise APIError(
                400,
                f"Unrecognized request argument supplied: {name}",
                param=name,
                code="unknown_parameter",
            )


def _model(body, served_model):
    value = body.get("model")
    if not isinstance(value, str) or not value:
        raise _invalid(
            "model", f"`model` must be a string. Received {_type_name(value)} {value!r}."
        )
    if value != served_model:
        raise APIError(
            404,
            f"The model `{value}` does not exist. This server serves `{served_model}`.",
            param="model",
            code="model_not_found",
        )
    return value


def _options(body, max_tokens):
    return GenerationOptions(
        max_new_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_inclusive=False),
        seed=_integer(body, "seed", None, -(2**63)),
        stop=_stop(body),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        n=_integer(body, "n", 1, 1, 128),
    )


@dataclasses.dataclass
class CompletionRequest:
    """A validated `POST /v1/completions` body.

    Example:
    >>> request = parse_completion_request(
    ...     {"model": "demo", "prompt": ["a", "b"], "n": 2, "stop": "\\n"}, "demo")
    >>> request.prompts, request.options.n, request.options.stop
    (['a', 'b'], 2, ('\\n',))
    """

    prompts: list  # each a str or a list of token ids
    options: GenerationOptions
    stream: bool
    include_usage: bool
    logprobs: int | None
    echo: bool


_COMPLETION_FIELDS = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "stop", "seed", "presence_penalty", "frequency_penalty",
    "logprobs", "echo", "best_of", "logit_bias", "suffix",
}  # fmt: skip


def parse_completion_request(body, served_model):
    """Validates a completions body; `options.max_new_tokens` is None when
    the request leaves it to the server's default."""
    _check_fields(body, _COMPLETION_FIELDS)
    _model(body, served_model)
    prompt = body.get("prompt")
    if isinstance(prompt, str) or _is_ids(prompt):
        prompts = [prompt]
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, str) or (_is_ids(p) and p) for p in prompt)
    ):
        prompts = list(prompt)
    else:
        raise _invalid(
            "prompt",
            "`prompt` must be a string, a list of strings, a list of token ids "
            f"or a list of lists of token ids. Received {_type_name(prompt)} {prompt!r}.",
        )
    if body.get("suffix") is not None:
        raise _invalid("suffix", "`suffix` is not supported by this server.")
    if body.get("logit_bias"):
        raise _invalid("logit_bias", "`logit_bias` is not supported by this server.")
    n = body.get("n") or 1
    if body.get("best_of") is not None and body.get("best_of") != n:
        raise _invalid("best_of", "`best_of` is not supported by this server (use `n`).")
    stream = _boolean(body, "stream")
    max_tokens = _integer(body, "max_tokens", DEFAULT_COMPLETION_MAX_TOKENS, 1)
    logprobs = _integer(body, "logprobs", None, 0, 5)
    echo = _boolean(body, "echo")
    if echo and logprobs is not None:
        raise _invalid("echo", "`echo` with `logprobs` is not supported by this server.")
    return CompletionRequest(
        prompts=prompts,
        options=_options(body, max_tokens),
        stream=stream,
        include_usage=_stream_options(body, stream),
        logprobs=logprobs,
        echo=echo,
    )


def _is_ids(value):
    return (
        isinstance(value, list)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
        and bool(value)
    )


@dataclasses.dataclass
class ChatRequest:
    """A validated `POST /v1/chat/completions` body.

    Example:
    >>> request = parse_chat_request(
    ...     {"model": "demo", "messages": [{"role": "user", "content": "Hi"}],
    ...      "max_completion_tokens": 5, "temperature": 0}, "demo")
    >>> request.options.max_new_tokens, request.options.greedy, request.tool_choice
    (5, True, 'none')
    """

    messages: list
    tools: list | None
    tool_choice: object  # "none" | "auto" | "required" | a function name
    options: GenerationOptions
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int


_CHAT_FIELDS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "n", "stream", "stream_options", "stop", "seed",
    "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs",
    "tools", "tool_choice", "response_format", "logit_bias",
}  # fmt: skip


def parse_chat_request(body, served_model):
    """Validates a chat completions body; `options.max_new_tokens` is None
    when the request leaves it to the server (the rest of the context)."""
    _check_fields(body, _CHAT_FIELDS)
    _model(body, served_model)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", f"`messages` must be a non-empty list. Received {messages!r}.")
    messages = [_chat_message(i, m) for i, m in enumerate(messages)]
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _invalid("tools", f"`tools` must be a list of tools. Received {tools!r}.")
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    if body.get("logit_bias"):
        raise _invalid("logit_bias", "`logit_bias` is not supported by this server.")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise _invalid(
            "response_format",
            'Only `response_format: {"type": "text"}` is supported by this server.',
        )
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise _invalid("max_tokens", "Pass `max_tokens` or `max_completion_tokens`, not both.")
    name = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    max_tokens = _integer(body, name, None, 1)
    stream = _boolean(body, "stream")
    logprobs = _boolean(body, "logprobs")
    top_logprobs = _integer(body, "top_logprobs", 0, 0, 20)
    if top_logprobs and not logprobs:
        raise _invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`.")
    return ChatRequest(
        messages=messages,
        tools=tools or None,
        tool_choice=tool_choice,
        options=_options(body, max_tokens),
        stream=stream,
        include_usage=_stream_options(body, stream),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def _chat_message(index, message):
    """Turns OpenAI content parts into text; the chat template checks the rest."""
    if not isinstance(message, Mapping):
        raise _invalid("messages", f"`messages[{index}]` must be an object. Received {message!r}.")
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if (
                not isinstance(part, Mapping)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise _invalid(
                    "messages",
                    f"`messages[{index}]` content parts must be "
                    f'{{"type": "text", "text": ...}} (this server reads text '
                    f"only). Received {part!r}.",
                )
            texts.append(part["text"])
        message = {**message, "content": "\n\n".join(t for t in texts if t)}
    return dict(message)


def _tool_choice(value, tools):
    if value is None:
        return "auto" if tools else "none"
    if value in ("none", "auto", "required", "any"):
        if value in ("required", "any") and not tools:
            raise _invalid("tool_choice", f"`tool_choice: {value!r}` needs `tools`.")
        return "required" if value == "any" else value
    function = value.get("function") if isinstance(value, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if (
        not isinstance(value, Mapping)
        or value.get("type") != "function"
        or not isinstance(name, str)
    ):
        raise _invalid(
            "tool_choice",
            '`tool_choice` must be "none", "auto", "required" or '
            f'{{"type": "function", "function": {{"name": ...}}}}. Received {value!r}.',
        )
    names = [t.get("function", {}).get("name") for t in tools or [] if isinstance(t, Mapping)]
    if name not in names:
        raise _invalid("tool_choice", f"`tool_choice` names {name!r}, which is not in `tools`.")
    return name
