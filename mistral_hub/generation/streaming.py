"""Streaming: generated ids turned into text deltas as the loop produces them.

`TextStreamer` receives each position's ids from inside the compiled decode
loop (through `CausalLM`'s host callback) and hands text deltas to the
user's `streamer`; `stream_generate` runs `generate()` in a thread and
yields those deltas.

Example:

```python
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM

causal_lm = MistralCausalLM.from_preset("mistral_hub_demo")
for text in stream_generate(causal_lm.generate, "The", max_new_tokens=8):
    print(text, end="")
```
"""

import queue
import threading

from mistral_hub.samplers.stop_strings import cut_at_stop_strings


def stream_generate(generate, inputs, **kwargs):
    """Yields the chunks `generate(inputs, streamer=...)` passes to its streamer.

    Generation runs in a background thread; an error it raises is raised
    here once the chunks before it are consumed.

    Args:
        generate: a `CausalLM.generate` method.
        inputs: a str or a list of str.
        **kwargs: any `generate()` argument except `streamer`.

    Yields:
        A str per step for a single prompt, else a list of str.
    """
    chunks = queue.Queue()
    finished = object()
    failure = []

    def run():
        try:
            generate(inputs, streamer=chunks.put, **kwargs)
        except Exception as error:  # re-raised in the consumer thread
            failure.append(error)
        finally:
            chunks.put(finished)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while (chunk := chunks.get()) is not finished:
        yield chunk
    thread.join()
    if failure:
        raise failure[0]


class TextStreamer:
    """Turns per-position token ids into per-row text deltas.

    Each row's generated ids (up to its first stop token and within
    `max_new_tokens`) are decoded as a whole after every step and the new
    suffix is emitted, so the pieces always join to the final text. Text is
    held back while it ends in an incomplete UTF-8 character or could be the
    start of a stop string, and a row ends at its first stop string.

    Args:
        tokenizer: the tokenizer that decodes the ids.
        options: the call's `GenerationOptions` (its `streamer` receives the
            deltas).
        prompt_lengths: `(batch,)` prompt lengths.
        unbatched: bool. Pass the callback a str (one row) instead of a
            list of str.
    """

    def __init__(self, tokenizer, options, prompt_lengths, unbatched):
        self.tokenizer = tokenizer
        self.callback = options.streamer
        self.prompt_lengths = [int(n) for n in prompt_lengths]
        self.stop_token_ids = set(options.stop_token_ids or ())
        self.special_token_ids = set(tokenizer.special_token_ids)
        self.max_new_tokens = options.max_new_tokens
        self.unbatched = unbatched
        self.stop_strings = list(options.stop_strings)
        self.keep_stop_strings = options.keep_stop_strings
        self.holdback = max((len(s) for s in self.stop_strings), default=1) - 1
        self.generated = [[] for _ in self.prompt_lengths]
        self.emitted = ["" for _ in self.prompt_lengths]
        self.done = [False for _ in self.prompt_lengths]
        self.next_position = min(self.prompt_lengths)

    def add(self, position, token_ids):
        """Takes the `(batch,)` numpy ids of `position`, once they are final."""
        if position < self.next_position:
            return
        self.next_position = position + 1
        self._emit([self._add_to_row(row, position, t) for row, t in enumerate(token_ids.tolist())])

    def finish(self, token_ids):
        """Takes the final `(batch, length)` ids and flushes every row."""
        for position in range(self.next_position, token_ids.shape[1]):
            self.add(position, token_ids[:, position])
        self._emit([self._flush(row) for row in range(len(self.generated))])

    def _emit(self, deltas):
        if any(deltas):
            self.callback(deltas[0] if self.unbatched else deltas)

    def _add_to_row(self, row, position, token_id):
        prompt_length = self.prompt_lengths[row]
        if self.done[row] or position < prompt_length:
            return ""
        if token_id in self.stop_token_ids or (
            self.max_new_tokens is not None and position >= prompt_length + self.max_new_tokens
        ):
            return self._flush(row)
        if token_id not in self.special_token_ids:
            self.generated[row].append(token_id)
        text = self._text(row)
        if self.stop_strings:
            cut = cut_at_stop_strings(text, self.stop_strings, self.keep_stop_strings)
            if len(cut) < len(text) or any(s in text for s in self.stop_strings):
                return self._flush(row, cut)
        return self._delta(row, text[: len(text) - self.holdback])

    def _flush(self, row, text=None):
        if self.done[row]:
            return ""
        self.done[row] = True
        text = self._text(row) if text is None else text
        if self.stop_strings and text is not None:
            text = cut_at_stop_strings(text, self.stop_strings, self.keep_stop_strings)
        return self._delta(row, text, final=True)

    def _text(self, row):
        return self.tokenizer.detokenize([self.generated[row]])[0]

    def _delta(self, row, text, final=False):
        if (text.endswith("\ufffd") and not final) or not text.startswith(self.emitted[row]):
            return ""
        delta = text[len(self.emitted[row]):]
        self.emitted[row] = text
        return delta
