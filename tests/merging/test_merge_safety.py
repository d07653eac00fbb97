"""A merge never destroys its input: refused outputs, damaged inputs, failures midway, atomic output.

Every test works in its own directory holding copies of the parents, and compares a snapshot of
that whole tree (every path, every file's bytes) before and after a refused or failed merge.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from embedforge.cli import main as cli_main
from embedforge.merging import CorruptCheckpointError, MergeError, merge_checkpoints, slerp
from embedforge.merging import merge as merge_module
from embedforge.merging.safetensors_io import StreamingWriter, read_header


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (symlinks not followed) with its kind and, for files, a hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            key = str(p.relative_to(root))
            if p.is_symlink():
                out[key] = "link -> " + os.readlink(p)
            elif p.is_dir():
                out[key] = "dir"
            else:
                out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def work(two_parents, tmp_path):
    """A directory holding copies of the two parents as ``a`` and ``b``."""
    for src, name in zip(two_parents, "ab", strict=True):
        shutil.copytree(src, tmp_path / name)
    return tmp_path


# -- outputs that are, lie inside or contain an input --------------------------------------------


@pytest.mark.parametrize(
    "out, relation",
    [
        ("a", "is"),
        ("b", "is"),
        ("a/merged", "lies inside"),
        ("b/1_Pooling/deeper/merged", "lies inside"),
        ("link_to_a", "is"),
        ("link_to_a/merged", "lies inside"),
        (".", "contains"),
    ],
)
def test_output_that_is_inside_or_holds_an_input_is_refused(work, out, relation):
    (work / "link_to_a").symlink_to(work / "a", target_is_directory=True)
    before = snapshot(work)
    out_path = work / out
    with pytest.raises(MergeError, match=relation) as info:
        merge_checkpoints([work / "a", work / "b"], out_path)
    message = str(info.value)
    assert str(out_path) in message and "input checkpoint" in message
    assert str(work / "a") in message or str(work / "b") in message  # names the input it collides with
    if "link_to_a" in out:
        assert f"resolved: {work / 'a'}" in message  # the symlink is shown with its target
    assert snapshot(work) == before


def test_output_equal_to_a_lora_adapters_base_model_is_refused(work):
    """The base model of a LoRA adapter is an input too (read before the merge writes)."""
    adapter = work / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(work / "a")}))
    before = snapshot(work)
    with pytest.raises(MergeError, match=r"is the input checkpoint .*/a"):
        merge_checkpoints([adapter, work / "b"], work / "a")
    assert snapshot(work) == before


def test_cli_refuses_output_equal_to_input_with_a_clear_error(work, capsys):
    before = snapshot(work)
    code = cli_main(["merge", str(work / "a"), str(work / "b"), "--out", str(work / "a")])
    err = capsys.readouterr().err
    assert code == 2
    assert "merge: error: the output" in err and "Traceback" not in err
    assert err.count(str(work / "a")) == 2  # the output and the input it is
    assert snapshot(work) == before


# -- what may already be at the output path -------------------------------------------------------


def test_unrelated_nonempty_output_is_refused_and_kept(work):
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_text("not a checkpoint")
    (work / "file").write_text("a file")
    before = snapshot(work)
    with pytest.raises(MergeError, match="not empty and holds no earlier merge output"):
        merge_checkpoints([work / "a", work / "b"], work / "mine")
    with pytest.raises(MergeError, match="exists and is not a directory"):
        merge_checkpoints([work / "a", work / "b"], work / "file")
    assert snapshot(work) == before


def test_empty_output_directory_and_earlier_merge_output_are_replaced(work):
    (work / "fresh").mkdir()
    merge_checkpoints([work / "a", work / "b"], work / "fresh", t=[0.3])
    expected = snapshot(work / "fresh")
    (work / "again").mkdir()
    merge_checkpoints([work / "a", work / "b"], work / "again", t=[0.7])  # an earlier merge output ...
    (work / "again" / "stale.txt").write_text("left by someone")
    merge_checkpoints([work / "a", work / "b"], work / "again", t=[0.3])  # ... is replaced as a whole
    assert snapshot(work / "again") == expected
    assert sorted(p.name for p in work.iterdir()) == ["a", "again", "b", "fresh"]  # no temporaries


# -- damaged inputs -------------------------------------------------------------------------------


def _header_size(path: Path) -> int:
    with path.open("rb") as fh:
        return struct.unpack("<Q", fh.read(8))[0]


def _truncate_in_data(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: (8 + _header_size(f) + f.stat().st_size) // 2])


def _truncate_in_header(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: 8 + _header_size(f) // 2])


def _truncate_in_length(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:5])


def _empty(f: Path) -> None:
    f.write_bytes(b"")


def _garble_header(f: Path) -> None:
    raw = bytearray(f.read_bytes())
    raw[8:12] = b"\xff\xfe{["
    f.write_bytes(bytes(raw))


def _append_bytes(f: Path) -> None:
    f.write_bytes(f.read_bytes() + b"\0" * 16)


def _shift_offsets(f: Path) -> None:
    """Keep the data, but move the first tensor's offsets 4 bytes on (overlapping the next one)."""
    raw = f.read_bytes()
    n = _header_size(f)
    header = json.loads(raw[8 : 8 + n])
    first = min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    start, end = header[first]["data_offsets"]
    header[first]["data_offsets"] = [start + 4, end + 4]
    new = json.dumps(header, separators=(",", ":")).encode()
    new += b" " * (-len(new) % 8)
    f.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


