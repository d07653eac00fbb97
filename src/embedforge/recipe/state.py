"""What a stage directory remembers: ``stage.json`` with the hash of the stage's inputs, its state
and the checksums of its outputs.

A stage's inputs are a JSON-ready mapping: its settings, the output hashes of the stages it reads,
the checksums of the files it reads from outside the run, and the versions of the code that
decides its result. Its ``inputs_hash`` is the sha256 of that mapping in canonical JSON. Once the
stage completes, every output file's size and sha256 is recorded and the ``outputs_hash`` (over
those) is what the next stages take as their input: a stage that reruns and writes the same bytes
does not make its downstream stages rerun.

States: ``running`` (written before any work; a killed run leaves it), ``failed`` (with the
error), ``complete``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from embedforge.fileio import write_json_atomic
from embedforge.store import sha256_file

STATE_FILE = "stage.json"
State = Literal["running", "failed", "complete"]


def digest(obj: Any) -> str:
    """sha256 of ``obj`` in canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class FileHashes:
    """sha256 of input files, computed once per run (a corpus is read by several stages)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, int, int], str] = {}

    def __call__(self, path: Path) -> str:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in self._seen:
            self._seen[key] = sha256_file(path)
        return self._seen[key]


def output_records(root: Path, files: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """{path relative to ``root``: {bytes, sha256}} of every output file."""
    out = {}
    for f in sorted(set(files)):
        out[f.relative_to(root).as_posix()] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    return out


@dataclass
class StageRecord:
    """The content of ``stage.json``."""

    stage: str
    inputs_hash: str
    state: State
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs_hash: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    started_at: float = 0.0
    finished_at: float | None = None
    seconds: float | None = None  # wall time of the run that completed it (a resumed run: its last part)
    cpu_seconds: float | None = None  # CPU time of this process meanwhile (all threads)
    runs: int = 1  # how many times the stage was started on these inputs (resumes count)

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    def write(self, stage_dir: Path) -> None:
        write_json_atomic(stage_dir / STATE_FILE, asdict(self))

    @classmethod
    def read(cls, stage_dir: Path) -> StageRecord | None:
        path = stage_dir / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (FileNotFoundError, ValueError, TypeError):
            return None  # absent or unreadable: the stage has not run

    def outputs_intact(self, stage_dir: Path) -> bool:
        """Every recorded output is still there with its size (a cheap check; hashes are not redone)."""
        for rel, rec in self.outputs.items():
            p = stage_dir / rel
            if not p.is_file() or p.stat().st_size != rec.get("bytes"):
                return False
        return True

    def finish(
        self, stage_dir: Path, files: Iterable[Path], summary: dict[str, Any], cpu_seconds: float
    ) -> None:
        self.outputs = output_records(stage_dir, files)
        self.outputs_hash = digest(self.outputs)
        self.summary = summary
        self.state = "complete"
        self.error = None
        self.finished_at = time.time()
        self.seconds = round(self.finished_at - self.started_at, 3)
        self.cpu_seconds = round(cpu_seconds, 3)
        self.write(stage_dir)


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two inputs mappings (to say why a stage reruns)."""
    out: list[str] = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{k}.")
        else:
            out.append(prefix + k)
    return out


__all__ = ["STATE_FILE", "FileHashes", "StageRecord", "changed_keys", "digest", "output_records"]
