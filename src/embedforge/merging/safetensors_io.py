"""Streaming access to safetensors checkpoints: read one tensor at a time, write one at a time.

``safetensors.torch.save_file`` needs every tensor in memory at once; :class:`StreamingWriter`
writes the header first (all shapes and dtypes are known before merging starts) and then each
tensor's bytes as it is produced, so merging holds only a few tensors in memory.

Every header is checked against the file before a tensor is read (:func:`read_header`): a
truncated, padded or garbled file raises :class:`CorruptCheckpointError` naming the file, instead
of a low-level error from ``safe_open`` halfway through a merge.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

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

# bytes per element of every dtype code of the safetensors format (used to check a header only;
# merging itself is limited to _CODE_DTYPES)
_ITEM_BYTES = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
MAX_HEADER_BYTES = 100_000_000  # the limit the safetensors library itself enforces


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be a complete safetensors file (truncated, garbled, inconsistent)."""


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


def _shard_map(index: Path) -> dict[str, str]:
    """Tensor name -> shard file name, from a ``model.safetensors.index.json``."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CorruptCheckpointError(f"{index} is not a valid safetensors index ({exc!r})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorruptCheckpointError(f"{index}: weight_map must map tensor names to shard file names")
    return weight_map


def weight_files(checkpoint: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (single file or sharded with an index)."""
    root = Path(checkpoint)
    index = root / "model.safetensors.index.json"
    if index.exists():
        shards = [root / s for s in sorted(set(_shard_map(index).values()))]
        missing = [str(s) for s in shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards that do not exist: {missing[:5]}")
        return shards
    single = root / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(f"{root} holds no model.safetensors or model.safetensors.index.json")


def _corrupt(path: Path, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"checkpoint file {path} is truncated or corrupt: {what}")


def _check_entry(path: Path, name: str, meta: object) -> tuple[int, int]:
    """The (start, end) byte span of one header entry, after checking it describes its own size."""
    if not isinstance(meta, dict) or not {"dtype", "shape", "data_offsets"} <= set(meta):
        raise _corrupt(path, f"tensor {name!r} lacks dtype, shape or data_offsets in the header")
    dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
    if dtype not in _ITEM_BYTES:
        raise _corrupt(path, f"tensor {name!r} has unknown dtype {dtype!r}; known: {sorted(_ITEM_BYTES)}")
    ints = [*shape, *offsets] if isinstance(shape, list) and isinstance(offsets, list) else None
    if ints is None or len(offsets) != 2 or not all(type(x) is int and x >= 0 for x in ints):
        raise _corrupt(path, f"tensor {name!r} has shape {shape!r} and offsets {offsets!r}")
    numel = 1
    for dim in shape:
        numel *= dim
    start, end = offsets
    if end - start != numel * _ITEM_BYTES[dtype]:
        raise _corrupt(
            path,
            f"tensor {name!r} ({dtype} {shape}) needs {numel * _ITEM_BYTES[dtype]} bytes, "
            f"its offsets span {end - start}",
        )
    return start, end


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size.

    The header must parse, every tensor's offsets must match its dtype and shape, and the tensors
    must tile the data section exactly (as the safetensors library requires): a file cut short,
    padded, or with a garbled header raises :class:`CorruptCheckpointError` naming the file.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise _corrupt(path, f"{size} bytes, fewer than the 8-byte header length")
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise _corrupt(path, f"the header claims {n} bytes, the file holds {size - 8} after the length")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))  # the format's header is UTF-8 JSON
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"the header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, f"the header is a JSON {type(header).__name__}, not an object")
    spans = sorted(
        (*_check_entry(path, name, meta), name) for name, meta in header.items() if name != "__metadata__"
    )
    data_bytes, expected = size - 8 - n, 0
    for start, end, name in spans:
        if start != expected:
            raise _corrupt(path, f"tensor {name!r} starts at byte {start} of the data, expected {expected}")
        expected = end
    if expected != data_bytes:
        raise _corrupt(
            path, f"the header describes {expected} bytes of tensor data, the file holds {data_bytes}"
        )
    return header


def tensor_index(checkpoint: str | Path) -> dict[str, TensorInfo]:
    """Name -> :class:`TensorInfo` for every tensor of a checkpoint, from the headers only."""
    out: dict[str, TensorInfo] = {}
    for f in weight_files(checkpoint):
        for name, meta in read_header(f).items():
            if name != "__metadata__":
                if name in out:
                    raise CorruptCheckpointError(
                        f"tensor {name!r} is stored twice: in {out[name].file} and {f}"
                    )
                out[name] = TensorInfo(f, tuple(meta["shape"]), meta["dtype"])
    index = Path(checkpoint) / "model.safetensors.index.json"
    if index.exists():
        wrong = [
            n for n, shard in _shard_map(index).items() if n not in out or out[n].file != index.parent / shard
        ]
        if wrong:
            raise CorruptCheckpointError(f"{index} places tensors where their shards lack them: {wrong[:5]}")
    return out


class CheckpointReader:
    """Opens every shard of a checkpoint with ``safe_open`` and returns tensors one by one."""

    def __init__(self, checkpoint: str | Path) -> None:
        self.index = tensor_index(checkpoint)
        self._stack = ExitStack()
        self._handles = {}
        for f in {i.file for i in self.index.values()}:
            try:
                self._handles[f] = self._stack.enter_context(safe_open(str(f), framework="pt", device="cpu"))
            except SafetensorError as exc:
                self._stack.close()
                raise CorruptCheckpointError(f"checkpoint file {f} cannot be opened: {exc}") from None

    def get(self, name: str) -> torch.Tensor:
        file = self.index[name].file
        try:
            return self._handles[file].get_tensor(name)
        except SafetensorError as exc:  # e.g. the file changed after its header was checked
            raise CorruptCheckpointError(f"tensor {name!r} of {file} cannot be read: {exc}") from None

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