@pytest.mark.parametrize(
    "damage, what, position",
    [
        (_truncate_in_data, "the header describes .* bytes of tensor data, the file holds", 0),
        (_truncate_in_data, "the header describes .* bytes of tensor data, the file holds", 1),
        (_truncate_in_header, "the header claims .* bytes", 1),
        (_truncate_in_length, "5 bytes, fewer than the 8-byte header length", 0),
        (_empty, "0 bytes", 1),
        (_garble_header, "not valid JSON", 1),
        (_append_bytes, "the file holds", 0),
        (_shift_offsets, "starts at byte 4 of the data, expected 0", 1),
    ],
)
def test_damaged_safetensors_input_fails_naming_the_file_before_writing(work, damage, what, position):
    damaged = work / "ab"[position] / "model.safetensors"
    damage(damaged)
    before = snapshot(work)
    with pytest.raises(CorruptCheckpointError, match=what) as info:
        merge_checkpoints([work / "a", work / "b"], work / "out" / "m")
    assert f"checkpoint file {damaged} is truncated or corrupt" in str(info.value)
    assert snapshot(work) == before  # no output, no output parent, no temporary directory


def test_cli_reports_a_truncated_input_without_a_traceback(work, capsys):
    _truncate_in_data(work / "b" / "model.safetensors")
    code = cli_main(["merge", str(work / "a"), str(work / "b"), "--out", str(work / "m")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"checkpoint file {work / 'b' / 'model.safetensors'} is truncated or corrupt" in err
    assert not (work / "m").exists()


def test_damaged_sharded_index_is_reported(work):
    state = load_file(work / "b" / "model.safetensors")
    names = sorted(state)
    half = len(names) // 2
    (work / "b" / "model.safetensors").unlink()
    shards = {"s1.safetensors": names[:half], "s2.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, work / "b" / shard, metadata={"format": "pt"})
    index = work / "b" / "model.safetensors.index.json"
    weight_map = {k: s for s, keys in shards.items() for k in keys}
    index.write_text(json.dumps({"weight_map": weight_map}))
    merge_checkpoints([work / "a", work / "b"], work / "ok", t=[0.3])  # a sound sharded input merges
    sa, sm = load_file(work / "a" / "model.safetensors"), load_file(work / "ok" / "model.safetensors")
    for k in sa:
        torch.testing.assert_close(sm[k], slerp(sa[k], state[k], 0.3))

    index.write_text(json.dumps({"weight_map": {**weight_map, names[0]: "s2.safetensors"}}))
    with pytest.raises(CorruptCheckpointError, match=f"{index} places tensors where their shards lack"):
        merge_checkpoints([work / "a", work / "b"], work / "m")
    index.write_text(json.dumps({"weight_map": {**weight_map, names[0]: "s3.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="lists shards that do not exist.*s3.safetensors"):
        merge_checkpoints([work / "a", work / "b"], work / "m")
    index.write_text('{"weight_map": ')
    with pytest.raises(CorruptCheckpointError, match=f"{index} is not a valid safetensors index"):
        merge_checkpoints([work / "a", work / "b"], work / "m")
    assert not (work / "m").exists()


def test_header_check_accepts_what_safetensors_writes(tmp_path):
    """The checks reject nothing the safetensors library itself writes (dtypes, empty and 0-d tensors)."""
    tensors = {
        "f64": torch.randn(3, dtype=torch.float64),
        "bf16": torch.randn(2, 5).to(torch.bfloat16),
        "f16": torch.randn(7).to(torch.float16),
        "i8": torch.arange(3, dtype=torch.int8),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(1.5),
    }
    save_file(tensors, tmp_path / "x.safetensors", metadata={"k": "v"})
    header = read_header(tmp_path / "x.safetensors")
    assert header["__metadata__"] == {"k": "v"} and set(header) - {"__metadata__"} == set(tensors)


# -- failures midway ------------------------------------------------------------------------------


class Boom(RuntimeError):
    pass


def _fail_on_call(monkeypatch, n: int, exc: BaseException) -> None:
    """Make the n-th merged tensor raise ``exc`` (the merge has written n-1 tensors by then)."""
    real, calls = merge_module.merge_tensors, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(merge_module, "merge_tensors", failing)


@pytest.mark.parametrize("exc", [Boom("midway"), KeyboardInterrupt()])
def test_failure_midway_leaves_nothing(work, monkeypatch, exc):
    before = snapshot(work)
    _fail_on_call(monkeypatch, 3, exc)
    with pytest.raises(type(exc)):
        merge_checkpoints([work / "a", work / "b"], work / "new" / "deeper" / "m")
    assert snapshot(work) == before  # no output, no created parent, no temporary directory


def test_failure_midway_keeps_an_earlier_merge_output(work, monkeypatch):
    merge_checkpoints([work / "a", work / "b"], work / "m", t=[0.3])
    before = snapshot(work)
    _fail_on_call(monkeypatch, 3, Boom("midway"))
    with pytest.raises(Boom):
        merge_checkpoints([work / "a", work / "b"], work / "m", t=[0.6])
    assert snapshot(work) == before


def test_disk_error_while_writing_is_reported_and_cleaned_up(work, monkeypatch, capsys):
    real_write, calls = StreamingWriter.write, []

    def write(self, name, tensor):
        calls.append(name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, name, tensor)

    monkeypatch.setattr(StreamingWriter, "write", write)
    before = snapshot(work)
    out = work / "m"
    with pytest.raises(MergeError, match=f"writing the merge into {out} failed.*No space left"):
        merge_checkpoints([work / "a", work / "b"], out)
    calls.clear()
    assert cli_main(["merge", str(work / "a"), str(work / "b"), "--out", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert snapshot(work) == before


# -- success: the output is exactly what it was before these checks --------------------------------


def _safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors file the merge writes, from the format's definition: 8-byte little-endian
    header length, compact JSON header (metadata first, tensors by name, space-padded to a multiple
    of 8), then the tensors' little-endian bytes in the same order."""
    header: dict[str, object] = {"__metadata__": metadata}
    data, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        assert t.dtype == torch.float32
        raw = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        data.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(data)


def test_success_output_is_bit_for_bit_the_merge(work):
    a, b = work / "a", work / "b"
    shutil.copytree(a, work / "first")
    (work / "first" / "checkpoints").mkdir()  # training checkpoints are not copied
    (work / "first" / "checkpoints" / "x.txt").write_text("skip me")
    result = merge_checkpoints([work / "first", b], work / "out" / "m", t=[0.3])
    out = work / "out" / "m"
    assert result.output_dir == out
    sa, sb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    merged = {k: slerp(sa[k], sb[k], 0.3) for k in sa}
    meta = {
        "format": "pt",
        "embedforge_merge": json.dumps({"method": "slerp", "parents": [str(work / "first"), str(b)]}),
    }
    assert (out / "model.safetensors").read_bytes() == _safetensors_bytes(merged, meta)
    side = {k: v for k, v in snapshot(a).items() if k != "model.safetensors"}
    assert {k: v for k, v in snapshot(out).items() if k != "model.safetensors"} == side
    assert sorted(p.name for p in (work / "out").iterdir()) == ["m"]  # no temporaries next to it
    assert os.stat(out).st_mode & 0o777 == os.stat(work / "out").st_mode & 0o777  # not mkdtemp's 0700
