"""The OpenAI API schema, responses: completion and chat bodies and chunks."""

import time
import uuid

def new_id(prefix):
    return f"{prefix}-{uuid.uuid4().hex}"


def now():
    return int(time.time())


def usage(prompt_tokens, completion_tokens):
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def model_list(model, created):
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": created, "owned_by": "mistral_hub"}],
    }


def _completion_logprobs(entries, token_text, offset):
    """The legacy completions `logprobs` object."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    for token_id, logprob, alternatives in entries:
        text = token_text(token_id)
        tokens.append(text)
        token_logprobs.append(logprob)
        top.append({token_text(i): lp for i, lp in alternatives})
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }


def _chat_logprobs(entries, token_text):
    """The chat completions `logprobs` object."""

    def entry(token_id, logprob):
        text = token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            {**entry(token_id, logprob), "top_logprobs": [entry(i, lp) for i, lp in alternatives]}
            for token_id, logprob, alternatives in entries
        ]
    }


class CompletionFormat:
    """Builds `/v1/completions` bodies and stream chunks.

    Args:
        model: the served model name.
        echo_texts: per prompt, the text to put before its completions
            (`echo`), or None.
        n: choices per prompt.
        token_text: `fn(token_id) -> str` for logprobs.

    Example:
    >>> from mistral_hub.server.engine import RowResult
    >>> fmt = CompletionFormat("demo", None, 1, str)
    >>> body = fmt.response([RowResult([7, 2], "Hi", "stop")], usage(3, 2))
    >>> body["choices"][0]["text"], body["usage"]["total_tokens"]
    ('Hi', 5)
    """

    object = "text_completion"

    def __init__(self, model, echo_texts, n, token_text):
        self.id = new_id("cmpl")
        self.created = now()
        self.model = model
        self.echo_texts = echo_texts
        self.n = n
        self.token_text = token_text

    def _prefix(self, index):
        return self.echo_texts[index // self.n] if self.echo_texts else ""

    def _envelope(self, choices, **extra):
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def _logprobs(self, index, result):
        if result.logprobs is None:
            return None
        return _completion_logprobs(result.logprobs, self.token_text, len(self._prefix(index)))

    def response(self, results, usage_counts):
        choices = [
            {
                "index": i,
                "text": self._prefix(i) + result.text,
                "logprobs": self._logprobs(i, result),
                "finish_reason": result.finish_reason,
            }
            for i, result in enumerate(results)
        ]
        return self._envelope(choices, usage=usage_counts)

    def start_chunks(self):
        if not self.echo_texts:
            return []
        count = len(self.echo_texts) * self.n
        return [self._chunk(i, self._prefix(i)) for i in range(count) if self._prefix(i)]

    def _chunk(self, index, text, finish_reason=None, logprobs=None):
        choice = {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
        return self._envelope([choice])

    def delta_chunk(self, index, text):
        return self._chunk(index, text)

    def final_chunks(self, results, streamed):
        """Closing chunks; the whole text when it was not streamed."""
        return [
            self._chunk(
                i,
                "" if streamed else result.text,
                result.finish_reason,
                None if streamed else self._logprobs(i, result),
            )
            for i, result in enumerate(results)
        ]

    def usage_chunk(self, usage_counts):
        return self._envelope([], usage=usage_counts)


class ChatFormat(CompletionFormat):
    """Builds `/v1/chat/completions` bodies and stream chunks.

    Args:
        model: the served model name.
        n: number of choices.
        token_text: `fn(token_id) -> str` for logprobs.
        read_reply: `fn(result) -> (message, finish_reason)`; turns a
            `RowResult` into the assistant message (text or tool calls).

    Example:
    >>> from mistral_hub.server.engine import RowResult
    >>> def read_reply(result):
    ...     return {"role": "assistant", "content": result.text}, result.finish_reason
    >>> fmt = ChatFormat("demo", 1, str, read_reply)
    >>> chunks = fmt.final_chunks([RowResult([7], "Hi", "length")], streamed=False)
    >>> [c["choices"][0]["delta"] for c in chunks]
    [{'content': 'Hi'}, {}]
    """

    object = "chat.completion.chunk"

    def __init__(self, model, n, token_text, read_reply):
        super().__init__(model, None, n, token_text)
        self.id = new_id("chatcmpl")
        self.read_reply = read_reply

    def _logprobs(self, index, result):
        if result.logprobs is None:
            return None
        return _chat_logprobs(result.logprobs, self.token_text)

    def response(self, results, usage_counts):
        choices = []
        for i, result in enumerate(results):
            message, finish_reason = self.read_reply(result)
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": self._logprobs(i, result),
                    "finish_reason": finish_reason,
                }
            )
        return {**self._envelope(choices, usage=usage_counts), "object": "chat.completion"}

    def _chunk(self, index, delta, finish_reason=None, logprobs=None):
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
        return self._envelope([choice])

    def start_chunks(self):
        return [self._chunk(i, {"role": "assistant", "content": ""}) for i in range(self.n)]

    def delta_chunk(self, index, text):
        return self._chunk(index, {"content": text})

    def final_chunks(self, results, streamed):
        chunks = []
        for i, result in enumerate(results):
            message, finish_reason = self.read_reply(result)
            if not streamed:
                delta = {}
                if message.get("content"):
                    delta["content"] = message["content"]
                if message.get("tool_calls"):
                    delta["tool_calls"] = [
                        {"index": k, **call} for k, call in enumerate(message["tool_calls"])
                    ]
                if delta:
                    chunks.append(self._chunk(i, delta, logprobs=self._logprobs(i, result)))
            chunks.append(self._chunk(i, {}, finish_reason))
        return chunks
