"""Evaluation data on disk: BEIR-layout retrieval sets, STS pair CSVs and aligned bitext files.

BEIR layout (the one MTEB and BEIR publish): ``corpus.jsonl`` (``_id``, ``title``, ``text``),
``queries.jsonl`` (``_id``, ``text``) and ``qrels/{split}.tsv`` (``query-id corpus-id score`` with a
header row). A document's text is ``(title + " " + text).strip()`` when it has a title and
``text.strip()`` otherwise — MTEB's convention, the one that reproduces its published figures.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedforge.textio import read_jsonl


def texts_fingerprint(texts: Iterable[str]) -> str:
    """A stable sha256 of a sequence of texts (order matters); used to key embedding caches."""
    h = hashlib.sha256()
    n = 0
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))  # length prefix: ["ab", "c"] != ["a", "bc"]
        h.update(b)
        n += 1
    h.update(n.to_bytes(8, "little"))
    return h.hexdigest()


def document_text(title: str | None, text: str | None) -> str:
    """MTEB's document text: ``(title + " " + text).strip()`` when there is a title, else ``text.strip()``."""
    text = text or ""
    if title:
        return (title + " " + text).strip()
    return text.strip()


@dataclass
class RetrievalData:
    """A retrieval test set: a corpus, the queries judged in one split and their graded qrels."""

    name: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: graded relevance}
    source: str = ""
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    @property
    def corpus_fingerprint(self) -> str:
        """sha256 over the corpus ids and texts: any change to the corpus changes it."""
        if self._fingerprint is None:
            self._fingerprint = texts_fingerprint(
                [*self.corpus_ids, "\x00corpus-texts\x00", *self.corpus_texts]
            )
        return self._fingerprint

    def subset(self, n_queries: int, *, extra_docs: int = 0) -> RetrievalData:
        """The first ``n_queries`` queries, their relevant documents and ``extra_docs`` other documents.

        Meant for small, fast tests on real data; the figures of a subset are not the published ones.
        """
        if n_queries < 1:
            raise ValueError(f"n_queries must be >= 1, got {n_queries}")
        qids = self.query_ids[:n_queries]
        qrels = {q: dict(self.qrels[q]) for q in qids}
        keep = {d for q in qids for d in qrels[q]}
        others = [d for d in self.corpus_ids if d not in keep][:extra_docs]
        keep |= set(others)
        rows = [i for i, d in enumerate(self.corpus_ids) if d in keep]
        return RetrievalData(
            name=self.name,
            corpus_ids=[self.corpus_ids[i] for i in rows],
            corpus_texts=[self.corpus_texts[i] for i in rows],
            query_ids=qids,
            query_texts=self.query_texts[:n_queries],
            qrels=qrels,
            source=self.source,
        )


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV (``query-id corpus-id score``, header row optional)."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row:
                continue
            if n == 1 and row[0] == "query-id":
                continue
            if len(row) != 3:
                raise ValueError(
                    f"{path}:{n}: expected 3 tab-separated columns (query-id corpus-id score), got {row!r}"
                )
            try:
                score = int(row[2])
            except ValueError as e:
                raise ValueError(f"{path}:{n}: relevance score must be an integer, got {row[2]!r}") from e
            qrels.setdefault(row[0], {})[row[1]] = score
    return qrels


def load_beir(data_dir: str | Path, split: str = "test", *, name: str | None = None) -> RetrievalData:
    """Load a BEIR-layout directory; only the queries judged in ``split`` are kept (as BEIR/MTEB do)."""
    d = Path(data_dir)
    corpus_path, queries_path, qrels_path = (
        d / "corpus.jsonl",
        d / "queries.jsonl",
        d / "qrels" / f"{split}.tsv",
    )
    for p in (corpus_path, queries_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found: a BEIR directory holds corpus.jsonl, queries.jsonl, qrels/<split>.tsv"
            )
    if not qrels_path.is_file():
        have = sorted(p.stem for p in (d / "qrels").glob("*.tsv")) if (d / "qrels").is_dir() else []
        raise FileNotFoundError(f"no qrels for split {split!r} at {qrels_path}; splits available: {have}")
    corpus = read_jsonl(corpus_path)
    queries = {str(q["_id"]): q["text"] for q in read_jsonl(queries_path)}
    qrels = read_qrels(qrels_path)
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise ValueError(
            f"{qrels_path}: {len(missing)} query ids are not in {queries_path}, e.g. {missing[:3]}"
        )
    query_ids = [q for q in queries if q in qrels]  # file order
    return RetrievalData(
        name=name or d.name,
        corpus_ids=[str(c["_id"]) for c in corpus],
        corpus_texts=[document_text(c.get("title"), c.get("text")) for c in corpus],
        query_ids=query_ids,
        query_texts=[queries[q] for q in query_ids],
        qrels={q: qrels[q] for q in query_ids},
        source=str(d),
    )


@dataclass
class PairData:
    """Sentence pairs with gold similarity scores (STS)."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]


def load_sts_csv(path: str | Path, *, name: str | None = None) -> PairData:
    """Read ``sentence1,sentence2,score`` rows (no header; a header row with a non-numeric score is skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"STS file {path} not found")
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    with path.open(encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if len(row) != 3:
                raise ValueError(
                    f"{path}:{n}: expected 3 columns (sentence1,sentence2,score), got {len(row)}"
                )
            try:
                score = float(row[2])
            except ValueError as e:
                if n == 1:
                    continue  # header row
                raise ValueError(f"{path}:{n}: score must be a number, got {row[2]!r}") from e
            s1.append(row[0])
            s2.append(row[1])
            scores.append(score)
    if not scores:
        raise ValueError(f"{path} holds no sentence pairs")
    return PairData(name=name or path.stem, sentences1=s1, sentences2=s2, scores=scores)


@dataclass
class BitextData:
    """Two aligned lists: ``source[i]`` translates ``target[i]``."""

    name: str
    source: list[str]
    target: list[str]


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"bitext file {path} not found")
    with path.open(encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def load_bitext(source_path: str | Path, target_path: str | Path, *, name: str | None = None) -> BitextData:
    """Read two line-aligned files (Tatoeba layout: line i of one translates line i of the other)."""
    src, tgt = _read_lines(Path(source_path)), _read_lines(Path(target_path))
    if len(src) != len(tgt):
        raise ValueError(
            f"bitext files are not aligned: {source_path} has {len(src)} lines, {target_path} has {len(tgt)}"
        )
    if not src:
        raise ValueError(f"bitext file {source_path} is empty")
    return BitextData(name=name or Path(source_path).name, source=src, target=tgt)


def subset_pairs(data: PairData, indices: Sequence[int]) -> PairData:
    """The rows ``indices`` of an STS set (for quick tests)."""
    return PairData(
        data.name,
        [data.sentences1[i] for i in indices],
        [data.sentences2[i] for i in indices],
        [data.scores[i] for i in indices],
    )
