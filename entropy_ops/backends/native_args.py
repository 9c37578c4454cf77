"""The leading arguments of every native row kernel (``_C`` and ``_C_cuda``; csrc/README.md gives
the ABI): raw pointers as Python ints (0 for an absent tensor), sizes, strides in elements and the
dtype code."""
import torch

from .. import _native

DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}


def ptr(t):
    return 0 if t is None else t.data_ptr()


def row_args(x, labels, temperature, temperature_scalar, ignore_index, mask):
    """``logits, dtype, n_rows, vocab, row_stride, temperature, temperature_scalar, labels,
    labels_int32, ignore_index, mask`` for the ``[N, V]`` rows ``x``."""
    return (
        x.data_ptr(), DTYPE_CODES[x.dtype], x.shape[0], x.shape[1], x.stride(0),
        ptr(temperature), float(temperature_scalar),
        ptr(labels), labels is not None and labels.dtype == torch.int32, int(ignore_index),
        ptr(mask),
    )


def cuda_launch(t):
    """``device, stream`` of a ``_C_cuda`` call: the tensor's device and that device's current
    stream; device 0 and the null stream for the CPU tensors of the CUDA emulator (tests/cuda_emu)."""
    if t.device.type == "cpu":
        return 0, 0
    if _native.cuda_emulator():  # host code must never be handed device pointers
        raise RuntimeError("ENTROPY_OPS_CUDA_EMULATOR is set: the emulated cuda kernels run on CPU tensors "
                           "only; unset it to run them on the GPU")
    return t.device.index, torch.cuda.current_stream(t.device).cuda_stream
