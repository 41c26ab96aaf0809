from keras import ops


def rotary_cos_sin(positions, head_dim, max_wavelength, scaling_factor, dtype):
    """Cosine and sine tables for rotate-half rotary embeddings.

    Args:
        positions: float or int tensor of shape `(T,)` with absolute positions.
        head_dim: int. Size of each attention head (must be even).
        max_wavelength: float. The RoPE base (`rope_theta` in transformers).
        scaling_factor: float. Linear position interpolation factor.
        dtype: The dtype of the returned tables.

    Returns:
        `(cos, sin)`, each of shape `(T, head_dim)`.
    """
    exponents = ops.arange(0, head_dim, 2, dtype="float32") / head_dim
    inverse_frequencies = 1.0 / ops.power(float(max_wavelength), exponents)
    positions = ops.cast(positions, "float32") / scaling_factor
    angles = ops.einsum("t,f->tf", positions, inverse_frequencies)
    angles = ops.concatenate([angles, angles], axis=-1)
    return ops.cast(ops.cos(angles), dtype), ops.cast(ops.sin(angles), dtype)


def apply_rotary_embedding(x, cos, sin):
    """Rotates `x` of shape `(B, T, heads, head_dim)` by `(T, head_dim)` tables.

    Uses the rotate-half (GPT-NeoX) layout that Mistral checkpoints in
    transformers format are stored in, so no weight permutation is needed.
    """
    half = ops.shape(x)[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = ops.concatenate([-x2, x1], axis=-1)
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    return x * cos + rotated * sin
