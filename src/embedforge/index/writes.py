"""What a write reports, and the duplicate-id rule: the last record of an id wins, with a warning."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ._seams import Doc


class DuplicateIdWarning(UserWarning):
    """A corpus held the same id more than once; the last record was kept."""


@dataclass
class WriteReport:
    """What a build or an add did."""

    index: str
    documents: int  # distinct documents in the corpus
    embedded: int  # new or changed documents embedded now
    unchanged: int  # already in the index with the same content (skipped)
    replaced: int  # ids that were in the index with other content
    removed: int  # build only: rows of an interrupted build whose id left the corpus
    duplicates: int
    rows: int  # rows in the index afterwards
    seconds: float
    docs_per_second: float
    embed_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dedupe(docs: Iterable[Doc], where: str) -> tuple[list[Doc], int]:
    """Keep the last record of each id, at its position; warn naming the duplicated ids."""
    seen: dict[str, Doc] = {}
    dups: dict[str, int] = {}
    for d in docs:
        if d.id in seen:
            dups[d.id] = dups.get(d.id, 1) + 1
            del seen[d.id]
        seen[d.id] = d
    if dups:
        names = ", ".join(repr(i) for i in list(dups)[:10]) + (" ..." if len(dups) > 10 else "")
        warnings.warn(
            f"{where}: {len(dups)} ids occur more than once ({names}); the last record of each is kept",
            DuplicateIdWarning,
            stacklevel=3,
        )
    out = list(seen.values())
    if not out:
        raise ValueError(f"{where} holds no documents")
    return out, sum(dups.values()) - len(dups)


def corpus_name(corpus: Any) -> str:
    return str(corpus) if isinstance(corpus, str | Path) else "corpus"
