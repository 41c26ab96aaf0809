import collections
import itertools
import json

import keras
import numpy as np
from keras import ops

from mistral_hub import samplers
from mistral_hub.models.causal_lm_preprocessor import _to_python_strings
from mistral_hub.models.task import Task
from mistral_hub.models.task import _is_tf_dataset
from mistral_hub.samplers import logits_processors
from mistral_hub.samplers.stop_strings import StopStringMatcher
from mistral_hub.samplers.stop_strings import cut_at_stop_strings
from mistral_hub.utils import dtype_utils

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

        Training a 16-bit model (a preset loaded in its saved bfloat16
        dtype): Keras optimizers compute updates in each variable's dtype,
        where Adam's update is exactly zero (`beta_2=0.999` rounds to 1 in
        bfloat16). So the first `fit()` or `train_on_batch()` moves the
        trainable 16-bit variables to float32 storage with 16-bit compute
        (the `"mixed_bfloat16"` policy), warns once and retraces the
        compiled functions. Compiling alone, and `generate()`, keep the
        loaded dtype and its memory saving. Load with `dtype="mixed_bfloat16"` (or set that global
        policy) to train without the conversion; LoRA adapters are float32
        already, so `backbone.enable_lora()` trains a 16-bit backbone as is.
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
        self.__dict__["_generate_functions"] = {}
        self.__dict__["_auto_scale_loss"] = kwargs.get("auto_scale_loss", True)

    def get_quantization_layer_structure(self, mode):
        """The layer structure Keras' GPTQ and AWQ quantizers walk.

        `quantize("gptq", config=keras.quantizers.GPTQConfig(...))` (or
        `"awq"`) calls this to find the layers that turn token ids into
        hidden states and the transformer blocks to quantize one after the
        other.

        Args:
            mode: str. The quantization mode.

        Returns:
            For `"gptq"` and `"awq"`, a dict with `"pre_block_layers"` (the
            token embedding) and `"sequential_blocks"` (the transformer
            layers); None for other modes, which need no structure.

        Example:
        >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
        >>> from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
        >>> backbone = MistralBackbone(vocabulary_size=10, num_layers=2,
        ...     num_query_heads=2, hidden_dim=8, intermediate_dim=16,
        ...     num_key_value_heads=1)
        >>> structure = MistralCausalLM(backbone).get_quantization_layer_structure("gptq")
        >>> len(structure["sequential_blocks"])
        2
        """
        if mode not in ("gptq", "awq"):
            return None
        return {
            "pre_block_layers": [self.backbone.token_embedding],
            "sequential_blocks": list(self.backbone.transformer_layers),
        }

    def fit(self, *args, **kwargs):
        self._prepare_training()
        return super().fit(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        self._prepare_training()
        return super().train_on_batch(*args, **kwargs)

    def _prepare_training(self):
        """Gives 16-bit trainable variables float32 storage (see `compile`)."""
        if not self.compiled or self.optimizer is None:
            return
        if not dtype_utils.promote_for_training(self, self.optimizer, stacklevel=3):
            return
        if (
            self.__dict__.get("_auto_scale_loss", True)
            and self.dtype_policy.name == "mixed_float16"
            and not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        ):
            # What `compile()` does for a model that was mixed_float16 then.
            self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
        # Traced functions hold the 16-bit variables (TensorFlow) or were
        # traced for their dtypes.
        self.train_function = None
        self.test_function = None
        self.predict_function = None
        self.generate_function = None
        self.__dict__["_generate_functions"] = {}

    # --- compiled generation ---------------------------------------------

    def make_generate_function(self, sampler=None, options=None):
        """Returns a compiled `generate_step` for a sampler and decode options.

        JAX: `jax.jit` of a stateless function of the weights; TensorFlow:
        `tf.function`; torch: eager under `torch.no_grad()` with the KV cache
        updated in place. Functions are cached per sampler config and
        options until `compile()` is called again; the latest one for the
        compiled sampler is also kept on `self.generate_function`.

        Args:
            sampler: a sampler overriding the compiled one, or None.
            options: a `_DecodeOptions` (static settings of the loop).

        Returns:
            A function `(inputs, seed) -> {"token_ids", "padding_mask"}`.
        """
        options = options or _DecodeOptions()
        chosen = sampler or self.sampler
        # Variables are part of the key: `quantize()` or `enable_lora()`
        # replace or add variables that an older traced function misses.
        key = (_sampler_key(chosen), options, tuple(id(v) for v in self.variables))
        cache = self.__dict__.setdefault("_generate_functions", {})
        if key in cache:
            function = cache[key]
        else:
            function = self._compile_generate_step(chosen, options)
            cache[key] = function
        if sampler is None:
            self.generate_function = function
        return function

    def _compile_generate_step(self, sampler, options):
        def step(inputs, seed):
            return self.generate_step(
                inputs,
                stop_token_ids=options.stop_token_ids,
                sampler=sampler,
                seed=seed,
                prefill_length=options.prefill_length,
                stream_callback=self._stream_tokens if options.stream else None,
                logits_processors=options.logits_processors,
                stop_condition=options.stop_condition,
                left_padded=options.left_padded,
            )

        backend = keras.config.backend()
        if backend == "jax" and not self.run_eagerly:
            import jax

            @jax.jit
            def compiled(state, inputs, seed):
                trainable, non_trainable = state
                mapping = itertools.chain(
                    zip(self.trainable_variables, trainable),
                    zip(self.non_trainable_variables, non_trainable),
                )
                with keras.StatelessScope(state_mapping=mapping):
                    return step(inputs, seed)

            def function(inputs, seed):
                state = (
                    [v.value for v in self.trainable_variables],
                    [v.value for v in self.non_trainable_variables],
                )
                return compiled(state, inputs, seed)

            return function
        if backend == "tensorflow" and not self.run_eagerly:
            import tensorflow as tf

            # XLA as in keras_hub: Keras resolves `jit_compile` to True with
            # a GPU and to False on CPU-only machines, where TensorFlow's
            # own kernels decode faster than its XLA ones. The streaming
            # callback (`tf.py_function`) cannot be compiled.
            jit_compile = bool(self.jit_compile) and not options.stream
            return tf.function(step, jit_compile=jit_compile)
        if backend == "torch":
            import torch

            def function(inputs, seed):
                with torch.no_grad():
                    return step(inputs, seed)

            return function
        return step

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
        """Generates text (or token ids) from prompts.

        Args:
            inputs: a str, a list of str, a string array, or a batched
                `tf.data.Dataset` of them (generated batch by batch, as in
                keras_hub; an unbatched one raises). Without a preprocessor:
                a dict of `(batch, length)` `token_ids` and `padding_mask`,
                right padded to the total length, or a batched dataset of
                such dicts.
            max_length: int. Total length of prompt plus completion.
                Defaults to the preprocessor's `sequence_length`; ignored
                without a preprocessor (the inputs' length is used).
            stop_token_ids: `"auto"` (the end token, or the checkpoint's
                generation config), None (run to the length limit) or a
                sequence of ids, any of which ends a row.
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
                per row. The pieces join to the `strip_prompt=True` output.
                Needs a preprocessor. See also `stream()`.
            temperature: float > 0, overrides the sampler's temperature.
            top_k: int, switches to top-k sampling with this `k` (combined
                with `top_p` when both are given).
            top_p: float in (0, 1], switches to nucleus sampling.
            min_p: float in [0, 1]; drops tokens less likely than `min_p`
                times the most likely one (transformers' `min_p`).
            repetition_penalty: float > 0; transformers' repetition penalty
                over prompt and generated tokens (1.0 disables it).
            presence_penalty: float in [-2, 2]; OpenAI presence penalty
                over generated tokens.
            frequency_penalty: float in [-2, 2]; OpenAI frequency penalty
                over generated tokens.
            stop_strings: str or list of str. Generation of a row stops at
                the token in which one of them ends, even across token
                boundaries; the returned text is cut before it. Needs a
                preprocessor.
            keep_stop_strings: bool. Keep the stop string in the text.
            num_return_sequences: int. Samples per prompt; outputs are then
                lists of `num_return_sequences` items per prompt (rows of
                the same prompt are adjacent for token outputs).
            logits_processors: list of callables
                `(logits, token_ids, index, prompt_mask) -> logits` run on
                every step inside the compiled loop, after the built-in
                controls (see `mistral_hub.samplers.logits_processors`).

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
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"`seed` must be an int. Received: seed={seed!r}")
        if getattr(self, "sampler", None) is None:
            # Built with `compile=False`: generation still works with the
            # default sampler, without touching the training setup.
            self.sampler = samplers.get("top_k")
            self.generate_function = None
        sampler = _override_sampler(
            samplers.get(sampler) or self.sampler, temperature, top_k, top_p
        )
        if isinstance(num_return_sequences, bool) or not isinstance(
            num_return_sequences, (int, np.integer)
        ) or num_return_sequences < 1:
            raise ValueError(
                "`num_return_sequences` must be a positive int. Received: "
                f"num_return_sequences={num_return_sequences!r}"
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
        ) + tuple(_check_processors(logits_processors))
        stop_matcher = None
        if stop_strings is not None:
            if self.preprocessor is None:
                raise ValueError("`stop_strings` needs a preprocessor to decode text.")
            if isinstance(sampler, samplers.BeamSampler):
                raise ValueError("`stop_strings` is not supported with beam search.")
            stop_strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
            stop_matcher = self._stop_string_matcher(tuple(stop_strings))
        # Without a seed, draw from NumPy's global state so that
        # `keras.utils.set_random_seed` makes generation reproducible.
        seed_source = np.random.RandomState(seed) if seed is not None else np.random

        def generate_batch(batch):
            return self._generate_batch(
                batch,
                sampler=sampler,
                max_length=max_length,
                max_new_tokens=max_new_tokens,
                stop_token_ids=stop_token_ids,
                strip_prompt=strip_prompt,
                seed=seed_source.randint(0, 2**31 - 1, size=(2,)).astype("int32"),
                streamer=streamer,
                processors=processors,
                stop_matcher=stop_matcher,
                keep_stop_strings=keep_stop_strings,
                num_return_sequences=int(num_return_sequences),
            )

        if _is_tf_dataset(inputs):
            _check_dataset_is_batched(inputs)
            outputs = [generate_batch(batch) for batch in inputs.as_numpy_iterator()]
            if outputs and isinstance(outputs[0], dict):
                return {
                    key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]
                }
            return list(itertools.chain.from_iterable(outputs))
        return generate_batch(inputs)

    def _stop_string_matcher(self, stop_strings):
        matchers = self.__dict__.setdefault("_stop_string_matchers", {})
        if stop_strings not in matchers:
            matchers[stop_strings] = StopStringMatcher(
                self.preprocessor.tokenizer.token_bytes(), stop_strings
            )
        return matchers[stop_strings]

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
            configured = getattr(self, "default_stop_token_ids", None)
            if configured:
                return tuple(int(i) for i in configured)
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
        sampler,
        max_length,
        max_new_tokens,
        stop_token_ids,
        strip_prompt,
        seed,
        streamer,
        processors,
        stop_matcher,
        keep_stop_strings,
        num_return_sequences,
    ):
        unbatched = False
        if self.preprocessor is not None:
            if isinstance(inputs, _TokenizedPrompts):
                prompts, unbatched = inputs.token_ids, inputs.unbatched
            else:
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
        if num_return_sequences > 1:
            token_ids = np.repeat(token_ids, num_return_sequences, axis=0)
            padding_mask = np.repeat(padding_mask, num_return_sequences, axis=0)

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
        # With a budget of new tokens per row, prompts of different lengths
        # are right-aligned (left-padded) so that every row decodes from its
        # first new token; right-padded rows would start at the shortest
        # prompt and step through the rest of theirs one token at a time.
        # Streaming, logits processors, stop strings and contrastive search
        # read the token layout, so they keep the right-padded one.
        left_padded = (
            max_new_tokens is not None
            and prompt_lengths.min() != prompt_lengths.max()
            and streamer is None
            and not processors
            and stop_matcher is None
            and not isinstance(sampler, samplers.ContrastiveSampler)
        )
        right_width = token_ids.shape[1]
        if left_padded:
            prefill_length = _round_up(int(prompt_lengths.max()), _PREFILL_BUCKET)
            token_ids, padding_mask = _align_prompts_right(
                token_ids, prompt_lengths, prefill_length, max_new_tokens
            )
        else:
            prefill_length = min(
                right_width, _round_up(int(prompt_lengths.min()), _PREFILL_BUCKET)
            )
        options = _DecodeOptions(
            stop_token_ids=stop_token_ids,
            prefill_length=prefill_length,
            stream=streamer is not None,
            logits_processors=processors,
            stop_condition=stop_matcher,
            left_padded=left_padded,
        )
        generate_function = self.make_generate_function(
            None if sampler is self.sampler else sampler, options
        )
        text_streamer = None
        if streamer is not None:
            text_streamer = _TextStreamer(
                self.preprocessor.tokenizer,
                streamer,
                prompt_lengths,
                stop_token_ids,
                max_new_tokens,
                unbatched and num_return_sequences == 1,
                stop_strings=stop_matcher.stop_strings if stop_matcher else (),
                keep_stop_strings=keep_stop_strings,
            )
        self._active_text_streamer = text_streamer
        try:
            outputs = generate_function(
                {
                    "token_ids": ops.convert_to_tensor(token_ids),
                    "padding_mask": ops.convert_to_tensor(padding_mask),
                },
                ops.convert_to_tensor(seed),
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
        if left_padded:
            token_ids, output_mask = _align_prompts_left(
                token_ids, output_mask, prompt_lengths, prefill_length, right_width
            )
        if max_new_tokens is not None:
            positions = np.arange(token_ids.shape[1])[None, :]
            output_mask &= positions < (prompt_lengths + max_new_tokens)[:, None]
        if strip_prompt:
            token_ids, output_mask = _strip_prompt(token_ids, output_mask, prompt_lengths)

        if self.preprocessor is None or getattr(inputs, "return_token_ids", False):
            return {"token_ids": token_ids, "padding_mask": output_mask}
        if stop_matcher is not None:
            texts = self._texts_cut_at_stop_strings(
                token_ids, output_mask, prompt_lengths, strip_prompt, stop_matcher, keep_stop_strings
            )
        else:
            texts = self.preprocessor.generate_postprocess(
                {"token_ids": token_ids, "padding_mask": output_mask}
            )
        if num_return_sequences > 1:
            texts = [
                texts[i : i + num_return_sequences]
                for i in range(0, len(texts), num_return_sequences)
            ]
        return texts[0] if unbatched else texts

    def _texts_cut_at_stop_strings(
        self, token_ids, output_mask, prompt_lengths, strip_prompt, matcher, keep
    ):
        # Cut the completion (not the prompt) at its first stop string; the
        # decode loop already stopped at the token that completed it.
        if strip_prompt:
            completions = self.preprocessor.generate_postprocess(
                {"token_ids": token_ids, "padding_mask": output_mask}
            )
            return [cut_at_stop_strings(c, matcher.stop_strings, keep) for c in completions]
        in_prompt = np.arange(token_ids.shape[1])[None, :] < prompt_lengths[:, None]
        wholes, prompts, completions = (
            self.preprocessor.generate_postprocess(
                {"token_ids": token_ids, "padding_mask": output_mask & mask}
            )
            for mask in (True, in_prompt, ~in_prompt)
        )
        texts = []
        for whole, prompt, completion in zip(wholes, prompts, completions):
            cut = cut_at_stop_strings(completion, matcher.stop_strings, keep)
            if whole.endswith(completion):
                texts.append(whole[: len(whole) - len(completion) + len(cut)])
            else:
                texts.append(prompt + cut)
        return texts

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

    def chat(self, messages, tools=None, **kwargs):
        """Answers a conversation with an instruct model; returns the reply.

        The conversation is encoded with the tokenizer's chat template
        (`apply_chat_template`: Mistral's v1, v3, v7 or Tekken convention,
        control tokens included), then generated from and stripped.

        With `tools`, the model may answer with tool calls instead of text:
        the reply is then an OpenAI-style assistant message to append to
        the conversation, followed by one `{"role": "tool", "tool_call_id":
        ..., "content": ...}` message per call with its result.

        Args:
            messages: a list of OpenAI-style messages (`{"role": "system" |
                "user" | "assistant", "content": str}`, plus assistant
                `tool_calls` and `"tool"` results with `tools`) ending with a
                user (or tool) message, or a list of such conversations.
            tools: None or a list of OpenAI-style tool definitions
                (`{"type": "function", "function": {"name", "description",
                "parameters"}}`) the model may call.
            **kwargs: any `generate()` argument (`max_new_tokens`,
                `sampler`, `stop_strings`, ...), except `strip_prompt`.

        Returns:
            Without `tools`: the assistant's reply (a str). With `tools`:
            `{"role": "assistant", "content": str or None, "tool_calls":
            list or None}`, each call `{"id", "type": "function",
            "function": {"name", "arguments": <JSON str>}}`. A list of
            replies for a list of conversations.

        Raises:
            ValueError: for a malformed conversation or tool list, and when
                the model's tool calls are not valid JSON.
        """
        if self.preprocessor is None or not hasattr(
            self.preprocessor.tokenizer, "apply_chat_template"
        ):
            raise ValueError("`chat()` needs a preprocessor whose tokenizer has a chat template.")
        if "strip_prompt" in kwargs:
            raise ValueError("`chat()` always returns only the reply; drop `strip_prompt`.")
        unbatched = bool(messages) and isinstance(messages[0], dict)
        conversations = [messages] if unbatched else messages
        if not conversations:
            raise ValueError("`messages` must be a non-empty conversation.")
        tokenizer = self.preprocessor.tokenizer
        if tools is None:
            prompts = [tokenizer.apply_chat_template(c) for c in conversations]
            return self.generate(
                _TokenizedPrompts(prompts, unbatched), strip_prompt=True, **kwargs
            )
        if not hasattr(tokenizer, "parse_reply"):
            raise ValueError(
                f"`tools` needs a tokenizer that reads tool calls; "
                f"{type(tokenizer).__name__} has no `parse_reply()`."
            )
        prompts = [tokenizer.apply_chat_template(c, tools=tools) for c in conversations]
        # Tool calls start with a control token, which decoding to text
        # drops: read the reply from its ids.
        outputs = self.generate(
            _TokenizedPrompts(prompts, unbatched, return_token_ids=True),
            strip_prompt=True,
            **kwargs,
        )
        stop_strings = kwargs.get("stop_strings")
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        replies = []
        for ids, mask in zip(outputs["token_ids"], outputs["padding_mask"]):
            reply = tokenizer.parse_reply(ids[mask])
            if stop_strings and reply["content"] is not None:
                reply["content"] = cut_at_stop_strings(
                    reply["content"], stop_strings, kwargs.get("keep_stop_strings", False)
                )
            replies.append(reply)
        per_prompt = kwargs.get("num_return_sequences", 1)
        if per_prompt > 1:
            replies = [replies[i : i + per_prompt] for i in range(0, len(replies), per_prompt)]
        return replies[0] if unbatched else replies

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


class _TokenizedPrompts(
    collections.namedtuple(
        "_TokenizedPrompts", ["token_ids", "unbatched", "return_token_ids"], defaults=[False]
    )
):
    """Prompts already turned into ids (with the start token), e.g. by a chat template.

    With `return_token_ids`, `generate()` returns the `token_ids` and
    `padding_mask` it generated instead of text (as without a
    preprocessor), so that callers can read control tokens such as
    `[TOOL_CALLS]`, count tokens or score them.
    """


class _DecodeOptions(
    collections.namedtuple(
        "_DecodeOptions",
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
    """Static settings of one compiled decode loop (part of its cache key)."""


def _sampler_key(sampler):
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
        processors.append(logits_processors.RepetitionPenalty(repetition_penalty))
    if presence_penalty is not None or frequency_penalty is not None:
        processors.append(
            logits_processors.OccurrencePenalty(presence_penalty or 0.0, frequency_penalty or 0.0)
        )
    if min_p is not None:
        processors.append(logits_processors.MinP(min_p))
    return tuple(processors)


def _check_processors(processors):
    if processors is None:
        return ()
    if callable(processors):
        processors = [processors]
    for processor in processors:
        if not callable(processor):
            raise ValueError(
                "`logits_processors` must be a list of callables "
                f"`(logits, token_ids, index, prompt_mask) -> logits`. Received: {processor!r}"
            )
    return tuple(processors)


def _check_optional_length(name, value, minimum=2):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"`{name}` must be an int of at least {minimum}. Received: {name}={value!r}"
        )






def _check_dataset_is_batched(dataset):
    """Raises unless each element of `dataset` is a batch of prompts.

    Datasets are generated batch by batch, as in keras_hub (which fails on
    unbatched ones); a scalar string would otherwise be read as a batch of
    characters.
    """
    spec = dataset.element_spec
    batched_rank = 1
    if isinstance(spec, dict) and "token_ids" in spec:
        spec, batched_rank = spec["token_ids"], 2
    rank = getattr(getattr(spec, "shape", None), "rank", None)
    if rank is not None and rank < batched_rank:
        raise ValueError(
            "`inputs` must be a batched tf.data.Dataset: `generate()` runs one "
            "batch per element, as keras_hub does. Received a dataset whose "
            f"elements are single prompts ({dataset.element_spec}). Batch it "
            "first, e.g. `dataset.batch(8)`."
        )


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


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def _align_prompts_right(token_ids, prompt_lengths, prompt_end, new_tokens):
    """Left-pads right-padded prompts so that all of them end at `prompt_end`.

    Returns `(token_ids, padding_mask)` of width `prompt_end + new_tokens`.
    """
    batch_size = token_ids.shape[0]
    aligned_ids = np.zeros((batch_size, prompt_end + new_tokens), token_ids.dtype)
    aligned_mask = np.zeros(aligned_ids.shape, bool)
    for row, length in enumerate(prompt_lengths):
        aligned_ids[row, prompt_end - length : prompt_end] = token_ids[row, :length]
        aligned_mask[row, prompt_end - length : prompt_end] = True
    return aligned_ids, aligned_mask


def _align_prompts_left(token_ids, output_mask, prompt_lengths, prompt_end, width):
    """Inverse of `_align_prompts_right`: each row back to column 0, `width` wide."""
    batch_size, aligned_width = token_ids.shape
    left_ids = np.zeros((batch_size, width), token_ids.dtype)
    left_mask = np.zeros((batch_size, width), bool)
    for row, length in enumerate(prompt_lengths):
        start = prompt_end - length
        kept = min(aligned_width - start, width)
        left_ids[row, :kept] = token_ids[row, start : start + kept]
        left_mask[row, :kept] = output_mask[row, start : start + kept]
    return left_ids, left_mask


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
    suffix is emitted, so the pieces always join to the final text. Text is
    held back while it ends in an incomplete UTF-8 character or could be the
    start of a stop string, and a row ends at its first stop string.
    """

    def __init__(
        self,
        tokenizer,
        callback,
        prompt_lengths,
        stop_token_ids,
        max_new_tokens,
        unbatched,
        stop_strings=(),
        keep_stop_strings=False,
    ):
        self.tokenizer = tokenizer
        self.callback = callback
        self.prompt_lengths = [int(n) for n in prompt_lengths]
        self.stop_token_ids = set(stop_token_ids or ())
        self.special_token_ids = set(tokenizer.special_token_ids)
        self.max_new_tokens = max_new_tokens
        self.unbatched = unbatched
        self.stop_strings = list(stop_strings)
        self.keep_stop_strings = keep_stop_strings
        self.holdback = max((len(s) for s in self.stop_strings), default=1) - 1
        self.generated = [[] for _ in self.prompt_lengths]
        self.emitted = ["" for _ in self.prompt_lengths]
        self.done = [False for _ in self.prompt_lengths]
        self.next_position = min(self.prompt_lengths)

    def add(self, position, token_ids):
        if position < self.next_position:
            return
        self.next_position = position + 1
        self._emit([self._add_to_row(row, position, t) for row, t in enumerate(token_ids.tolist())])

    def finish(self, token_ids):
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
