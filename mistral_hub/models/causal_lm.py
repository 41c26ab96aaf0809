import itertools

import keras
import numpy as np
from keras import ops

from mistral_hub import samplers
from mistral_hub.models.task import Task

# Prefill lengths are rounded up to a multiple of this, so JAX and
# TensorFlow compile one prefill per bucket instead of one per prompt length.
_PREFILL_BUCKET = 64


class CausalLM(Task):
    """Base class for causal language models: compile defaults and generate.

    Subclasses implement `generate_step(inputs, stop_token_ids, ...)`.
    """

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        weighted_metrics="auto",
        sampler="top_k",
        **kwargs,
    ):
        """Configures training and the default generation sampler.

        Args:
            optimizer: `"auto"` (Adam, learning rate 2e-5) or any Keras
                optimizer.
            loss: `"auto"` (sparse categorical cross-entropy from logits,
                averaged over the weighted tokens, so padding does not
                shrink the gradient as keras_hub's per-position mean does)
                or any Keras loss.
            weighted_metrics: `"auto"` (weighted sparse categorical accuracy)
                or a list of metrics.
            sampler: a sampler name, config or instance used by
                `generate()` (default `"top_k"`); `generate(sampler=...)`
                overrides it per call without recompiling.
            **kwargs: passed to `keras.Model.compile`.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(2e-5)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction="mean_with_sample_weight"
            )
        if weighted_metrics == "auto":
            weighted_metrics = [keras.metrics.SparseCategoricalAccuracy()]
        super().compile(
            optimizer=optimizer,
            loss=loss,
            weighted_metrics=weighted_metrics,
            **kwargs,
        )
        self.sampler = samplers.get(sampler)
        self.generate_function = None

    # --- compiled generation ---------------------------------------------

    def make_generate_function(self, sampler=None):
        """Returns a compiled `generate_step` for `sampler` (or the default).

        JAX: `jax.jit` of a stateless function of the weights; TensorFlow:
        `tf.function`; torch: eager under `torch.no_grad()` with the KV cache
        updated in place. The default sampler's function is cached on
        `self.generate_function` until `compile()` is called again.
        """
        if sampler is None and self.generate_function is not None:
            return self.generate_function
        chosen = sampler or self.sampler
        backend = keras.config.backend()
        if backend == "jax" and not self.run_eagerly:
            function = self._make_jax_generate_function(chosen)
        elif backend == "tensorflow" and not self.run_eagerly:
            import tensorflow as tf

            function = tf.function(
                lambda inputs, stop_token_ids, seed, prefill_length, stream: self.generate_step(
                    inputs,
                    stop_token_ids=stop_token_ids,
                    sampler=chosen,
                    seed=seed,
                    prefill_length=prefill_length,
                    stream_callback=self._stream_tokens if stream else None,
                ),
                reduce_retracing=True,
            )
        elif backend == "torch":
            import torch

            def function(inputs, stop_token_ids, seed, prefill_length, stream):
                with torch.no_grad():
                    return self.generate_step(
                        inputs,
                        stop_token_ids=stop_token_ids,
                        sampler=chosen,
                        seed=seed,
                        prefill_length=prefill_length,
                        stream_callback=self._stream_tokens if stream else None,
                    )

        else:

            def function(inputs, stop_token_ids, seed, prefill_length, stream):
                return self.generate_step(
                    inputs,
                    stop_token_ids=stop_token_ids,
                    sampler=chosen,
                    seed=seed,
                    prefill_length=prefill_length,
                    stream_callback=self._stream_tokens if stream else None,
                )

        if sampler is None:
            self.generate_function = function
        return function

    def _make_jax_generate_function(self, sampler):
        import functools

        import jax

        @functools.partial(
            jax.jit, static_argnames=("stop_token_ids", "prefill_length", "stream")
        )
        def compiled(state, inputs, stop_token_ids, seed, prefill_length, stream):
            trainable, non_trainable = state
            mapping = itertools.chain(
                zip(self.trainable_variables, trainable),
                zip(self.non_trainable_variables, non_trainable),
            )
            with keras.StatelessScope(state_mapping=mapping):
                return self.generate_step(
                    inputs,
                    stop_token_ids=stop_token_ids,
                    sampler=sampler,
                    seed=seed,
                    prefill_length=prefill_length,
                    stream_callback=self._stream_tokens if stream else None,
                )

        def function(inputs, stop_token_ids, seed, prefill_length, stream):
            state = (
                [v.value for v in self.trainable_variables],
                [v.value for v in self.non_trainable_variables],
            )
            return compiled(state, inputs, stop_token_ids, seed, prefill_length, stream)

        return function

    # --- generate -----------------------------------------------------------

    def generate(
        self,
        inputs,
        max_length=None,
        stop_token_ids="auto",
        strip_prompt=False,
        *,
        max_new_tokens=None,
        sampler=None,
        seed=None,
        streamer=None,
    ):
        """Generates text (or token ids) from prompts.

        Args:
            inputs: a str, a list of str, a string array, or a
                `tf.data.Dataset` of them (generated batch by batch). Without
                a preprocessor: a dict of `(batch, length)` `token_ids` and
                `padding_mask`, right padded to the total length.
            max_length: int. Total length of prompt plus completion.
                Defaults to the preprocessor's `sequence_length`; ignored
                without a preprocessor (the inputs' length is used).
            stop_token_ids: `"auto"` (the end token), None (run to the
                length limit) or a sequence of ids, any of which ends a row.
            strip_prompt: bool. Return only the generated part.
            max_new_tokens: int. Number of tokens to generate for each
                prompt; replaces `max_length`.
            sampler: a sampler name, config or instance overriding the one
                set in `compile()` for this call.
            seed: int. With the same seed, sampling repeats exactly on a
                given backend.
            streamer: optional callable receiving new text as it is
                generated, from inside the compiled loop: a str per call for
                a single prompt, else a list with one (possibly empty) str
                per prompt. The pieces join to the `strip_prompt=True`
                output. Needs a preprocessor. See also `stream()`.

        Returns:
            A str or list of str with a preprocessor; else a dict of numpy
            `token_ids` and `padding_mask`.
        """
        stop_token_ids = self._resolve_stop_token_ids(stop_token_ids)
        _check_optional_length("max_length", max_length)
        _check_optional_length("max_new_tokens", max_new_tokens, minimum=1)
        if max_length is not None and max_new_tokens is not None:
            raise ValueError("Pass either `max_length` or `max_new_tokens`, not both.")
        if streamer is not None and self.preprocessor is None:
            raise ValueError("`streamer` needs a preprocessor to decode text.")
        if streamer is not None and not callable(streamer):
            raise ValueError(f"`streamer` must be callable. Received: {streamer!r}")
        generate_function = self.make_generate_function(samplers.get(sampler))
        # Without a seed, draw from NumPy's global state so that
        # `keras.utils.set_random_seed` makes generation reproducible.
        seed_source = np.random.RandomState(seed) if seed is not None else np.random

        def generate_batch(batch):
            return self._generate_batch(
                batch,
                generate_function,
                max_length=max_length,
                max_new_tokens=max_new_tokens,
                stop_token_ids=stop_token_ids,
                strip_prompt=strip_prompt,
                seed=seed_source.randint(0, 2**31 - 1, size=(2,)).astype("int32"),
                streamer=streamer,
            )

        if _is_tf_dataset(inputs):
            outputs = [generate_batch(batch) for batch in inputs.as_numpy_iterator()]
            if outputs and isinstance(outputs[0], dict):
                return {
                    key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]
                }
            return list(itertools.chain.from_iterable(outputs))
        return generate_batch(inputs)

    def _resolve_stop_token_ids(self, stop_token_ids):
        if isinstance(stop_token_ids, str):
            if stop_token_ids != "auto":
                raise ValueError(
                    '`stop_token_ids` must be "auto", None or a sequence of '
                    f"ints. Received: {stop_token_ids!r}"
                )
            if self.preprocessor is None:
                raise ValueError(
                    '`stop_token_ids="auto"` needs a preprocessor to find the '
                    "end token; pass explicit ids or None."
                )
            return (self.preprocessor.tokenizer.end_token_id,)
        if stop_token_ids is None:
            return None
        try:
            ids = tuple(int(i) for i in stop_token_ids)
        except (TypeError, ValueError):
            raise ValueError(
                "`stop_token_ids` must be \"auto\", None or a sequence of ints. "
                f"Received: {stop_token_ids!r}"
            ) from None
        vocabulary_size = self.backbone.vocabulary_size
        if not ids or any(i < 0 or i >= vocabulary_size for i in ids):
            raise ValueError(
                "`stop_token_ids` must be a non-empty sequence of ids in "
                f"[0, {vocabulary_size}). Received: {stop_token_ids!r}"
            )
        return ids

    def _generate_batch(
        self,
        inputs,
        generate_function,
        max_length,
        max_new_tokens,
        stop_token_ids,
        strip_prompt,
        seed,
        streamer=None,
    ):
        unbatched = False
        if self.preprocessor is not None:
            texts = _to_python_strings(inputs)
            unbatched = isinstance(texts, str)
            prompts = self._tokenize_prompts([texts] if unbatched else texts)
            longest = max(len(p) for p in prompts)
            total_length = (
                longest + max_new_tokens
                if max_new_tokens is not None
                else max_length or self.preprocessor.sequence_length
            )
            packed = self.preprocessor.pack_prompts(prompts, total_length)
            token_ids, padding_mask = packed["token_ids"], packed["padding_mask"]
        else:
            token_ids, padding_mask = _unpack_token_inputs(inputs)
            if max_new_tokens is not None:
                token_ids, padding_mask = _resize(
                    token_ids, padding_mask, padding_mask.sum(-1).max() + max_new_tokens
                )

        prompt_lengths = padding_mask.sum(axis=-1)
        if prompt_lengths.min() < 1:
            raise ValueError(
                "Every prompt needs at least one token (e.g. the start token)."
            )
        if prompt_lengths.max() >= token_ids.shape[1]:
            raise ValueError(
                f"A prompt of {prompt_lengths.max()} tokens leaves no room to "
                f"generate within a total length of {token_ids.shape[1]}."
            )
        prefill_length = int(
            min(
                token_ids.shape[1],
                -(-int(prompt_lengths.min()) // _PREFILL_BUCKET) * _PREFILL_BUCKET,
            )
        )
        text_streamer = None
        if streamer is not None:
            text_streamer = _TextStreamer(
                self.preprocessor.tokenizer,
                streamer,
                prompt_lengths,
                stop_token_ids,
                max_new_tokens,
                unbatched,
            )
        self._active_text_streamer = text_streamer
        try:
            outputs = generate_function(
                {
                    "token_ids": ops.convert_to_tensor(token_ids),
                    "padding_mask": ops.convert_to_tensor(padding_mask),
                },
                stop_token_ids,
                ops.convert_to_tensor(seed),
                prefill_length,
                text_streamer is not None,
            )
            token_ids = np.asarray(ops.convert_to_numpy(outputs["token_ids"]))
            if text_streamer is not None and keras.config.backend() == "jax":
                import jax

                jax.effects_barrier()
        finally:
            self._active_text_streamer = None
        if text_streamer is not None:
            text_streamer.finish(token_ids)
        output_mask = np.asarray(ops.convert_to_numpy(outputs["padding_mask"])).astype(bool)
        if max_new_tokens is not None:
            positions = np.arange(token_ids.shape[1])[None, :]
            output_mask &= positions < (prompt_lengths + max_new_tokens)[:, None]
        if strip_prompt:
            token_ids, output_mask = _strip_prompt(token_ids, output_mask, prompt_lengths)

        if self.preprocessor is None:
            return {"token_ids": token_ids, "padding_mask": output_mask}
        texts = self.preprocessor.generate_postprocess(
            {"token_ids": token_ids, "padding_mask": output_mask}
        )
        return texts[0] if unbatched else texts

    def _stream_tokens(self, position, token_ids):
        # Called from inside the compiled loop; forwards to this call's
        # streamer, so one compiled function serves every streamer.
        if self._active_text_streamer is not None:
            self._active_text_streamer.add(int(position), np.asarray(token_ids))

    def stream(self, inputs, **kwargs):
        """Yields generated text as it is produced, for one prompt or a batch.

        A generator over the chunks `generate(inputs, streamer=...)` would
        pass to its streamer; generation runs in a background thread.
        `"".join(model.stream(prompt))` equals
        `model.generate(prompt, strip_prompt=True)` for the same seed.

        Args:
            inputs: a str or a list of str.
            **kwargs: any `generate()` argument except `streamer`.

        Yields:
            A str per step for a single prompt, else a list of str.
        """
        import queue
        import threading

        chunks = queue.Queue()
        finished = object()
        failure = []

        def run():
            try:
                self.generate(inputs, streamer=chunks.put, **kwargs)
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

    def _tokenize_prompts(self, texts):
        if not isinstance(texts, list) or not texts:
            raise ValueError(
                "`inputs` must be a string, a non-empty list of strings or a "
                f"tf.data.Dataset. Received: {texts!r}"
            )
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(
                    "`inputs` must contain strings. Received an element of "
                    f"type {type(text).__name__}."
                )
        tokenizer = self.preprocessor.tokenizer
        start = [tokenizer.start_token_id] if self.preprocessor.add_start_token else []
        return [start + list(ids) for ids in tokenizer.tokenize(texts)]


def _check_optional_length(name, value, minimum=2):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"`{name}` must be an int of at least {minimum}. Received: {name}={value!r}"
        )


def _is_tf_dataset(x):
    try:
        import tensorflow as tf
    except ImportError:
        return False
    return isinstance(x, tf.data.Dataset)


def _to_python_strings(x):
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, bytes):
        return x.decode("utf-8")
    if isinstance(x, (list, tuple)):
        return [_to_python_strings(item) for item in x]
    return x


def _unpack_token_inputs(inputs):
    if not isinstance(inputs, dict) or not {"token_ids", "padding_mask"} <= set(inputs):
        raise ValueError(
            "Without a preprocessor, `inputs` must be a dict with `token_ids` "
            "and `padding_mask`."
        )
    token_ids = np.asarray(ops.convert_to_numpy(inputs["token_ids"])).astype("int32")
    padding_mask = np.asarray(ops.convert_to_numpy(inputs["padding_mask"])).astype(bool)
    if token_ids.ndim == 1:
        token_ids, padding_mask = token_ids[None], padding_mask[None]
    if token_ids.ndim != 2 or token_ids.shape != padding_mask.shape:
        raise ValueError(
            "`token_ids` and `padding_mask` must share a (batch, length) shape. "
            f"Received {token_ids.shape} and {padding_mask.shape}."
        )
    return token_ids, padding_mask


def _resize(token_ids, padding_mask, length):
    batch, current = token_ids.shape
    if length <= current:
        return token_ids[:, :length], padding_mask[:, :length]
    pad = length - current
    return (
        np.pad(token_ids, ((0, 0), (0, pad))),
        np.pad(padding_mask, ((0, 0), (0, pad))),
    )


def _strip_prompt(token_ids, output_mask, prompt_lengths):
    """Rolls each row left by its prompt length, keeping generated positions.

    Same layout as keras_hub: the prompt wraps to the end of the row and only
    generated positions stay in the mask.
    """
    stripped_ids = np.empty_like(token_ids)
    stripped_mask = np.zeros_like(output_mask)
    for row, length in enumerate(prompt_lengths):
        stripped_ids[row] = np.roll(token_ids[row], -length)
        generated = output_mask[row].copy()
        generated[:length] = False
        stripped_mask[row] = np.roll(generated, -length)
    return stripped_ids, stripped_mask


class _TextStreamer:
    """Turns per-position token ids into per-row text deltas.

    Each row's generated ids (up to its first stop token and within
    `max_new_tokens`) are decoded as a whole after every step and the new
    suffix is emitted, so the pieces always join to the final text; a
    suffix ending in an incomplete UTF-8 character is held back.
    """

    def __init__(self, tokenizer, callback, prompt_lengths, stop_token_ids, max_new_tokens, unbatched):
        self.tokenizer = tokenizer
        self.callback = callback
        self.prompt_lengths = [int(n) for n in prompt_lengths]
        self.stop_token_ids = set(stop_token_ids or ())
        self.special_token_ids = set(tokenizer.special_token_ids)
        self.max_new_tokens = max_new_tokens
        self.unbatched = unbatched
        self.generated = [[] for _ in self.prompt_lengths]
        self.emitted = ["" for _ in self.prompt_lengths]
        self.done = [False for _ in self.prompt_lengths]
        self.next_position = min(self.prompt_lengths)

    def add(self, position, token_ids):
        if position < self.next_position:
            return
        self.next_position = position + 1
        deltas = []
        for row, token_id in enumerate(token_ids.tolist()):
            deltas.append(self._add_to_row(row, position, token_id))
        if any(deltas):
            self.callback(deltas[0] if self.unbatched else deltas)

    def finish(self, token_ids):
        for position in range(self.next_position, token_ids.shape[1]):
            self.add(position, token_ids[:, position])

    def _add_to_row(self, row, position, token_id):
        prompt_length = self.prompt_lengths[row]
        if self.done[row] or position < prompt_length:
            return ""
        if token_id in self.stop_token_ids or (
            self.max_new_tokens is not None and position >= prompt_length + self.max_new_tokens
        ):
            self.done[row] = True
            return ""
        if token_id not in self.special_token_ids:
            self.generated[row].append(token_id)
        text = self.tokenizer.detokenize([self.generated[row]])[0]
        if text.endswith("\ufffd") or not text.startswith(self.emitted[row]):
            return ""
        delta = text[len(self.emitted[row]):]
        self.emitted[row] = text
        return delta
