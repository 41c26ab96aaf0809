"""int8 weight-only matrix products for inference on torch CPUs.

Keras' int8 layers quantize their inputs to int8 on every call and multiply
int8 by int8. On a CPU, batch-1 decoding is bound by reading the weights,
and torch has a kernel that reads int8 weights and multiplies them with
bfloat16 activations (`torch._weight_int8pack_mm`, the kernel behind
torchao's and gpt-fast's int8 CPU decoding): it reads a quarter of the bytes
of a float32 product and runs 2-3x faster than it on a 2-core machine,
where Keras' int8 x int8 product is slower than float32.

That kernel needs each output unit's weights contiguous (the `(out, in)`
layout of `torch.nn.Linear`), while Keras stores kernels `(in, out)`. So on
torch the int8 kernel's *storage* is transposed once when the layer builds
its int8 variables (`store_contraction_major`): the variable keeps Keras'
shape, values, name and saved form, and every Keras operation on it works
as before (a strided view); only the memory order changes.

`weight_only_matmul` is used outside autograd (`generate()`, `predict()`,
`evaluate()`); training keeps Keras' int8 path and its straight-through
gradient. The activations are rounded to bfloat16 instead of being
quantized to int8, so the result is closer to the float32 model's than
Keras' int8 x int8 product (tested against the dequantized kernel).
"""

import math

import keras

# Rows up to which the int8-weight kernel beats a float32 product (2-core
# machine, 1024 x 3584 kernel: 3.0x at 1 row, 1.2x at 128, 0.86x at 512):
# it dequantizes the weights per row block, so long prefills run Keras'
# int8 path instead.
_MAX_ROWS = 256


def _torch():
    if keras.config.backend() != "torch":
        return None
    import torch

    if not hasattr(torch, "_weight_int8pack_mm"):
        return None
    return torch


def store_contraction_major(layer, variable, num_contracted_axes):
    """Transposes the storage of an int8 `variable` for `weight_only_matmul`.

    After this, the kernel's leading `num_contracted_axes` axes (those the
    layer contracts with its inputs) vary fastest in memory. Shape, values
    and dtype are unchanged; `assign` keeps the layout (it copies in place).
    A no-op on other backends and devices.

    Args:
        layer: the layer owning `variable` (its torch parameter list is
            updated to the re-stored parameter).
        variable: an int8 `keras.Variable`.
        num_contracted_axes: int, how many leading axes are contracted.
    """
    torch = _torch()
    if torch is None or variable.value.device.type != "cpu":
        # Other devices run Keras' int8 product, on Keras' layout.
        return
    shape = tuple(variable.shape)
    contracted = math.prod(shape[:num_contracted_axes])
    value = variable.value.detach()
    transposed = value.reshape(contracted, -1).t().contiguous()
    parameter = torch.nn.Parameter(transposed.t().view(shape), requires_grad=False)
    variable._value = parameter
    torch_params = layer.__dict__.get("_modules", {}).get("_torch_params")
    if torch_params is not None and variable.path in torch_params:
        torch_params[variable.path] = parameter
    units = math.prod(shape[num_contracted_axes:])
    if units not in _UNIT_SCALES:
        _UNIT_SCALES[units] = torch.ones(units, dtype=torch.bfloat16)


def weight_only_matmul(inputs, kernel, scale, num_contracted_axes):
    """`inputs @ (kernel / scale)` with int8 weights, or None where unsupported.

    Args:
        inputs: float tensor whose trailing axes match the kernel's
            contracted axes.
        kernel: int8 `keras.Variable` re-stored by `store_contraction_major`.
        scale: float tensor with one value per output unit (Keras' int8
            scale: the float weights are `kernel / scale`).
        num_contracted_axes: int, the kernel's leading contracted axes.

    Returns:
        The product with shape `inputs.shape[:-c] + kernel.shape[c:]`, in
        the inputs' dtype, or None when the fast kernel does not apply
        (another backend, autograd recording, a non-CPU device, more than
        `_MAX_ROWS` rows, or a kernel whose storage is not
        contraction-major), in which case the caller runs Keras' int8 path.
    """
    torch = _torch()
    if (
        torch is None
        or torch.is_grad_enabled()
        or not isinstance(inputs, torch.Tensor)
        or inputs.device.type != "cpu"
        or not inputs.is_floating_point()
    ):
        return None
    kernel_shape = tuple(kernel.shape)
    contracted = math.prod(kernel_shape[:num_contracted_axes])
    try:
        weights = kernel.value.view(contracted, -1).t()
    except RuntimeError:
        return None
    if not weights.is_contiguous():
        return None
    scale = keras.ops.convert_to_tensor(scale).reshape(-1)
    units = weights.shape[0]
    if scale.shape[0] != units:
        return None
    leading_shape = tuple(inputs.shape[: inputs.dim() - num_contracted_axes])
    if math.prod(leading_shape) > _MAX_ROWS:
        return None
    rows = inputs.reshape(-1, contracted).to(torch.bfloat16)
    # The kernel takes bfloat16 scales only; dividing by Keras' float32
    # scale afterwards avoids rounding every unit's scale to 8 bits.
    outputs = torch._weight_int8pack_mm(rows, weights, _unit_scales(torch, units))
    outputs = outputs.float() / scale
    return outputs.to(inputs.dtype).reshape(leading_shape + kernel_shape[num_contracted_axes:])


# Unit scales per output size, created with the int8 variables (outside any
# tracing): a stored tensor, not a fresh `torch.ones`, because inductor's
# lowering of the kernel needs its scales to be a real buffer, and one
# created while the decode step is traced would be a fake tensor.
_UNIT_SCALES = {}


def _unit_scales(torch, units):
    scales = _UNIT_SCALES.get(units)
    return torch.ones(units, dtype=torch.bfloat16) if scales is None else scales
