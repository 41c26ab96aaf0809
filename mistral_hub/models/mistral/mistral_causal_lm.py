import keras
from keras import ops

from mistral_hub.models.causal_lm import CausalLM
from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm_preprocessor import (
    MistralCausalLMPreprocessor,
)
from mistral_hub.models.mistral.mistral_transformer_decoder import (
    compute_attention_mask,
)
from mistral_hub.samplers.logits_processors import chain
from mistral_hub.utils.tensor_utils import call_layer
from mistral_hub.utils.tensor_utils import host_callback
from mistral_hub.utils import validation
from mistral_hub.utils.tensor_utils import update_along_axis

# Prompts are prefilled in chunks of at most this many tokens, which bounds
# the attention scores' memory by chunk x (window + chunk).
_PREFILL_CHUNK = 512


@keras.saving.register_keras_serializable(package="mistral_hub")
class MistralCausalLM(CausalLM):
    """Mistral for causal language modeling: `generate()`, `fit()`, `score()`.

    Logits come from the backbone's untied output embedding. Generation keeps
    one KV cache per layer, bounded by the sliding window when there is one
    (a rolling buffer), prefills prompts in chunks (attention memory bounded
    by chunk x window) and runs the whole decode loop compiled: `jax.jit` on
    JAX, `tf.function` on TensorFlow, and in-place cache updates on torch,
    where `compile(jit_compile=True)` also compiles each decode step with
    `torch.compile`.
    Each decode step calls the layers' `call()` directly, with the mask and
    RoPE tables computed once for all layers. Prompts of different lengths
    with a `max_new_tokens` budget are left-padded, so that every row starts
    decoding from its own last prompt token.

    Args:
        backbone: A `MistralBackbone`.
        preprocessor: A `MistralCausalLMPreprocessor`, or None to feed token
            tensors directly.
        **kwargs: `name`, and `compile=False` to skip default compilation.

    Example:
    >>> import numpy as np
    >>> backbone = MistralBackbone(
    ...     vocabulary_size=64, num_layers=1, num_query_heads=2,
    ...     hidden_dim=16, intermediate_dim=32, num_key_value_heads=1,
    ...     sliding_window=8,
    ... )
    >>> causal_lm = MistralCausalLM(backbone)
    >>> prompt = {
    ...     "token_ids": np.array([[1, 5, 9, 0, 0, 0]], "int32"),
    ...     "padding_mask": np.array([[1, 1, 1, 0, 0, 0]], "int32"),
    ... }
    >>> output = causal_lm.generate(prompt, stop_token_ids=None)
    >>> output["token_ids"].shape
    (1, 6)
    """

    backbone_cls = MistralBackbone
    preprocessor_cls = MistralCausalLMPreprocessor

    def __init__(self, backbone, preprocessor=None, **kwargs):
        self.backbone = backbone
        self.preprocessor = preprocessor
        inputs = backbone.input
        hidden_states = backbone(inputs)
        logits = backbone.token_embedding(hidden_states, reverse=True)
        super().__init__(inputs=inputs, outputs=logits, **kwargs)

    def call_with_cache(
        self, token_ids, cache, cache_update_index, sequence_starts=None
    ):
        """Runs `token_ids` through the model, reading and writing the cache.

        Args:
            token_ids: `(batch, T)` ids in columns `cache_update_index ...
                cache_update_index + T - 1` (`T` is 1 when decoding).
            cache: tuple with one `(batch, 2, cache_length, kv_heads,
                head_dim)` tensor per layer. Column `p` lives in slot
                `p % cache_length`, so the cache can be shorter than the
                sequence (a rolling buffer at least as long as the window).
                The `T` slots written must not wrap around its end.
            cache_update_index: int or 0-d tensor.
            sequence_starts: optional `(batch,)` int tensor for left-padded
                rows: row `b` starts at column `sequence_starts[b]`, so its
                token in column `p` sits at position `p - sequence_starts[b]`
                and earlier columns are never attended to. Without it,
                column and position are the same.

        Returns:
            `(logits, hidden_states, cache)`.
        """
        hidden_states, cache = self._call_layers_with_cache(
            token_ids, cache, cache_update_index, sequence_starts
        )
        logits = call_layer(self.backbone.token_embedding, hidden_states, reverse=True)
        return logits, hidden_states, cache

    def _call_layers_with_cache(self, token_ids, cache, start_index, sequence_starts=None):
        """Final-norm hidden states of `token_ids` at `start_index...`, and the cache.

        The forward pass of `call_with_cache` and of each prefill chunk:
        the sublayers' `call()` run directly (see `call_layer`), and the
        attention mask and RoPE tables are computed once for all layers.
        """
        backbone = self.backbone
        query_length = ops.shape(token_ids)[1]
        x = call_layer(backbone.token_embedding, token_ids)
        attention_mask = compute_attention_mask(
            query_length,
            ops.shape(cache[0])[2],
            start_index=start_index,
            sliding_window=backbone.sliding_window,
            sequence_starts=sequence_starts,
        )
        positions = ops.arange(query_length, dtype="int32") + start_index
        if sequence_starts is not None:
            positions = positions[None, :] - ops.cast(sequence_starts, "int32")[:, None]
        rotary_embedding = backbone.transformer_layers[
            0
        ]._self_attention_layer.rotary_embedding(positions)
        updated_cache = []
        for layer, layer_cache in zip(backbone.transformer_layers, cache):
            x, layer_cache = call_layer(
                layer,
                x,
                decoder_attention_mask=attention_mask,
                self_attention_cache=layer_cache,
                self_attention_cache_update_index=start_index,
                rotary_embedding=rotary_embedding,
            )
            updated_cache.append(layer_cache)
        return call_layer(backbone.layer_norm, x), tuple(updated_cache)

    def cache_length(self, sequence_length):
        """KV cache slots needed to generate up to `sequence_length` tokens."""
        window = self.backbone.sliding_window
        return sequence_length if window is None else min(window, sequence_length)

    def _build_cache(self, token_ids, index, cache_length, sequence_starts=None):
        """Prefills the cache from `token_ids`, keeping columns `< index`.

        The prefix runs in chunks of at most `_PREFILL_CHUNK` tokens, only as
        many as cover `index`, without logits. Each chunk attends to itself
        and to the previous chunks through a rolling buffer of at least
        `window + chunk - 1` slots (all columns without a window), so the
        attention scores of a long prompt take `chunk x buffer` memory, not
        `prompt x prompt`. The keys/values of the last `cache_length`
        columns before `index` are then gathered into their slots of the
        decoding cache.

        Args:
            token_ids: `(batch, P)` prefix ids, `P >= index`.
            index: int or 0-d int tensor, the first column decoding will
                write.
            cache_length: int, slots per layer.
            sequence_starts: optional `(batch,)` first column of each
                left-padded row (see `call_with_cache`).

        Returns:
            `(hidden_states (batch, P, hidden), cache)`; hidden states of
            columns past the last chunk run are zero.
        """
        backbone = self.backbone
        batch_size, prefill_length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        chunk = min(_PREFILL_CHUNK, prefill_length)
        num_chunks = -(-prefill_length // chunk)
        padded_length = num_chunks * chunk
        buffer_length = padded_length
        window = backbone.sliding_window
        if window is not None:
            # A multiple of the chunk, so that no chunk's write wraps around.
            buffer_length = min(padded_length, chunk * -(-(window + chunk - 1) // chunk))
        if padded_length > prefill_length:
            token_ids = ops.pad(token_ids, ((0, 0), (0, padded_length - prefill_length)))
        buffer_shape = (
            batch_size,
            2,
            buffer_length,
            backbone.num_key_value_heads,
            backbone.resolved_head_dim,
        )
        buffers = tuple(
            ops.zeros(buffer_shape, dtype=self.compute_dtype)
            for _ in backbone.transformer_layers
        )

        def run_chunk(chunk_index, hidden_states, buffers):
            start = chunk_index * chunk
            chunk_ids = ops.slice(token_ids, [0, start], [batch_size, chunk])
            x, buffers = self._call_layers_with_cache(
                chunk_ids, buffers, start, sequence_starts
            )
            hidden_states = update_along_axis(hidden_states, x, start, axis=1)
            return chunk_index + 1, hidden_states, buffers

        if num_chunks == 1:
            hidden_states, buffers = self._call_layers_with_cache(
                token_ids, buffers, 0, sequence_starts
            )
        else:
            hidden_states = ops.zeros(
                (batch_size, padded_length, backbone.hidden_dim), dtype=self.compute_dtype
            )
            # Only the chunks that hold columns before `index`.
            chunks_needed = (index + chunk - 1) // chunk
            _, hidden_states, buffers = ops.while_loop(
                lambda chunk_index, *_: chunk_index < chunks_needed,
                run_chunk,
                (ops.convert_to_tensor(0, "int32"), hidden_states, buffers),
            )

        # Slot s of the decoding cache holds the latest column p < index
        # with p % cache_length == s; negative columns are never attended
        # to.
        last = index - 1
        columns = last - ops.mod(last - ops.arange(cache_length, dtype="int32"), cache_length)
        slots = ops.mod(ops.maximum(columns, 0), buffer_length)
        cache = tuple(ops.take(buffer, slots, axis=2) for buffer in buffers)
        return hidden_states[:, :prefill_length], cache

    def generate_step(
        self,
        inputs,
        stop_token_ids=None,
        sampler=None,
        seed=None,
        prefill_length=None,
        stream_callback=None,
        logits_processors=(),
        stop_condition=None,
        left_padded=False,
        call_with_cache=None,
    ):
        """Generates one batch of token ids; the compiled part of `generate()`.

        Args:
            inputs: dict of `(batch, T)` `token_ids` and `padding_mask`,
                right-padded (each prompt starts at column 0), or
                left-padded with `left_padded=True`.
            stop_token_ids: None or a tuple of ids that end a row.
            sampler: the sampler (defaults to the compiled one).
            seed: optional `(2,)` int seed tensor for the sampler.
            prefill_length: int, how many leading columns to prefill in
                one pass (at least the shortest prompt); defaults to `T`.
                With `left_padded=True`, every prompt must end exactly
                there.
            stream_callback: optional Python `fn(position, token_ids)`
                called from inside the loop with each position's `(batch,)`
                ids as soon as they are final (all but the last position;
                `generate()` reports that one after the loop).
            logits_processors: callables
                `(logits, token_ids, index, prompt_mask) -> logits` applied
                in order at every step.
            stop_condition: optional `fn(token_ids, index) -> (batch,) bool`
                evaluated after each step; True ends that row (used for stop
                strings).
            left_padded: bool. Prompts are right-aligned at column
                `prefill_length`, so that all of them are prefilled at once
                and every row decodes from its first new token, however
                long its prompt (right-padded rows start decoding at the
                shortest prompt and step through the rest of theirs one
                token at a time). Each row's positions count from its first
                prompt token, so the results equal those of right padding.
            call_with_cache: the decode step, `self.call_with_cache` by
                default; on torch `generate()` passes it traced into a torch
                graph, or compiled by `torch.compile` with
                `compile(jit_compile=True)`.

        Returns:
            A dict of `token_ids` and a bool `padding_mask` that is True up
            to and including each row's first generated stop token (and on
            the left padding).
        """
        sampler = sampler or self.sampler
        call_with_cache = call_with_cache or self.call_with_cache
        token_ids = ops.convert_to_tensor(inputs["token_ids"], "int32")
        padding_mask = ops.cast(inputs["padding_mask"], "bool")
        max_length = ops.shape(token_ids)[1]
        prefill_length = prefill_length or max_length
        prompt_lengths = ops.sum(ops.cast(padding_mask, "int32"), axis=-1)
        if left_padded:
            index = prefill_length
            sequence_starts = prefill_length - prompt_lengths
            generated = ops.arange(max_length, dtype="int32")[None, :] >= index
        else:
            index = ops.min(prompt_lengths)
            sequence_starts = None
            generated = ops.logical_not(padding_mask)

        hidden_states, cache = self._build_cache(
            token_ids[:, :prefill_length],
            index,
            self.cache_length(max_length),
            sequence_starts,
        )
        if prefill_length < max_length:
            hidden_states = ops.pad(
                hidden_states, ((0, 0), (0, max_length - prefill_length), (0, 0))
            )
        if left_padded:
            # The row starts travel with the cache, so that beam search
            # repeats and reorders them with the rows.
            cache = (cache, sequence_starts)

        def next(prompt, cache, index):
            cache_update_index = index - 1
            # A gather, not a slice: on torch a slice is a view whose
            # storage offset (the index) `torch.compile` would guard on.
            prompt = ops.take(prompt, ops.reshape(cache_update_index, (1,)), axis=1)
            if stream_callback is not None:
                host_callback(stream_callback, cache_update_index, prompt[:, 0])
            if left_padded:
                layer_cache, starts = cache
                logits, hidden_states, layer_cache = call_with_cache(
                    prompt, layer_cache, cache_update_index, sequence_starts=starts
                )
                cache = (layer_cache, starts)
            else:
                logits, hidden_states, cache = call_with_cache(
                    prompt, cache, cache_update_index
                )
            return ops.squeeze(logits, axis=1), ops.squeeze(hidden_states, axis=1), cache

        extra = {}
        if logits_processors:
            extra["logits_processor"] = chain(logits_processors, padding_mask)
        if stop_condition is not None:
            extra["stop_condition"] = stop_condition
        token_ids = sampler(
            next=next,
            prompt=token_ids,
            cache=cache,
            index=index,
            mask=padding_mask,
            stop_token_ids=stop_token_ids,
            hidden_states=hidden_states,
            model=self,
            seed=seed,
            **extra,
        )
        if isinstance(token_ids, tuple):
            raise ValueError(
                "`generate()` returns one sequence per prompt; use a "
                "`BeamSampler` with `return_all_beams=False`."
            )

        if stop_token_ids is not None:
            stop_ids = ops.convert_to_tensor(list(stop_token_ids), dtype="int32")
            is_stop = ops.any(ops.equal(token_ids[:, :, None], stop_ids), axis=-1)
            is_stop = ops.cast(ops.logical_and(is_stop, generated), "int32")
            after_stop = ops.cumsum(is_stop, axis=-1) - is_stop
            padding_mask = ops.equal(after_stop, 0)
        else:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def score(
        self,
        token_ids,
        padding_mask=None,
        scoring_mode="logits",
        layer_intercept_fn=None,
        target_ids=None,
    ):
        """Scores token sequences, as keras_hub's `score()`.

        Args:
            token_ids: `(batch, T)` int ids.
            padding_mask: `(batch, T)` mask; defaults to all ones.
            scoring_mode: `"logits"` for `(batch, T, vocab)` logits or
                `"loss"` for the `(batch, T)` per-token cross-entropy of
                `target_ids`.
            layer_intercept_fn: optional `fn(x, i)` applied to the embeddings
                (`i = -1`) and to the output of every decoder layer `i`; its
                return value replaces `x`.
            target_ids: `(batch, T)` int ids, required for `"loss"`.

        Returns:
            Logits or per-token losses.

        Raises:
            ValueError: for an unknown `scoring_mode`, a missing `target_ids`
                in `"loss"` mode, ids outside the vocabulary, or a
                `padding_mask` that is not right-padded.
        """
        if scoring_mode not in ("logits", "loss"):
            raise ValueError(
                '`scoring_mode` must be "logits" or "loss". '
                f"Received: {scoring_mode!r}"
            )
        if scoring_mode == "loss" and target_ids is None:
            raise ValueError('`scoring_mode="loss"` needs `target_ids`.')
        vocabulary_size = self.backbone.vocabulary_size
        checked_ids = validation.check_token_ids("token_ids", token_ids, vocabulary_size)
        if padding_mask is not None:
            validation.check_padding_mask(
                "padding_mask",
                padding_mask,
                None if checked_ids is None else checked_ids.shape,
            )
        if target_ids is not None:
            validation.check_token_ids("target_ids", target_ids, vocabulary_size)
        token_ids = ops.convert_to_tensor(token_ids, "int32")
        if padding_mask is None:
            padding_mask = ops.ones_like(token_ids)
        intercept = layer_intercept_fn or (lambda x, i: x)
        x = intercept(self.backbone.token_embedding(token_ids), -1)
        for i, layer in enumerate(self.backbone.transformer_layers):
            x = intercept(layer(x, decoder_padding_mask=padding_mask), i)
        logits = self.backbone.token_embedding(self.backbone.layer_norm(x), reverse=True)
        if scoring_mode == "logits":
            return logits
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        return loss(ops.convert_to_tensor(target_ids, "int32"), logits)
