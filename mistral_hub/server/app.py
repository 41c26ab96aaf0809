"""The OpenAI-compatible HTTP API: a Starlette app over `GenerationEngine`.

Routes: `GET /v1/models`, `POST /v1/completions`, `POST
/v1/chat/completions` (with server-sent events for `stream: true`) and
`GET /health`. Errors use OpenAI's schema and status codes.
"""

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.responses import StreamingResponse
from starlette.routing import Route

from mistral_hub.server import protocol
from mistral_hub.server import responses
from mistral_hub.server.engine import GenerationEngine
from mistral_hub.server.engine import Job
from mistral_hub.server.protocol import APIError

logger = logging.getLogger("mistral_hub.server")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def create_app(
    causal_lm,
    model_name="mistral_hub",
    api_key=None,
    context_length=None,
    max_batch_size=32,
    batch_window=0.01,
    max_pending=256,
    length_bucket=16,
    request_timeout=600.0,
):
    """Builds the OpenAI-compatible ASGI app for a causal LM.

    Args:
        causal_lm: a `CausalLM` with a preprocessor, e.g.
            `MistralCausalLM.from_preset(...)`.
        model_name: str. The model id clients pass as `model`.
        api_key: optional str. Requests must then send `Authorization:
            Bearer <api_key>` (`/health` excepted); others get HTTP 401.
        context_length: int. Most tokens of prompt plus completion;
            defaults to the preprocessor's `sequence_length`.
        max_batch_size: int. Most rows per `generate()` call.
        batch_window: float. Seconds a request waits for others to batch
            with.
        max_pending: int. Most requests in progress; more get HTTP 503.
        length_bucket: int. Non-streamed batches generate to a multiple of
            this many tokens (fewer compiled shapes, a few wasted steps).
        request_timeout: float. Seconds before a request gives up (504).

    Returns:
        A Starlette app; `app.state.engine` is its `GenerationEngine`.

    Example:

    ```python
    import uvicorn
    from mistral_hub import MistralCausalLM
    from mistral_hub.server import create_app

    app = create_app(MistralCausalLM.from_preset("mistral_hub_demo"), "demo")
    uvicorn.run(app, host="127.0.0.1", port=8000)
    ```
    """
    engine = GenerationEngine(
        causal_lm,
        max_batch_size=max_batch_size,
        batch_window=batch_window,
        max_pending=max_pending,
        length_bucket=length_bucket,
    )
    server = _Server(causal_lm, engine, model_name, api_key, context_length, request_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    app = Starlette(
        routes=[
            Route("/health", server.health, methods=["GET"]),
            Route("/v1/models", server.models, methods=["GET"]),
            Route("/v1/completions", server.completions, methods=["POST"]),
            Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.engine = engine
    return app


def _error_response(error):
    return JSONResponse(error.body(), status_code=error.status)


async def _http_error(request, exc):
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    message = exc.detail
    if exc.status_code == 404:
        message = f"Unknown endpoint {request.method} {request.url.path}."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    return _error_response(APIError(exc.status_code, message, type=kind))


def _endpoint(handler):
    """Answers every failure of `handler` in OpenAI's error schema."""

    async def wrapped(self, request):
        try:
            return await handler(self, request)
        except APIError as error:
            return _error_response(error)
        except _ClientGone:
            return Response(status_code=499)
        except Exception as error:
            logger.exception("Request failed")
            return _error_response(_internal(error))

    return wrapped


def _internal(error):
    if isinstance(error, APIError):
        return error
    if isinstance(error, ValueError):
        return APIError(400, str(error))
    return APIError(500, f"The server failed: {type(error).__name__}: {error}", type="server_error")


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def _sse(data):
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class _Server:
    def __init__(self, causal_lm, engine, model_name, api_key, context_length, request_timeout):
        self.causal_lm = causal_lm
        self.tokenizer = causal_lm.preprocessor.tokenizer
        self.engine = engine
        self.model_name = model_name
        self.api_key = api_key
        self.context_length = int(context_length or causal_lm.preprocessor.sequence_length)
        self.request_timeout = float(request_timeout)
        self.created = responses.now()
        self.vocabulary_size = causal_lm.backbone.vocabulary_size

    # --- helpers -------------------------------------------------------------

    def _authorize(self, request):
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            raise APIError(
                401,
                "Incorrect or missing API key. Pass it as `Authorization: Bearer <key>`.",
                code="invalid_api_key",
            )

    async def _json(self, request):
        raw = await request.body()
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise APIError(
                400,
                f"We could not parse the JSON body of your request ({error}). "
                "The body must be a JSON object.",
            ) from None

    def _encode_prompt(self, prompt):
        if isinstance(prompt, str):
            return self.causal_lm._tokenize_prompts([prompt])[0]
        bad = [i for i in prompt if not 0 <= i < self.vocabulary_size]
        if bad:
            raise APIError(
                400,
                f"Token ids in `prompt` must be in [0, {self.vocabulary_size}). "
                f"Received {bad[:5]}.",
                param="prompt",
                code="invalid_value",
            )
        return list(prompt)

    def _max_new_tokens(self, prompts, options, param):
        """Checks the request fits; returns its `max_new_tokens`."""
        rows = len(prompts) * options.n
        if rows > self.engine.max_batch_size:
            raise APIError(
                400,
                f"A request may ask for at most {self.engine.max_batch_size} sequences "
                f"(prompts times `n`). Received {rows}.",
                param="n",
                code="invalid_value",
            )
        requested = options.max_new_tokens
        longest = max(len(p) for p in prompts)
        if longest < 1:
            raise APIError(400, "The prompt is empty.", param=param, code="invalid_value")
        if longest + (requested or 1) > self.context_length:
            if requested:
                asked = (
                    f"{longest + requested} tokens ({longest} in the prompt, {requested} "
                    "for the completion)"
                )
            else:
                asked = f"{longest} tokens for the prompt alone"
            raise APIError(
                400,
                f"This model's maximum context length is {self.context_length} tokens. "
                f"However, you requested {asked}. Please reduce the length of the "
                "prompt or of the completion.",
                param=param,
                code="context_length_exceeded",
            )
        return requested or self.context_length - longest

    def _token_text(self, token_id):
        piece = (
            self.engine.token_bytes[token_id] if token_id < len(self.engine.token_bytes) else b""
        )
        if piece:
            return piece.decode("utf-8", errors="replace")
        return self.tokenizer.id_to_token(token_id)

    async def _wait(self, request, job):
        """Runs `job`; cancels it if the client disconnects first."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def resolve(results, error):
            if not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(results)

        job.on_done = lambda results, error: loop.call_soon_threadsafe(resolve, results, error)
        self.engine.submit(job)
        deadline = loop.time() + self.request_timeout
        try:
            while not future.done():
                await asyncio.wait({future}, timeout=0.25)
                if future.done():
                    break
                if await request.is_disconnected():
                    raise _ClientGone()
                if loop.time() > deadline:
                    raise APIError(
                        504, "The request timed out.", type="server_error", code="timeout"
                    )
        except BaseException:
            self.engine.cancel(job)
            raise
        try:
            return future.result()
        except Exception as error:
            raise _internal(error) from None

    def _stream(self, job, fmt, include_usage, prompt_tokens):
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue()
        job.on_delta = lambda index, text: loop.call_soon_threadsafe(
            queue.put_nowait, ("delta", index, text)
        )
        job.on_done = lambda results, error: loop.call_soon_threadsafe(
            queue.put_nowait, ("done", results, error)
        )
        self.engine.submit(job)  # A full server answers 503 before streaming.

        async def events():
            finished = False
            try:
                for chunk in fmt.start_chunks():
                    yield _sse(chunk)
                while True:
                    try:
                        kind, first, second = await asyncio.wait_for(
                            queue.get(), self.request_timeout
                        )
                    except asyncio.TimeoutError:
                        yield _sse(
                            APIError(504, "The request timed out.", type="server_error").body()
                        )
                        break
                    if kind == "delta":
                        yield _sse(fmt.delta_chunk(first, second))
                        continue
                    finished = True
                    if second is not None:
                        yield _sse(_internal(second).body())
                        break
                    for chunk in fmt.final_chunks(first, streamed=job.stream):
                        yield _sse(chunk)
                    if include_usage:
                        yield _sse(fmt.usage_chunk(_usage(prompt_tokens, first)))
                    break
                yield "data: [DONE]\n\n"
            finally:
                if not finished:
                    self.engine.cancel(job)

        return StreamingResponse(events(), media_type="text/event-stream", headers=_SSE_HEADERS)

    # --- routes --------------------------------------------------------------

    async def health(self, request):
        stats = dict(self.engine.stats)
        return JSONResponse(
            {
                "status": "ok",
                "active": self.engine.active(),
                "queued": self.engine.queued(),
                **stats,
            }
        )

    @_endpoint
    async def models(self, request):
        self._authorize(request)
        return JSONResponse(responses.model_list(self.model_name, self.created))

    @_endpoint
    async def completions(self, request):
        self._authorize(request)
        parsed = protocol.parse_completion_request(await self._json(request), self.model_name)
        prompts = [self._encode_prompt(p) for p in parsed.prompts]
        options = dataclasses.replace(
            parsed.options,
            max_new_tokens=self._max_new_tokens(prompts, parsed.options, "prompt"),
        )
        echo_texts = None
        if parsed.echo:
            echo_texts = [
                p if isinstance(p, str) else self.tokenizer.detokenize([p])[0]
                for p in parsed.prompts
            ]
        fmt = responses.CompletionFormat(self.model_name, echo_texts, options.n, self._token_text)
        # Log-probabilities come with the finished text, so those streams
        # send it in one piece at the end.
        job = Job(
            prompts,
            options,
            stream=parsed.stream and parsed.logprobs is None,
            logprobs=parsed.logprobs,
        )
        prompt_tokens = sum(len(p) for p in prompts)
        if parsed.stream:
            return self._stream(job, fmt, parsed.include_usage, prompt_tokens)
        results = await self._wait(request, job)
        return JSONResponse(fmt.response(results, _usage(prompt_tokens, results)))

    @_endpoint
    async def chat_completions(self, request):
        self._authorize(request)
        parsed = protocol.parse_chat_request(await self._json(request), self.model_name)
        tools, forced = self._tools(parsed)
        try:
            if tools:
                prompt = self.tokenizer.apply_chat_template(parsed.messages, tools=tools)
            else:
                prompt = self.tokenizer.apply_chat_template(parsed.messages)
        except ValueError as error:
            raise APIError(400, str(error), param="messages", code="invalid_value") from None
        if forced:
            prompt = prompt + [self._tool_calls_token_id()]
        options = dataclasses.replace(
            parsed.options,
            max_new_tokens=self._max_new_tokens([prompt], parsed.options, "messages"),
        )

        def read_reply(result):
            return self._read_reply(result, bool(tools), forced)

        fmt = responses.ChatFormat(self.model_name, options.n, self._token_text, read_reply)
        # Tool calls are only known once the reply is complete, and
        # log-probabilities come with the finished text: such streams send
        # the reply in one piece at the end.
        job = Job(
            [prompt],
            options,
            stream=parsed.stream and not tools and not parsed.logprobs,
            logprobs=parsed.top_logprobs if parsed.logprobs else None,
        )
        if parsed.stream:
            return self._stream(job, fmt, parsed.include_usage, len(prompt))
        results = await self._wait(request, job)
        return JSONResponse(fmt.response(results, _usage(len(prompt), results)))

    def _tools(self, parsed):
        """The tools to show the model, and whether a call is forced."""
        if parsed.tool_choice == "none" or not parsed.tools:
            return None, False
        if not hasattr(self.tokenizer, "parse_reply"):
            raise APIError(400, "This model's tokenizer has no function calling.", param="tools")
        if parsed.tool_choice == "auto":
            return parsed.tools, False
        if parsed.tool_choice == "required":
            return parsed.tools, True
        named = [t for t in parsed.tools if t.get("function", {}).get("name") == parsed.tool_choice]
        return named, True

    def _tool_calls_token_id(self):
        # Tokenizers with `parse_reply` (checked in `_tools`) name it.
        token_id = self.tokenizer.tool_calls_token_id()
        if token_id is None:
            raise APIError(400, "This vocabulary has no [TOOL_CALLS] token.", param="tool_choice")
        return token_id

    def _read_reply(self, result, tools, forced):
        message = {"role": "assistant", "content": result.text}
        if not tools:
            return message, result.finish_reason
        ids = result.token_ids
        if ids and ids[-1] in self.engine.stop_token_ids:
            ids = ids[:-1]
        if forced:
            ids = [self._tool_calls_token_id()] + ids
        try:
            reply = self.tokenizer.parse_reply(ids)
        except ValueError:
            # A malformed call is returned as text, as it was written.
            return message, result.finish_reason
        if not reply["tool_calls"]:
            return message, result.finish_reason
        return (
            {"role": "assistant", "content": reply["content"], "tool_calls": reply["tool_calls"]},
            "tool_calls",
        )


def _usage(prompt_tokens, results):
    return responses.usage(prompt_tokens, sum(len(r.token_ids) for r in results))
