"""Evaluation data on disk: BEIR-layout retrieval sets, STS pair CSVs and aligned bitext files.

BEIR layout (the one MTEB and BEIR publish): ``corpus.jsonl`` (``_id``, ``title``, ``text``),
``queries.jsonl`` (``_id``, ``text``) and ``qrels/{split}.tsv`` (``query-id corpus-id score`` with a
header row). Files are read by :mod:`embedforge.corpus`, so a document's text is its
``full_text``: ``(title + " " + text).strip()`` with a title, ``text.strip()`` without — MTEB's
convention, the one that reproduces its published figures.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedforge.corpus import CorpusWarning, document_text, iter_documents, read_documents
from embedforge.fileio import iter_text_lines
from embedforge.store import texts_fingerprint

__all__ = [
    "BitextData",
    "PairData",
    "RetrievalData",
    "document_text",
    "load_beir",
    "load_bitext",
    "load_sts_csv",
    "read_qrels",
    "subset_pairs",
    "texts_fingerprint",
]


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


def _read_queries(path: Path) -> dict[str, str]:
    """Query id -> text of a BEIR ``queries.jsonl`` (``_id`` and string ``text`` on every line)."""
    queries = {}
    for q in iter_documents(path, field="text", id_field="_id", title_field=None):
        queries[q.id] = q.text  # queries are used as written (MTEB does not strip them)
    if not queries:
        raise ValueError(f"{path} holds no queries")
    return queries


def _warn_missing_documents(qrels: dict[str, dict[str, int]], corpus_ids: set[str], where: Path) -> None:
    """Warn (with counts) about judgements of documents the corpus lacks: they can never be retrieved."""
    missing = [(q, d) for q, docs in qrels.items() for d in docs if d not in corpus_ids]
    if not missing:
        return
    queries = {q for q, _ in missing}
    unreachable = [q for q in queries if not any(d in corpus_ids for d in qrels[q])]
    warnings.warn(
        f"{where}: {len(missing)} judgements of {len(queries)} queries point at documents missing "
        f"from the corpus (e.g. query {missing[0][0]!r} -> document {missing[0][1]!r}); "
        f"{len(unreachable)} queries have no relevant document in the corpus at all and score 0",
        CorpusWarning,
        stacklevel=3,
    )


def load_beir(data_dir: str | Path, split: str = "test", *, name: str | None = None) -> RetrievalData:
    """Load a BEIR-layout directory; only the queries judged in ``split`` are kept (as BEIR/MTEB do).

    Validated: every corpus and query row has ``_id`` and a string ``text``; corpus ids are unique;
    the corpus, the queries and the qrels are not empty; qrels name known queries. Judgements of
    documents missing from the corpus are kept (they count, as in BEIR) and reported in a
    :class:`~embedforge.corpus.CorpusWarning` with their counts.
    """
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
    corpus = read_documents(corpus_path, field="text", id_field="_id")
    if not corpus:
        raise ValueError(f"{corpus_path} holds no documents")
    queries = _read_queries(queries_path)
    qrels = read_qrels(qrels_path)
    if not qrels:
        raise ValueError(f"{qrels_path} holds no judgements (query-id corpus-id score rows)")
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise ValueError(
            f"{qrels_path}: {len(missing)} query ids are not in {queries_path}, e.g. {missing[:3]}"
        )
    corpus_ids = [doc.id for doc in corpus]
    _warn_missing_documents(qrels, set(corpus_ids), qrels_path)
    query_ids = [q for q in queries if q in qrels]  # file order
    return RetrievalData(
        name=name or d.name,
        corpus_ids=corpus_ids,
        corpus_texts=[doc.full_text for doc in corpus],
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
    return [line for _, line in iter_text_lines(path)]  # split on \n and \r\n only


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
