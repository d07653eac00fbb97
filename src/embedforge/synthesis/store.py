"""The resumable, append-only JSONL store of a synthesis run.

Two files: ``OUT.jsonl`` holds the finished records (trainer-ready, one JSON object a line) and
``OUT.failed.jsonl`` the failures with their reason. A record's key is (document id, task, sample
index, prompt version), read from its ``provenance``. A rerun skips the keys of ``OUT.jsonl`` and
retries everything else, failures included.

Each batch of lines goes to the file in one ``write`` on an ``O_APPEND`` descriptor, flushed to the
OS at once (and fsync'ed when asked), so a SIGKILL loses at most the requests still in flight. Should
a crash of the machine itself leave a line without its newline, opening the store cuts that tail
off (reported in ``repaired_bytes``): a store never holds a corrupt line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from embedforge.fileio import iter_jsonl, iter_jsonl_lines, write_jsonl

__all__ = [
    "RecordKey",
    "SynthesisStore",
    "failed_path",
    "iter_jsonl",
    "iter_jsonl_lines",
    "repair_tail",
    "write_jsonl",
]


@dataclass(frozen=True, order=True)
class RecordKey:
    doc_id: str
    task: str
    sample: int
    prompt_version: str

    @classmethod
    def from_provenance(cls, prov: dict) -> RecordKey:
        return cls(str(prov["doc_id"]), str(prov["task"]), int(prov["sample"]), str(prov["prompt_version"]))

    def as_dict(self) -> dict:
        return {
            "doc_id": self.doc_id,
            "task": self.task,
            "sample": self.sample,
            "prompt_version": self.prompt_version,
        }


def failed_path(path: str | Path) -> Path:
    """``OUT.jsonl`` -> ``OUT.failed.jsonl``."""
    p = Path(path)
    stem = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return p.with_name(stem + ".failed.jsonl")


def repair_tail(path: Path) -> int:
    """Cut a last line that lacks its newline (a torn write); returns the number of bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # walk back to the last newline
        pos, block = size, 65536
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


class _AppendFile:
    def __init__(self, path: Path, fsync: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = repair_tail(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fsync = fsync

    def append(self, rows: Sequence[dict]) -> None:
        if not rows:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        view = memoryview(data)
        while view:  # a regular file takes it in one write; loop only for the pathological short write
            n = os.write(self._fd, view)
            view = view[n:]
        if self._fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SynthesisStore:
    """Finished records in ``path``, failures in :func:`failed_path` of it."""

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.failed_path = failed_path(self.path)
        self._done = _AppendFile(self.path, fsync)
        self._failed = _AppendFile(self.failed_path, fsync)
        self.repaired_bytes = self._done.repaired_bytes + self._failed.repaired_bytes
        self.done_keys: set[RecordKey] = {
            RecordKey.from_provenance(r["provenance"]) for r in iter_jsonl(self.path)
        }

    def previously_failed(self) -> dict[RecordKey, str]:
        """Keys that failed in an earlier run and are not done since, with the last reason."""
        out: dict[RecordKey, str] = {}
        for r in iter_jsonl(self.failed_path):
            key = RecordKey(**r["key"])
            if key not in self.done_keys:
                out[key] = r["error"]
        return out

    def add_records(self, records: Sequence[dict]) -> None:
        self._done.append(records)
        self.done_keys.update(RecordKey.from_provenance(r["provenance"]) for r in records)

    def add_failure(self, key: RecordKey, error: str, *, model: str) -> None:
        self._failed.append([{"key": key.as_dict(), "error": error, "model": model}])

    def close(self) -> None:
        self._done.close()
        self._failed.close()

    def __enter__(self) -> SynthesisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
