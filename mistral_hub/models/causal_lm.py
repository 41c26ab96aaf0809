import itertools

import keras
import numpy as np
from keras import ops

from mistral_hub import samplers
from mistral_hub.generation import chat as chat_lib
from mistral_hub.generation import layout
from mistral_hub.generation.options import DecodeOptions
from mistral_hub.generation.options import generation_options
from mistral_hub.generation.options import resolve_stop_token_ids
from mistral_hub.generation.options import sampler_key
from mistral_hub.generation.prompts import TokenizedPrompts
from mistral_hub.generation.prompts import prompt_batch
from mistral_hub.generation.streaming import TextStreamer
from mistral_hub.generation.streaming import stream_generate
from mistral_hub.generation.text import generated_texts
from mistral_hub.layers.variable_deletion import collect_garbage_after
from mistral_hub.models.task import Task
from mistral_hub.models.task import _is_tf_dataset
from mistral_hub.utils import backend
from mistral_hub.utils import dtype_utils

# The server, its tests and benchmarks import it from here.
_TokenizedPrompts = TokenizedPrompts


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
        """The backbone's; see `Backbone.get_quantization_layer_structure`.

        `quantize("gptq", config=keras.quantizers.GPTQConfig(...))` (or
        `"awq"`) on the task calls this to find the layers that turn token
        ids into hidden states and the blocks to quantize one by one.
        """
        return self.backbone.get_quantization_layer_structure(mode)

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """Quantizes the weights, as `Backbone.quantize` (see there)."""
        # Keras quantizes the task's layers directly, not through
        # `Backbone.quantize`: refuse what would fail midway here too.
        self.backbone._check_quantizable(mode, config)
        with collect_garbage_after():
            super().quantize(mode, config=config, filters=filters, **kwargs)

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
        `tf.function`; torch: a Python loop under `torch.no_grad()` with the
        KV cache updated in place, whose decode step (`call_with_cache`) is
        traced into a torch graph, or compiled by `torch.compile` with
        `compile(jit_compile=True)` (see `mistral_hub.utils.backend`).
        Functions are cached per sampler config, options and `run_eagerly`
        until `compile()` is called again; the latest one for the compiled
        sampler is also kept on `self.generate_function`.

        Args:
            sampler: a sampler overriding the compiled one, or None.
            options: a `DecodeOptions` (static settings of the loop).

        Returns:
            A function `(inputs, seed) -> {"token_ids", "padding_mask"}`.
        """
        options = options or DecodeOptions()
        chosen = sampler or self.sampler
        # Variables are part of the key: `quantize()` or `enable_lora()`
        # replace or add variables that an older traced function misses.
        # So is `run_eagerly`, which users also set without `compile()`.
        variable_ids = tuple(id(v) for v in self.variables)
        key = (sampler_key(chosen), options, variable_ids, bool(self.run_eagerly))
        cache = self.__dict__.setdefault("_generate_functions", {})
        if key not in cache:
            call_with_cache = self._compiled_call_with_cache(variable_ids)

            def step(inputs, seed):
                return self.generate_step(
                    inputs,
                    call_with_cache=call_with_cache,
                    stop_token_ids=options.stop_token_ids,
                    sampler=chosen,
                    seed=seed,
                    prefill_length=options.prefill_length,
                    stream_callback=self._stream_tokens if options.stream else None,
                    logits_processors=options.logits_processors,
                    stop_condition=options.stop_condition,
                    left_padded=options.left_padded,
                )

            # XLA as in keras_hub: Keras resolves `jit_compile` to True with
            # a GPU and to False on CPU-only machines, where TensorFlow's
            # own kernels decode faster than its XLA ones. The streaming
            # callback cannot be compiled by XLA.
            cache[key] = backend.compile_inference_function(
                self, step, jit_compile=bool(self.jit_compile) and not options.stream
            )
        if sampler is None:
            self.generate_function = cache[key]
        return cache[key]

    def _compiled_call_with_cache(self, variable_ids):
        """`call_with_cache` as torch runs it: traced, or compiled with `jit_compile`.

        One compiled decode step serves every sampler and decode option (and
        with `jit_compile`, every batch size and length), so it is kept
        apart from the generate functions (and across `compile()` calls)
        until the variables, `jit_compile` or `run_eagerly` change.
        """
        key = (variable_ids, bool(self.jit_compile), bool(self.run_eagerly))
        held = self.__dict__.get("_call_with_cache_step")
        if held is None or held[0] != key:
            held = (key, backend.compile_step_function(self, self.call_with_cache))
            self.__dict__["_call_with_cache_step"] = held
        return held[1]

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
        if getattr(self, "sampler", None) is None:
            # Built with `compile=False`: generation still works with the
            # default sampler, without touching the training setup.
            self.sampler = samplers.get("top_k")
            self.generate_function = None
        options = generation_options(
            self,
            max_length,
            stop_token_ids,
            strip_prompt,
            max_new_tokens=max_new_tokens,
            sampler=sampler,
            seed=seed,
            streamer=streamer,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            stop_strings=stop_strings,
            keep_stop_strings=keep_stop_strings,
            num_return_sequences=num_return_sequences,
            logits_processors=logits_processors,
        )
        # Without a seed, draw from NumPy's global state so that
        # `keras.utils.set_random_seed` makes generation reproducible.
        seeds = np.random.RandomState(options.seed) if options.seed is not None else np.random
        if not _is_tf_dataset(inputs):
            return self._generate_batch(inputs, options, seeds)
        _check_dataset_is_batched(inputs)
        outputs = [
            self._generate_batch(batch, options, seeds) for batch in inputs.as_numpy_iterator()
        ]
        if outputs and isinstance(outputs[0], dict):
            return {key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]}
        return list(itertools.chain.from_iterable(outputs))

    def _generate_batch(self, inputs, options, seeds):
        """One batch in three steps: prompts to ids, one compiled call, ids to text."""
        token_ids, padding_mask, unbatched = prompt_batch(
            inputs, self.preprocessor, options, self.backbone.vocabulary_size
        )
        prompt_lengths = padding_mask.sum(axis=-1)
        seed = seeds.randint(0, 2**31 - 1, size=(2,)).astype("int32")
        token_ids, output_mask = self._decode(
            token_ids, padding_mask, options, seed, unbatched
        )
        if options.max_new_tokens is not None:
            positions = np.arange(token_ids.shape[1])[None, :]
            output_mask &= positions < (prompt_lengths + options.max_new_tokens)[:, None]
        if options.strip_prompt:
            token_ids, output_mask = layout.strip_prompt(token_ids, output_mask, prompt_lengths)
        if self.preprocessor is None or getattr(inputs, "return_token_ids", False):
            return {"token_ids": token_ids, "padding_mask": output_mask}
        return generated_texts(
            self.preprocessor, token_ids, output_mask, prompt_lengths, options, unbatched
        )

    def _decode(self, token_ids, padding_mask, options, seed, unbatched):
        """Runs the compiled decode loop on right-padded prompts.

        Returns:
            `(token_ids, padding_mask)` as numpy arrays, right-padded as the
            inputs, the mask ending at each row's first stop token.
        """
        prompt_lengths = padding_mask.sum(axis=-1)
        # With a budget of new tokens per row, prompts of different lengths
        # are right-aligned (left-padded) so that every row decodes from its
        # first new token; right-padded rows would start at the shortest
        # prompt and step through the rest of theirs one token at a time.
        # Streaming, logits processors, stop strings and contrastive search
        # read the token layout, so they keep the right-padded one.
        left_padded = (
            options.max_new_tokens is not None
            and prompt_lengths.min() != prompt_lengths.max()
            and options.streamer is None
            and not options.logits_processors
            and options.stop_condition is None
            and not isinstance(options.sampler, samplers.ContrastiveSampler)
        )
        right_width = token_ids.shape[1]
        if left_padded:
            prefill_length = layout.round_up(int(prompt_lengths.max()), layout.PREFILL_BUCKET)
            token_ids, padding_mask = layout.align_right(
                token_ids, prompt_lengths, prefill_length, options.max_new_tokens
            )
        else:
            prefill_length = min(
                right_width, layout.round_up(int(prompt_lengths.min()), layout.PREFILL_BUCKET)
            )
        generate_function = self.make_generate_function(
            None if options.sampler is self.sampler else options.sampler,
            DecodeOptions(
                stop_token_ids=options.stop_token_ids,
                prefill_length=prefill_length,
                stream=options.streamer is not None,
                logits_processors=options.logits_processors,
                stop_condition=options.stop_condition,
                left_padded=left_padded,
            ),
        )
        text_streamer = None
        if options.streamer is not None:
            text_streamer = TextStreamer(
                self.preprocessor.tokenizer,
                options,
                prompt_lengths,
                unbatched and options.num_return_sequences == 1,
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
            if text_streamer is not None:
                backend.wait_for_host_callbacks()
        finally:
            self._active_text_streamer = None
        if text_streamer is not None:
            text_streamer.finish(token_ids)
        output_mask = np.asarray(ops.convert_to_numpy(outputs["padding_mask"])).astype(bool)
        if left_padded:
            token_ids, output_mask = layout.align_left(
                token_ids, output_mask, prompt_lengths, prefill_length, right_width
            )
        return token_ids, output_mask

    def _stream_tokens(self, position, token_ids):
        # Called from inside the compiled loop; forwards to this call's
        # streamer, so one compiled function serves every streamer.
        if self._active_text_streamer is not None:
            self._active_text_streamer.add(int(position), np.asarray(token_ids))

    def _resolve_stop_token_ids(self, stop_token_ids):
        # Kept for the server, which stops on the same ids as `generate()`.
        return resolve_stop_token_ids(self, stop_token_ids)

    def _tokenize_prompts(self, texts):
        # Kept for the server and tests; prompts to ids is the preprocessor's job.
        return self.preprocessor.tokenize_prompts(list(texts))

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
        return stream_generate(self.generate, inputs, **kwargs)

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
        return chat_lib.chat(self, messages, tools=tools, **kwargs)


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
