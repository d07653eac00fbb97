"""The stages that make training data: ``synthesize``, ``filter`` and ``mine``.

Each is a pair of functions: ``*_inputs(ctx)`` (what its result depends on, hashed by the runner)
and ``run_*(ctx, stage_dir, resume)`` (the work, through the synthesis and training packages'
own functions). They write their JSONL outputs atomically.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

from embedforge.fileio import iter_jsonl, write_jsonl
from embedforge.recipe.config import RecipeError
from embedforge.recipe.context import Context, StageOutput, seeded_subset, versions
from embedforge.recipe.state import digest

RECORDS = "records.jsonl"
KEPT = "kept.jsonl"
LABELED = "labeled.jsonl"
SYNTHETIC = "synthetic.jsonl"


# ---------------------------------------------------------------------------------------- synthesize
def _store_name(ctx: Context) -> str:
    """The synthesis store of the current settings: it survives a change of ``documents`` or
    ``per_doc`` (its records are keyed per document and sample), not a change of what is asked."""
    inputs = synthesize_inputs(ctx)
    inputs["settings"] = {k: v for k, v in inputs["settings"].items() if k not in ("documents", "per_doc")}
    return f"store-{digest(inputs)[:16]}.jsonl"


def synthesize_inputs(ctx: Context) -> dict[str, Any]:
    from embedforge.synthesis.prompts import PROMPT_VERSION
    from embedforge.synthesis.sources import default_personas_path

    s = ctx.recipe.stages.synthesize
    settings = s.model_dump(
        mode="json",
        exclude={"enabled", "llm", "records", "personas", "persona_model", "seed", "max_failed_fraction"},
    )
    inputs: dict[str, Any] = {"settings": settings, "seed": ctx.recipe.seed_of("synthesize")}
    if s.records is not None:
        inputs["records"] = ctx.file_hash(s.records, "synthetic records file", "synthesize")
        return inputs
    assert s.llm is not None  # the recipe requires one of the two
    inputs["corpus"] = ctx.file_hash(ctx.recipe.data.synthesis_corpus, "synthesis corpus", "synthesize")
    inputs["llm"] = s.llm.model_dump(mode="json", exclude=set(s.llm.NOT_HASHED))
    inputs["prompt_version"] = PROMPT_VERSION
    inputs["personas"] = ctx.file_hash(s.personas or default_personas_path(), "persona library", "synthesize")
    if s.persona_model is not None:
        from embedforge.loading import fingerprint, resolve_checkpoint

        pm = s.persona_model
        inputs["persona_model"] = {
            "spec": pm.to_dict(),
            "fingerprint": fingerprint(resolve_checkpoint(pm.model, revision=pm.revision)),
        }
    else:
        inputs["persona_model"] = ctx.base_identity()
    return inputs


def synthesize_keep(ctx: Context) -> list[str]:
    """Files kept when the stage's inputs change: the LLM's work for the same questions."""
    s = ctx.recipe.stages.synthesize
    if s.records is not None:
        return []
    from embedforge.synthesis.store import failed_path

    store = ctx.dir("synthesize") / _store_name(ctx)
    return [store.name, failed_path(store).name]


def _select(ids: list[str], n: int | None, seed: int) -> set[str]:
    if n is None or n >= len(ids):
        return set(ids)
    return set(random.Random(seed).sample(ids, n))


def _from_records(ctx: Context, out: Path) -> StageOutput:
    s = ctx.recipe.stages.synthesize
    assert s.records is not None
    rows = list(iter_jsonl(s.records))
    for n, r in enumerate(rows, 1):
        prov = r.get("provenance")
        if (
            not isinstance(r.get("query"), str)
            or not isinstance(r.get("positive"), str)
            or not isinstance(prov, dict)
        ):
            raise RecipeError(
                f"{s.records}: record {n} needs string query and positive and a provenance mapping"
            )
    doc_ids = sorted({str(r["provenance"].get("doc_id")) for r in rows})
    chosen = _select(doc_ids, s.documents, ctx.recipe.seed_of("synthesize"))
    kept = [
        r
        for r in rows
        if str(r["provenance"].get("doc_id")) in chosen and int(r["provenance"].get("sample", 0)) < s.per_doc
    ]
    if not kept:
        raise RecipeError(f"{s.records} holds no record of the selected documents")
    write_jsonl(out, kept)
    return StageOutput([out], {"source": str(s.records), "pairs": len(kept), "documents": len(chosen)})


def run_synthesize(ctx: Context, stage_dir: Path, resume: bool) -> StageOutput:
    from embedforge.synthesis.config import (
        DIFFICULTY_NAMES,
        QUESTION_TYPE_NAMES,
        Choice,
        LengthRange,
        SynthesisConfig,
        language_name,
    )
    from embedforge.synthesis.pipeline import PersonaIndex, synthesize, work_keys
    from embedforge.synthesis.sources import load_corpus, load_personas
    from embedforge.synthesis.store import RecordKey, SynthesisStore

    from .llm import build_backend

    s = ctx.recipe.stages.synthesize
    out = stage_dir / RECORDS
    if s.records is not None:
        return _from_records(ctx, out)
    assert s.llm is not None and ctx.recipe.data.synthesis_corpus is not None
    seed = ctx.recipe.seed_of("synthesize")
    cfg = SynthesisConfig(
        languages=Choice.parse(s.languages, normalise=language_name),
        corpus_language=s.corpus_language,
        lengths=LengthRange.parse(s.lengths),
        question_types=Choice.parse(s.question_types, allowed=QUESTION_TYPE_NAMES)
        if s.question_types
        else None,
        difficulties=Choice.parse(s.difficulties, allowed=DIFFICULTY_NAMES) if s.difficulties else None,
        per_doc=s.per_doc,
        seed=seed,
        temperature=s.temperature,
        max_tokens=s.max_tokens,
        max_invalid=s.max_invalid,
        top_personas=s.top_personas,
        max_passage_chars=s.max_passage_chars,
    )
    docs = load_corpus(ctx.recipe.data.synthesis_corpus)
    chosen = _select([d.id for d in docs], s.documents, seed)
    docs = [d for d in docs if d.id in chosen]
    persona_embedder = (
        s.persona_model.load_embedder() if s.persona_model is not None else ctx.embedder("base")
    )
    personas = PersonaIndex(
        persona_embedder, load_personas(s.personas), cache=ctx.store, show_progress=ctx.show_progress
    )
    store_path = stage_dir / _store_name(ctx)
    report = synthesize(
        "retrieval",
        docs,
        build_backend(s.llm, seed=seed),
        store_path,
        cfg,
        personas=personas,
        show_progress=ctx.show_progress,
    )
    keys = [k for _, k in work_keys(docs, "retrieval", s.per_doc)]
    with SynthesisStore(store_path) as store:
        missing = [k for k in keys if k not in store.done_keys]
        reasons = store.previously_failed()
    if len(missing) > s.max_failed_fraction * len(keys):
        first = missing[0]
        why = reasons.get(first, "no record was written")
        raise RecipeError(
            f"{len(missing)} of {len(keys)} pairs failed (more than max_failed_fraction "
            f"{s.max_failed_fraction:g}); first, document {first.doc_id!r}: {why}; every failure is in "
            f"{report.failed_out}; rerun with --resume to ask for the failed ones again"
        )
    wanted = set(keys)
    rows = [r for r in iter_jsonl(store_path) if RecordKey.from_provenance(r["provenance"]) in wanted]
    rows.sort(key=lambda r: RecordKey.from_provenance(r["provenance"]))  # a stable order: a stable hash
    write_jsonl(out, rows)
    summary = {k: v for k, v in asdict(report).items() if k not in ("out", "failed_out")}
    return StageOutput(
        [out], {**summary, "pairs": len(rows), "missing": len(missing), "store": store_path.name}
    )


def synthesize_resumable(stage_dir: Path) -> bool:
    return any(p.stat().st_size > 0 for p in stage_dir.glob("store-*.jsonl"))


# ---------------------------------------------------------------------------------------- filter
def filter_inputs(ctx: Context) -> dict[str, Any]:
    s = ctx.recipe.stages.filter
    return {
        "pairs": ctx.upstream("synthesize").outputs_hash,
        "model": ctx.model_identity("base"),
        "settings": s.model_dump(mode="json", exclude={"enabled"}),
        "use_instructions": ctx.use_instructions,
        "versions": versions(),
    }


def run_filter(ctx: Context, stage_dir: Path, resume: bool) -> StageOutput:
    from embedforge.synthesis.selection import filter_records

    s = ctx.recipe.stages.filter
    records = list(iter_jsonl(ctx.dir("synthesize") / RECORDS))
    kept, report = filter_records(
        ctx.embedder("base"),
        records,
        min_cos=s.min_cos,
        near_dup=s.near_dup,
        use_instructions=ctx.use_instructions,
        show_progress=ctx.show_progress,
    )
    out = stage_dir / KEPT
    write_jsonl(out, kept)
    return StageOutput([out], asdict(report))


# ---------------------------------------------------------------------------------------- mine
def _mines_synthetic(ctx: Context) -> bool:
    sup = ctx.recipe.stages.supervised
    return ctx.on("supervised") and sup.synthetic and ctx.synthetic_pairs() is not None


def mine_inputs(ctx: Context) -> dict[str, Any]:
    d = ctx.recipe.data
    inputs: dict[str, Any] = {
        "model": ctx.model_identity(ctx.start_model()),
        "labeled": ctx.beir_hash(d.labeled, d.labeled_split, "labelled data", "mine"),
        "split": d.labeled_split,
        "instruction": ctx.labeled_instruction(),
        "settings": ctx.recipe.stages.mine.model_dump(mode="json", exclude={"enabled"}),
        "seed": ctx.recipe.seed_of("mine"),
        "versions": versions(),
    }
    pairs = ctx.synthetic_pairs()
    if _mines_synthetic(ctx) and pairs is not None:
        inputs["synthetic"] = ctx.upstream(pairs[0]).outputs_hash
        inputs["use_instructions"] = ctx.use_instructions
        if d.synthesis_corpus is not None:
            inputs["synthesis_corpus"] = ctx.file_hash(d.synthesis_corpus, "synthesis corpus", "mine")
    return inputs


def training_pairs(ctx: Context) -> list[dict]:
    """The synthetic pairs the training stages read (instructions dropped for models that take none)."""
    pairs = ctx.synthetic_pairs()
    if pairs is None:
        return []
    rows = list(iter_jsonl(pairs[1]))
    if not ctx.use_instructions:
        rows = [{**r, "instruction": None} for r in rows]
    return rows


def labeled_records(ctx: Context) -> tuple[list[dict], list[str]]:
    """The labelled split as training records (no negatives) and its corpus texts."""
    from embedforge.training.data import beir_train_records

    d = ctx.recipe.data
    assert d.labeled is not None
    records, corpus = beir_train_records(d.labeled, d.labeled_split, instruction=ctx.labeled_instruction())
    return [r.model_dump() for r in records], corpus


def _mine(ctx: Context, records: list[dict], corpus: list[str], what: str) -> list[dict]:
    """Hard negatives for ``records`` from ``corpus`` (cut to ``max_docs``), the corpus encoded through
    the store (shared with evaluation when it is the same corpus)."""
    from embedforge.evaluation.encoding import encode_side, side_prompt
    from embedforge.training.mining import mine_hard_negatives

    s = ctx.recipe.stages.mine
    positives = {r["positive"] for r in records}
    rows = seeded_subset(
        len(corpus),
        [i for i, t in enumerate(corpus) if t in positives],
        s.max_docs,
        ctx.recipe.seed_of("mine"),
    )
    pool = [corpus[i] for i in rows]
    model = ctx.embedder(ctx.start_model())
    encoded = encode_side(
        model,
        pool,
        side_prompt(model, None, query_side=False),
        cache=ctx.store,
        desc=f"encode {what} corpus",
        show_progress=ctx.show_progress,
    )
    return mine_hard_negatives(
        model,
        records,
        pool,
        k=s.k,
        skip_top=s.skip_top,
        show_progress=ctx.show_progress,
        doc_embeddings=encoded.embeddings,
    )


def run_mine(ctx: Context, stage_dir: Path, resume: bool) -> StageOutput:
    k = ctx.recipe.stages.mine.k
    records, corpus = labeled_records(ctx)
    mined = _mine(ctx, records, corpus, "labelled")
    files = [stage_dir / LABELED]
    write_jsonl(files[0], mined)
    summary: dict[str, Any] = {
        "model": ctx.start_model(),
        "labeled": len(mined),
        "labeled_short": sum(len(r["negatives"]) < k for r in mined),
    }
    if _mines_synthetic(ctx):
        from embedforge.synthesis.sources import load_corpus

        pairs = training_pairs(ctx)
        d = ctx.recipe.data
        pool = [doc.text for doc in load_corpus(d.synthesis_corpus)] if d.synthesis_corpus is not None else []
        pool = pool or list(dict.fromkeys(r["positive"] for r in pairs))
        syn = _mine(ctx, pairs, pool, "synthesis") if pairs else []
        files.append(stage_dir / SYNTHETIC)
        write_jsonl(files[1], syn)
        summary.update(synthetic=len(syn), synthetic_short=sum(len(r["negatives"]) < k for r in syn))
    if ctx.start_model() != "base":
        ctx.forget(ctx.start_model())  # evaluation loads it again; one trained model in memory at a time
    return StageOutput(files, summary)


__all__ = [
    "filter_inputs",
    "labeled_records",
    "mine_inputs",
    "run_filter",
    "run_mine",
    "run_synthesize",
    "synthesize_inputs",
    "synthesize_keep",
    "synthesize_resumable",
    "training_pairs",
]
