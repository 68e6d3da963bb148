"""What only torch tensors need: checks and layout when saving, views when reading.

Imported only once a state holds a torch tensor or a reader asks for torch tensors
(``read_state(framework="torch")``): ``import asynccp`` never loads torch. CPU tensors
are copied by address (checked again when the copy starts); CUDA tensors are copied
by torch into pinned host memory, on their device's stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._schema import ST_TO_TORCH, TORCH_TO_ST, Tensor

__all__ = ["address_of", "device_copier", "from_buffer", "pinned", "plan_tensor"]


def plan_tensor(value: Any, path: str, name: str) -> Tensor:
    """Tensor ``value`` at ``path`` of a state, checked, as entry ``name`` of the file."""
    if value.layout != torch.strided:
        raise TypeError(f"{path} is a {value.layout} tensor: pass x.to_dense()")
    if value.is_quantized:
        raise TypeError(f"{path} is a quantized tensor: pass x.dequantize() or x.int_repr()")
    dtype_name = str(value.dtype).removeprefix("torch.")
    st = TORCH_TO_ST.get(dtype_name)
    if st is None:
        raise TypeError(
            f"{path} has dtype {value.dtype}, which safetensors cannot hold (it holds "
            f"{', '.join(sorted(TORCH_TO_ST))})"
        )
    kind = value.device.type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise TypeError(f"{path} is on {value.device}, but CUDA is not available here")
    elif kind != "cpu":
        raise TypeError(
            f"{path} is on device {value.device!s}: asynccp copies tensors from the "
            "CPU or a CUDA device; pass x.cpu()"
        )
    if not value.is_contiguous():
        raise TypeError(f"{path} is not contiguous: pass x.contiguous() (a copy)")
    if value.is_conj() or value.is_neg():
        raise TypeError(f"{path} has a lazy conjugate/negation: pass x.resolve_conj()")
    nbytes = value.numel() * value.element_size()
    addr = value.data_ptr() if kind == "cpu" else 0
    return Tensor(
        name,
        st,
        list(value.shape),
        nbytes,
        value.element_size(),
        addr,
        value,
        device=kind == "cuda",
        torch=True,
    )


def address_of(t: Tensor) -> Callable[[], int]:
    """Where a CPU tensor's bytes are when the copy starts: a tensor resized (its storage
    replaced) between ``save()`` planning it and copying it fails the save, instead of
    the copy reading memory the tensor no longer owns."""
    tensor, nbytes, key = t.owner, t.nbytes, t.key

    def address() -> int:
        if tensor.numel() * tensor.element_size() != nbytes or not tensor.is_contiguous():
            raise ValueError(f"tensor {key!r} changed shape while the save was waiting")
        return int(tensor.data_ptr())

    return address


def pinned(size: int) -> tuple[Any, Any]:
    """Pinned (page-locked) host memory from torch's caching host allocator: copies from
    a GPU into it are DMA transfers, and its blocks are reused from save to save."""
    owner = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    return owner, owner.numpy()


def device_copier(gpu: list[tuple[int, Any, int]]) -> Callable[[Any], None]:
    """Copies each GPU tensor into its place in the pinned file (worker thread)."""

    def copy(owner: Any) -> None:  # pragma: no cover - needs a CUDA device
        devices = set()
        for pos, tensor, nbytes in gpu:
            flat = tensor.detach().reshape(-1).view(torch.uint8)
            owner[pos : pos + nbytes].copy_(flat, non_blocking=True)
            devices.add(tensor.device)
        for device in devices:  # the copies were queued on each device's current stream
            torch.cuda.current_stream(device).synchronize()

    return copy


def from_buffer(
    buf: Any, dtype: str, shape: list[int], count: int, offset: int, aligned: bool
) -> Any:
    """A tensor of ``count`` items of safetensors ``dtype`` at ``offset`` of ``buf``: a view
    of it where ``offset`` is a multiple of the item size, a copy otherwise."""
    tdtype = getattr(torch, ST_TO_TORCH[dtype])
    if count == 0:
        return torch.empty(shape, dtype=tdtype)
    t = torch.frombuffer(buf, dtype=tdtype, count=count, offset=offset)
    return (t if aligned else t.clone()).reshape(shape)
