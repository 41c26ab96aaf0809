"""Dynamic batching of generation requests on one model worker thread.

Requests wait at most `batch_window` seconds for company; the oldest one
and every waiting request with the same generation options (see
`GenerationOptions.batch_key()`) then share one `generate()` call with a
list of prompts. The model only ever runs on the engine's worker thread, so
requests never race on its state (compiled functions, KV caches, streamer).
"""

import collections
import dataclasses
import logging
import threading
import time

import numpy as np

from mistral_hub.models.causal_lm import _TokenizedPrompts
from mistral_hub.samplers.stop_strings import cut_at_stop_strings
from mistral_hub.server.protocol import APIError

logger = logging.getLogger("mistral_hub.server")


@dataclasses.dataclass
class RowResult:
    """One generated choice.

    Attributes:
        token_ids: the generated ids, up to and including the stop token or
            the token that completed a stop string.
        text: the generated text, cut before any stop string.
        finish_reason: `"stop"` (stop token or stop string) or `"length"`.
        logprobs: None, or per generated token `(id, logprob, [(id,
            logprob), ...])` with the most likely alternatives.

    Example:
    >>> RowResult([17, 2], "Hi", "stop").finish_reason
    'stop'
    """

    token_ids: list
    text: str
    finish_reason: str
    logprobs: list = None


class Job:
    """One API request for the engine.

    Args:
        prompts: list of prompts, each a list of token ids (start token
            included).
        options: a `GenerationOptions`; `max_new_tokens` must be set.
        stream: bool. Report text deltas with `on_delta(choice, text)` as
            they are generated (on the worker thread).
        logprobs: None, or how many alternatives to report with the
            log-probability of each generated token.
        on_delta: `fn(choice_index, text)`.
        on_done: `fn(results, error)`: a list of `RowResult`, one per
            choice (prompt-major, `options.n` per prompt), or the exception.

    Example:
    >>> from mistral_hub.server.protocol import GenerationOptions
    >>> job = Job([[1, 5, 6], [1, 7]], GenerationOptions(max_new_tokens=4, n=3))
    >>> job.rows  # two prompts, three samples each
    6
    """

    def __init__(self, prompts, options, stream=False, logprobs=None, on_delta=None, on_done=None):
        self.prompts = [list(p) for p in prompts]
        self.options = options
        self.stream = stream
        self.logprobs = logprobs
        self.on_delta = on_delta
        self.on_done = on_done
        self.cancelled = False
        self.finished = False
        self.arrival = time.monotonic()

    @property
    def rows(self):
        """Rows this job adds to a batch (greedy choices are copies)."""
        return len(self.prompts) * (1 if self.options.greedy else self.options.n)

    def batch_key(self):
        key = self.options.batch_key()
        if key is None:
            return None
        # The text streamer cuts every row at the batch's `max_new_tokens`.
        return (key, self.stream, self.options.max_new_tokens if self.stream else None)


class _Aborted(Exception):
    """Raised from the streamer when every request of a batch is gone."""


