"""The OpenAI-compatible server, driven by the real `openai` client."""

import concurrent.futures
import contextlib
import http.client
import json
import socket
import threading
import time

import keras
import numpy as np
import openai
import pytest
import uvicorn

from mistral_hub.models.causal_lm import _TokenizedPrompts
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.server import create_app
from tests.models.mistral import tool_calling_helpers as helpers

PROMPT = "def foo"
MESSAGES = [{"role": "user", "content": "What does the os module do?"}]
# The test server generates non-streamed batches to a multiple of 32 tokens;
# tests fill prompts up to 32 tokens so that their generate calls (and the
# in-process references) share compiled shapes.
BUCKET = 32


class _Response:
    def __init__(self, status, headers, body):
        self.status_code, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def _http(method, url, body=None, raw=None, headers=None):
    """A plain HTTP request (for what the openai client never sends)."""
    parsed = http.client.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=300)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        connection.request(
            method,
            parsed.path,
            body=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        response = connection.getresponse()
        return _Response(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        connection.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _running(app):
    """Runs `app` under uvicorn on 127.0.0.1 in a thread; yields its URL."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def demo_lm():
    return MistralCausalLM.from_preset("mistral_hub_demo", dtype="float32")


@pytest.fixture(scope="module")
def demo(demo_lm):
    # A long context, so that a stream can outlast a client.
    app = create_app(
        demo_lm, model_name="demo", batch_window=0.05, context_length=4096, length_bucket=BUCKET
    )
    with _running(app) as url:
        yield url, app.state.engine


@pytest.fixture(scope="module")
def client(demo):
    return openai.OpenAI(base_url=demo[0] + "/v1", api_key="unused", max_retries=0, timeout=300)


def _prompt_ids(causal_lm, messages):
    return causal_lm.preprocessor.tokenizer.apply_chat_template(messages)


@pytest.fixture(scope="module")
def fill(demo_lm):
    """New tokens that fill `PROMPT` and `MESSAGES` up to `BUCKET` tokens."""
    prompt_tokens = len(demo_lm.preprocessor.tokenizer.tokenize(PROMPT)) + 1  # <s>
    return {
        "prompt": (prompt_tokens, BUCKET - prompt_tokens),
        "messages": (
            len(_prompt_ids(demo_lm, MESSAGES)),
            BUCKET - len(_prompt_ids(demo_lm, MESSAGES)),
        ),
    }


@pytest.fixture(scope="module")
def greedy_completion(demo_lm, fill):
    new_tokens = fill["prompt"][1]
    return demo_lm.generate(PROMPT, max_new_tokens=new_tokens, sampler="greedy", strip_prompt=True)


# --- basics ------------------------------------------------------------------


def test_models_and_health(client, demo):
    assert [m.id for m in client.models.list().data] == ["demo"]
    health = _http("GET", demo[0] + "/health").json()
    assert health["status"] == "ok" and health["active"] == 0


def test_completion_matches_generate(client, fill, greedy_completion):
    prompt_tokens, new_tokens = fill["prompt"]
    response = client.completions.create(
        model="demo", prompt=PROMPT, max_tokens=new_tokens, temperature=0
    )
    (choice,) = response.choices
    assert choice.text == greedy_completion and choice.finish_reason == "length"
    assert response.usage.prompt_tokens == prompt_tokens
    assert response.usage.completion_tokens == new_tokens
    assert response.usage.total_tokens == BUCKET
    assert response.object == "text_completion" and response.model == "demo"


def test_chat_matches_chat(client, demo_lm, fill):
    prompt_tokens, new_tokens = fill["messages"]
    response = client.chat.completions.create(
        model="demo", messages=MESSAGES, max_completion_tokens=new_tokens, temperature=0
    )
    expected = demo_lm.chat(MESSAGES, max_new_tokens=new_tokens, sampler="greedy")
    (choice,) = response.choices
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert choice.finish_reason == "length" and choice.message.tool_calls is None
    assert response.usage.prompt_tokens == prompt_tokens


def test_stop_strings(client, fill, greedy_completion):
    assert "\n" in greedy_completion  # A line break to stop at.
    new_tokens = fill["prompt"][1]
    response = client.completions.create(
        model="demo", prompt=PROMPT, max_tokens=new_tokens, temperature=0, stop=["\n", "zzz"]
    )
    (choice,) = response.choices
    assert choice.text == greedy_completion[: greedy_completion.index("\n")]
    assert choice.finish_reason == "stop"
    assert response.usage.completion_tokens < new_tokens


def test_penalties_match_generate(client, demo_lm, fill, greedy_completion):
    new_tokens = fill["prompt"][1]
    penalties = dict(presence_penalty=1.5, frequency_penalty=0.5)
    response = client.completions.create(
        model="demo", prompt=PROMPT, max_tokens=new_tokens, temperature=0, **penalties
    )
    expected = demo_lm.generate(
        PROMPT, max_new_tokens=new_tokens, sampler="greedy", strip_prompt=True, **penalties
    )
    assert response.choices[0].text == expected != greedy_completion


# --- streaming ---------------------------------------------------------------


def test_streamed_text_equals_non_streamed_text(client, demo_lm, fill):
    new_tokens = fill["messages"][1]
    options = dict(
        model="demo", messages=MESSAGES, max_tokens=new_tokens, temperature=0.9, top_p=0.8, seed=7
    )
    whole = client.chat.completions.create(**options)
    chunks = list(
        client.chat.completions.create(
            **options, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    # A seeded request runs alone: it gives what a lone chat() call gives.
    pieces = []
    reply = demo_lm.chat(
        MESSAGES,
        max_new_tokens=new_tokens,
        sampler="random",
        temperature=0.9,
        top_p=0.8,
        seed=7,
        streamer=pieces.append,
    )
    assert text == reply == "".join(pieces)
    # Another seed, another sample.
    other = client.chat.completions.create(**{**options, "seed": 8})
    assert other.choices[0].message.content != text


def test_server_sent_events_format(demo, fill):
    body = {
        "model": "demo", "prompt": PROMPT, "max_tokens": fill["prompt"][1], "temperature": 0.9,
        "top_p": 0.8, "seed": 1, "stream": True,
    }  # fmt: skip
    response = _http("POST", demo[0] + "/v1/completions", body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.body.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    payloads = [json.loads(e[len("data: ") :]) for e in events[:-2]]
    assert all(p["object"] == "text_completion" and p["id"] == payloads[0]["id"] for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_n_choices(client, fill, greedy_completion):
    new_tokens = fill["prompt"][1]
    sampled = client.completions.create(
        model="demo",
        prompt=[PROMPT, "import os"],
        max_tokens=new_tokens,
        temperature=1.0,
        n=2,
        seed=3,
    )
    assert [c.index for c in sampled.choices] == [0, 1, 2, 3]
    assert len({c.text for c in sampled.choices}) == 4
    assert 4 <= sampled.usage.completion_tokens <= 4 * new_tokens
    greedy = client.completions.create(
        model="demo", prompt=PROMPT, max_tokens=new_tokens, temperature=0, n=2
    )
    assert [c.text for c in greedy.choices] == [greedy_completion] * 2
    assert greedy.usage.completion_tokens == 2 * new_tokens


# --- log-probabilities -------------------------------------------------------


def _greedy_ids(causal_lm, prompt_ids, new_tokens):
    outputs = causal_lm.generate(
        _TokenizedPrompts([prompt_ids], False, return_token_ids=True),
        max_new_tokens=new_tokens,
        sampler="greedy",
        strip_prompt=True,
    )
    return outputs["token_ids"][0][outputs["padding_mask"][0]].tolist()


def test_logprobs_are_the_models_log_softmax(client, demo_lm, fill):
    prompt_tokens, new_tokens = fill["messages"]
    response = client.chat.completions.create(
        model="demo", messages=MESSAGES, max_tokens=new_tokens, temperature=0, logprobs=True,
        top_logprobs=3,
    )  # fmt: skip
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens == new_tokens
    ids = _greedy_ids(demo_lm, _prompt_ids(demo_lm, MESSAGES), new_tokens)
    token_bytes = demo_lm.preprocessor.tokenizer.token_bytes()
    assert [bytes(entry.bytes) for entry in content] == [token_bytes[i] for i in ids]
    # One full forward pass of the functional model (no KV cache).
    token_ids = np.array([_prompt_ids(demo_lm, MESSAGES) + ids])
    logits = demo_lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
    log_probs = keras.ops.convert_to_numpy(keras.ops.log_softmax(logits[0], axis=-1))
    for position, (entry, token_id) in enumerate(zip(content, ids)):
        row = log_probs[prompt_tokens - 1 + position]
        assert token_id == np.argmax(row)  # Greedy: the most likely token.
        np.testing.assert_allclose(entry.logprob, row[token_id], atol=1e-4)
        assert [t.token for t in entry.top_logprobs][0] == entry.token
        np.testing.assert_allclose(
            [t.logprob for t in entry.top_logprobs], np.sort(row)[::-1][:3], atol=1e-4
        )
    completion = client.completions.create(
        model="demo", prompt=PROMPT, max_tokens=fill["prompt"][1], temperature=0, logprobs=2
    )
    logprobs = completion.choices[0].logprobs
    assert "".join(logprobs.tokens).strip() == completion.choices[0].text.strip()
    assert len(logprobs.token_logprobs) == fill["prompt"][1]
    assert all(
        len(top) == 2 and max(top.values()) >= lp - 1e-6
        for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs)
    )
    assert logprobs.text_offset[0] == 0


# --- errors ------------------------------------------------------------------


def _error(response):
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    "body, status, param, match",
    [
        (
            {"model": "demo", "prompt": "x", "temperature": "hot"},
            400,
            "temperature",
            "must be a number",
        ),
        ({"model": "demo", "prompt": "x", "max_tokens": 0}, 400, "max_tokens", "at least 1"),
        ({"model": "demo", "prompt": "x", "n": 1.5}, 400, "n", "must be an integer"),
        ({"model": "demo", "prompt": "x", "stop": ["a"] * 5}, 400, "stop", "1 to 4"),
        (
            {"model": "demo", "prompt": "x", "colour": "red"},
            400,
            "colour",
            "Unrecognized request argument",
        ),
        ({"model": "demo", "prompt": 3}, 400, "prompt", "`prompt` must be a string"),
        ({"model": "gpt-4", "prompt": "x"}, 404, "model", "does not exist"),
        ({"model": "demo", "prompt": [99999]}, 400, "prompt", "Token ids"),
        ({"model": "demo", "prompt": ["x"] * 5, "n": 8}, 400, "n", "at most 32 sequences"),
        (
            {"model": "demo", "prompt": "word " * 5000, "max_tokens": 5},
            400,
            "prompt",
            "maximum context length is 4096",
        ),
    ],
)
def test_completion_errors(demo, body, status, param, match):
    response = _http("POST", demo[0] + "/v1/completions", body)
    assert response.status_code == status
    error = _error(response)
    assert error["param"] == param and match in error["message"]


def test_other_errors(client, demo):
    url = demo[0]
    response = _http("POST", url + "/v1/chat/completions", raw=b"{not json")
    assert response.status_code == 400 and "could not parse the JSON" in _error(response)["message"]
    with pytest.raises(openai.BadRequestError, match="no function calling"):
        client.chat.completions.create(
            model="demo", messages=MESSAGES, tools=helpers.TOOLS, max_tokens=2
        )
    with pytest.raises(openai.BadRequestError, match="unknown role"):
        client.chat.completions.create(model="demo", messages=[{"role": "robot", "content": "x"}])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="mistral-large", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="demo", messages=MESSAGES, max_tokens=10**6)
    assert info.value.code == "context_length_exceeded"
    assert _http("GET", url + "/v1/nothing").status_code == 404
    assert _error(_http("GET", url + "/v1/chat/completions"))["message"].startswith("Method GET")


def test_disconnected_stream_frees_its_slot(client, demo):
    url, engine = demo
    cancelled = engine.stats["cancelled"]
    body = {"model": "demo", "prompt": PROMPT, "max_tokens": 3000, "temperature": 0, "stream": True}
    parsed = http.client.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=300)
    connection.request(
        "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    assert response.readline().startswith(b"data: {")  # The first chunk, then hang up.
    connection.close()
    deadline = time.monotonic() + 60
    while engine.active() or engine.stats["cancelled"] == cancelled:
        assert time.monotonic() < deadline, "the cancelled request kept its slot"
        time.sleep(0.05)
    # The model still serves (the aborted batch left it usable).
    response = client.completions.create(model="demo", prompt=PROMPT, max_tokens=3, temperature=0)
    assert response.choices[0].finish_reason == "length"


# --- load --------------------------------------------------------------------


def test_concurrent_clients_are_batched(client, demo):
    url, engine = demo
    prompts = ["def foo", "import os", "class Bar", "The list"]
    expected = {
        p: client.completions.create(model="demo", prompt=p, max_tokens=8, temperature=0)
        .choices[0]
        .text
        for p in prompts
    }
    before = dict(engine.stats)

    def ask(i):
        prompt = prompts[i % len(prompts)]
        response = client.completions.create(
            model="demo", prompt=prompt, max_tokens=8, temperature=0
        )
        return prompt, response.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, range(32), timeout=600))
    assert len(answers) == 32
    for prompt, text in answers:
        assert text == expected[prompt]
    calls = engine.stats["generate_calls"] - before["generate_calls"]
    assert engine.stats["requests"] - before["requests"] == 32
    assert calls < 32 / 2, f"{calls} generate calls for 32 requests: not batched"
    health = _http("GET", url + "/health").json()
    assert health["status"] == "ok" and health["active"] == 0 and health["queued"] == 0
    assert client.completions.create(model="demo", prompt=PROMPT, max_tokens=2).choices


# --- function calling ----------------------------------------------------------


@pytest.fixture(scope="module")
def tool_server():
    app = create_app(
        helpers.tool_calling_causal_lm(), model_name="tools", api_key="s3cret", context_length=512
    )
    with _running(app) as url:
        yield url


def test_api_key(tool_server):
    anonymous = openai.OpenAI(base_url=tool_server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        anonymous.models.list()
    assert info.value.code == "invalid_api_key"
    response = _http("POST", tool_server + "/v1/chat/completions", {"model": "tools"})
    assert response.status_code == 401 and _error(response)["code"] == "invalid_api_key"
    assert _http("GET", tool_server + "/health").status_code == 200


def test_tool_calls(tool_server):
    tools_client = openai.OpenAI(
        base_url=tool_server + "/v1", api_key="s3cret", max_retries=0, timeout=300
    )
    options = dict(model="tools", tools=helpers.TOOLS, max_tokens=48, temperature=0)
    response = tools_client.chat.completions.create(messages=helpers.WEATHER_QUESTION, **options)
    (choice,) = response.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id == helpers.CALL_ID and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    # The client sends the call and its result back: the model answers.
    messages = helpers.WEATHER_QUESTION + [
        choice.message.model_dump(exclude_none=True),
        helpers.TOOL_RESULT,
    ]
    answer = tools_client.chat.completions.create(messages=messages, **options)
    assert answer.choices[0].message.content == helpers.ANSWER
    assert answer.choices[0].finish_reason == "stop"

    # Streamed, the call arrives as a tool_calls delta.
    chunks = list(
        tools_client.chat.completions.create(
            messages=helpers.WEATHER_QUESTION, stream=True, **options
        )
    )
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert [(d.index, d.id, d.function.name) for d in deltas] == [
        (0, helpers.CALL_ID, "get_weather")
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # A named tool_choice forces the call; "none" hides the tools.
    forced = tools_client.chat.completions.create(
        messages=helpers.WEATHER_QUESTION,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        **options,
    )
    assert forced.choices[0].message.tool_calls[0].function.name == "get_weather"
    hidden = tools_client.chat.completions.create(
        messages=helpers.WEATHER_QUESTION, tool_choice="none", **options
    )
    assert hidden.choices[0].finish_reason != "tool_calls"
    assert hidden.usage.prompt_tokens < response.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError, match="not in `tools`"):
        tools_client.chat.completions.create(
            messages=helpers.WEATHER_QUESTION,
            tool_choice={"type": "function", "function": {"name": "nope"}},
            **options,
        )
