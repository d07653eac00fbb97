"""Streaming access to safetensors checkpoints: read one tensor at a time, write one at a time.

``safetensors.torch.save_file`` needs every tensor in memory at once; :class:`StreamingWriter`
writes the header first (all shapes and dtypes are known before merging starts) and then each
tensor's bytes as it is produced, so merging holds only a few tensors in memory.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

_DTYPE_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}


def torch_dtype(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code ("F32" -> torch.float32)."""
    if code not in _CODE_DTYPES:
        raise ValueError(f"safetensors dtype {code!r} is not supported; supported: {sorted(_CODE_DTYPES)}")
    return _CODE_DTYPES[code]


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is, read from the safetensors header without loading it."""

    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype code, e.g. "F32", "BF16"


def weight_files(checkpoint: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (single file or sharded with an index)."""
    root = Path(checkpoint)
    index = root / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [root / s for s in shards]
    single = root / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(f"{root} holds no model.safetensors or model.safetensors.index.json")


def _read_header(path: Path) -> dict:
    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(size))


def tensor_index(checkpoint: str | Path) -> dict[str, TensorInfo]:
    """Name -> :class:`TensorInfo` for every tensor of a checkpoint, from the headers only."""
    out: dict[str, TensorInfo] = {}
    for f in weight_files(checkpoint):
        for name, meta in _read_header(f).items():
            if name != "__metadata__":
                out[name] = TensorInfo(f, tuple(meta["shape"]), meta["dtype"])
    return out


class CheckpointReader:
    """Opens every shard of a checkpoint with ``safe_open`` and returns tensors one by one."""

    def __init__(self, checkpoint: str | Path) -> None:
        self.index = tensor_index(checkpoint)
        self._stack = ExitStack()
        self._handles = {}
        for f in {i.file for i in self.index.values()}:
            self._handles[f] = self._stack.enter_context(safe_open(str(f), framework="pt", device="cpu"))

    def get(self, name: str) -> torch.Tensor:
        return self._handles[self.index[name].file].get_tensor(name)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamingWriter:
    """Write a safetensors file tensor by tensor, in the order of the ``layout`` given upfront."""

    def __init__(
        self,
        path: str | Path,
        layout: dict[str, tuple[tuple[int, ...], torch.dtype]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = metadata
        offset = 0
        self._expected: list[tuple[str, tuple[int, ...], torch.dtype]] = []
        for name, (shape, dtype) in layout.items():
            if dtype not in _DTYPE_CODES:
                raise ValueError(f"tensor {name!r}: dtype {dtype} cannot be written to safetensors")
            numel = 1
            for s in shape:
                numel *= s
            nbytes = numel * torch.empty((), dtype=dtype).element_size()
            header[name] = {
                "dtype": _DTYPE_CODES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
            self._expected.append((name, tuple(shape), dtype))
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to 8-byte alignment
        self._fh = Path(path).open("wb")
        self._fh.write(struct.pack("<Q", len(raw)))
        self._fh.write(raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        exp_name, shape, dtype = self._expected[self._next]
        if name != exp_name or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(
                f"expected tensor {exp_name!r} {shape} {dtype}, got {name!r} {tuple(tensor.shape)} {tensor.dtype}"
            )
        t = tensor.detach().contiguous().cpu()
        # reinterpret as bytes (works for bfloat16, which numpy lacks); safetensors is little-endian
        self._fh.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._expected):
            missing = [n for n, _, _ in self._expected[self._next :]]
            self._fh.close()
            raise ValueError(
                f"safetensors file closed before writing {len(missing)} tensors, first {missing[0]!r}"
            )
        self._fh.close()

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._fh.close()


def iter_names(index: dict[str, TensorInfo]) -> Iterator[str]:
    """Tensor names in a stable order (sorted, as ``save_file`` writes them)."""
    yield from sorted(index)