class GenerationEngine:
    """Serves generation jobs with dynamic batching on one worker thread.

    Args:
        causal_lm: a `CausalLM` with a preprocessor.
        max_batch_size: int. Most rows (prompts times samples) per
            `generate()` call; a larger single request still runs whole.
        batch_window: float. Seconds the oldest waiting request waits for
            others to batch with.
        max_pending: int. Most requests queued or running; more get HTTP
            503. A cancelled request (client gone) frees its slot at once.
        length_bucket: int. Non-streamed batches generate to a total length
            (prompt plus new tokens) rounded up to a multiple of this, so
            that few shapes get compiled, at the price of up to
            `length_bucket - 1` extra decode steps per batch.

    Example:

    ```python
    from mistral_hub import MistralCausalLM
    from mistral_hub.server.engine import GenerationEngine, Job
    from mistral_hub.server.protocol import GenerationOptions

    causal_lm = MistralCausalLM.from_preset("mistral_hub_demo")
    engine = GenerationEngine(causal_lm)
    tokenizer = causal_lm.preprocessor.tokenizer
    done = []
    prompt = [tokenizer.start_token_id] + tokenizer.tokenize("def f")
    job = Job([prompt], GenerationOptions(max_new_tokens=8, temperature=0),
              on_done=lambda results, error: done.append(results))
    engine.submit(job)
    engine.close(wait_for_pending=True)
    print(done[0][0].text)
    ```
    """

    def __init__(
        self, causal_lm, max_batch_size=32, batch_window=0.01, max_pending=256, length_bucket=16
    ):
        if causal_lm.preprocessor is None:
            raise ValueError("The server needs a model with a preprocessor (a tokenizer).")
        self.causal_lm = causal_lm
        self.tokenizer = causal_lm.preprocessor.tokenizer
        self.stop_token_ids = set(causal_lm._resolve_stop_token_ids("auto"))
        self.max_batch_size = int(max_batch_size)
        self.batch_window = float(batch_window)
        self.max_pending = int(max_pending)
        self.length_bucket = int(length_bucket)
        # Every key exists from the start: readers copy it while it changes.
        self.stats = collections.Counter(
            requests=0, generate_calls=0, rows=0, padding_rows=0, cancelled=0
        )
        self._token_bytes = None
        self._pending = collections.deque()
        self._active = 0
        self._closed = False
        self._drain = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="mistral-hub-engine", daemon=True)
        self._thread.start()

    @property
    def token_bytes(self):
        if self._token_bytes is None:
            self._token_bytes = self.tokenizer.token_bytes()
        return self._token_bytes

    # --- client side ---------------------------------------------------------

    def submit(self, job):
        """Queues `job`; raises `APIError(503)` when the server is full."""
        with self._condition:
            if self._closed:
                raise APIError(503, "The server is shutting down.", type="server_error")
            if self._active >= self.max_pending:
                raise APIError(
                    503,
                    f"The server is busy ({self.max_pending} requests in progress); retry later.",
                    type="server_error",
                    code="server_overloaded",
                )
            self._active += 1
            self.stats["requests"] += 1
            self._pending.append(job)
            self._condition.notify_all()

    def cancel(self, job):
        """Drops `job` (its client went away); frees its slot at once."""
        with self._condition:
            if job.cancelled or job.finished:
                return
            job.cancelled = True
            self.stats["cancelled"] += 1
            if job in self._pending:
                self._pending.remove(job)
            self._active -= 1
            self._condition.notify_all()

    def queued(self):
        """Requests waiting for the worker."""
        with self._condition:
            return len(self._pending)

    def active(self):
        """Requests queued or running (cancelled ones excluded)."""
        with self._condition:
            return self._active

    def close(self, wait_for_pending=False, timeout=60.0):
        """Stops the worker, after the queued jobs if `wait_for_pending`."""
        with self._condition:
            self._closed = True
            self._drain = wait_for_pending
            self._condition.notify_all()
        self._thread.join(timeout)

    # --- worker side ---------------------------------------------------------

    def _run(self):
        while True:
            group = self._next_group()
            if group is None:
                return
            if group:
                self._run_group(group)

    def _next_group(self):
        with self._condition:
            while not self._pending:
                if self._closed:
                    return None
                self._condition.wait(timeout=1.0)
            if self._closed and not self._drain:
                return None
            # Wait (at most the window) for requests to batch with.
            first = self._pending[0]
            key = first.batch_key()
            deadline = first.arrival + self.batch_window
            while (
                key is not None
                and not self._closed
                and self._pending
                and self._pending[0] is first
                and self._rows_like(first) < self.max_batch_size
                and (remaining := deadline - time.monotonic()) > 0
            ):
                self._condition.wait(timeout=remaining)
            if not self._pending:
                return []
            first = self._pending[0]
            key = first.batch_key()
            group, rows = [], 0
            for job in list(self._pending):
                if job is first or (
                    key is not None
                    and job.batch_key() == key
                    and rows + job.rows <= self.max_batch_size
                ):
                    group.append(job)
                    rows += job.rows
                    self._pending.remove(job)
            return group

    def _rows_like(self, first):
        key = first.batch_key()
        return sum(job.rows for job in self._pending if job.batch_key() == key)

    def _release(self, job):
        with self._condition:
            job.finished = True
            if not job.cancelled:
                self._active -= 1
                self._condition.notify_all()

    def _run_group(self, group):
        try:
            results = self._generate(group)
        except _Aborted:
            results = None
        except Exception as error:  # reported to each request
            for job in group:
                self._release(job)
                self._notify(job, job.on_done, None, error)
            return
        for job in group:
            self._release(job)
            if results is not None:
                self._notify(job, job.on_done, results[job], None)

    def _notify(self, job, callback, *args):
        """Calls a job's callback; a failing one drops the job, not the worker."""
        if job.cancelled or callback is None:
            return
        try:
            callback(*args)
        except Exception:
            logger.exception("A request callback failed; dropping the request.")
            self.cancel(job)

    def _generate(self, group):
        options = group[0].options
        samples = 1 if options.greedy else options.n
        prompts, choices = [], []  # choices[row] = (job, choice indices)
        for job in group:
            for p, prompt in enumerate(job.prompts):
                prompts.append(prompt)
                if options.greedy:
                    choices.append((job, list(range(p * options.n, (p + 1) * options.n))))
                else:
                    choices += [(job, [p * options.n + s]) for s in range(samples)]
        real = len(prompts)
        if group[0].batch_key() is not None:
            # Few distinct batch shapes: each new shape compiles the loop.
            prompts += [prompts[0]] * (_bucket(real, self.max_batch_size) - real)
        max_new = max(job.options.max_new_tokens for job in group)
        kwargs = options.generate_kwargs()
        if group[0].stream:
            # The text streamer ends each row at `max_new_tokens`.
            kwargs.update(max_new_tokens=max_new, streamer=self._streamer(group, choices))
        else:
            # Few distinct lengths, as each compiles the loop; rows are cut
            # to their own `max_new_tokens` afterwards.
            longest = max(len(p) for p in prompts)
            kwargs["max_length"] = _round_up(longest + max_new, self.length_bucket)
        self.stats["generate_calls"] += 1
        self.stats["rows"] += len(choices)
        self.stats["padding_rows"] += (len(prompts) - real) * samples
        try:
            outputs = self.causal_lm.generate(
                _TokenizedPrompts(prompts, False, return_token_ids=True),
                strip_prompt=True,
                **kwargs,
            )
        except Exception:
            if all(job.cancelled for job in group):
                raise _Aborted() from None
            raise
        results = {job: [None] * (len(job.prompts) * options.n) for job in group}
        for row, (job, indices) in enumerate(choices):
            if job.cancelled:
                continue
            prompt = prompts[row // samples]
            mask = outputs["padding_mask"][row]
            result = self._finish_row(prompt, outputs["token_ids"][row][mask], job.options)
            if job.logprobs is not None:
                result.logprobs = self._logprobs(prompt, result.token_ids, job.logprobs)
            for index in indices:
                results[job][index] = result
        return results

    def _streamer(self, group, choices):
        def on_text(deltas):
            if all(job.cancelled for job in group):
                raise _Aborted()
            for row, delta in enumerate(deltas[: len(choices)]):
                job, indices = choices[row]
                if delta:
                    for index in indices:
                        self._notify(job, job.on_delta, index, delta)

        return on_text

    def _finish_row(self, prompt, token_ids, options):
        ids = [int(i) for i in token_ids[: options.max_new_tokens]]
        finish_reason = "length"
        if ids and ids[-1] in self.stop_token_ids:
            finish_reason = "stop"
        elif options.stop:
            end = _stop_string_end(self.token_bytes, prompt, ids, options.stop)
            if end is not None:
                ids, finish_reason = ids[: end + 1], "stop"
        text_ids = ids[:-1] if finish_reason == "stop" and ids[-1] in self.stop_token_ids else ids
        text = self.tokenizer.detokenize([text_ids])[0] if text_ids else ""
        if options.stop:
            text = cut_at_stop_strings(text, options.stop)
        return RowResult(ids, text, finish_reason)

    def _logprobs(self, prompt, ids, top):
        """Log-probabilities of the generated ids under the model (no
        temperature or penalties), from one forward pass over the row."""
        if not ids:
            return []
        from keras import ops

        # Right padding to a bucketed length reuses compiled shapes; causal
        # attention keeps the padding out of the real positions.
        length = len(prompt) + len(ids)
        padded = _round_up(length, self.length_bucket)
        token_ids = np.zeros((1, padded), "int32")
        token_ids[0, :length] = prompt + ids
        padding_mask = (np.arange(padded) < length)[None, :]
        logits = self.causal_lm.score(token_ids, padding_mask=padding_mask)
        logits = np.asarray(ops.convert_to_numpy(ops.cast(logits, "float32")))[0]
        logits = logits[len(prompt) - 1 : len(prompt) - 1 + len(ids)]
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        entries = []
        for position, token_id in enumerate(ids):
            row = log_probs[position]
            best = np.argsort(-row, kind="stable")[:top] if top else []
            entries.append(
                (token_id, float(row[token_id]), [(int(i), float(row[i])) for i in best])
            )
        return entries


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def _bucket(rows, max_batch_size):
    size = 1
    while size < rows:
        size *= 2
    return max(rows, min(size, max_batch_size))


def _stop_string_end(token_bytes, prompt, ids, stop_strings):
    """Index of the generated token in which a stop string ends, or None.

    Mirrors the decode loop's matcher: bytes of the tokens (the prompt's
    included, so a stop string may start in it), stop string ending inside
    the newest token.
    """
    stops = [s.encode("utf-8") for s in stop_strings]
    longest = max(len(s) for s in stops)
    tail = b"".join(token_bytes[i] for i in prompt[-longest:])
    for position, token_id in enumerate(ids):
        piece = token_bytes[token_id] if token_id < len(token_bytes) else b""
        tail = (tail + piece)[-(longest + len(piece)) :]
        if piece and any(
            stop in tail and tail.rfind(stop) + len(stop) > len(tail) - len(piece) for stop in stops
        ):
            return position
    return None
