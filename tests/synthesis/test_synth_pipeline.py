"""The synthesis pipeline end to end against the fake endpoint, with the tiny embedder."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from synth_fake_llm import FakeLLM, Reply, Status, kind_of, passage_of, prompt_of, smart_reply
from synth_testdata import DOCS, PERSONAS

from embedforge.synthesis import prompts as P
from embedforge.synthesis.config import Choice, LengthRange, SynthesisConfig
from embedforge.synthesis.llm import LLMFatalError, OpenAIBackend, RetryPolicy
from embedforge.synthesis.pipeline import PersonaIndex, synthesize
from embedforge.synthesis.sources import Document, load_corpus, load_personas
from embedforge.synthesis.store import iter_jsonl
from embedforge.training.data import EmbeddingRecord

FAST = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02)
CORPUS = [Document(i, t) for i, t in DOCS]


@pytest.fixture(scope="module")
def persona_index(tiny_embedder):
    return PersonaIndex(tiny_embedder, PERSONAS)


def backend(llm: FakeLLM, concurrency: int = 4) -> OpenAIBackend:
    return OpenAIBackend(llm.url, "fake-llm", concurrency=concurrency, retry=FAST, timeout=5)


def test_retrieval_records_are_trainer_ready_with_full_provenance(tmp_path, tiny_embedder, persona_index):
    cfg = SynthesisConfig(
        languages=Choice(("English", "German"), (1, 1)), lengths=LengthRange(3, 6), per_doc=2, seed=7
    )
    out = tmp_path / "out.jsonl"
    with FakeLLM() as llm:
        report = synthesize(
            "retrieval", CORPUS, backend(llm), out, cfg, personas=persona_index, show_progress=False
        )
    assert (report.done, report.failed, report.skipped, report.total) == (12, 0, 0, 12)
    assert llm.calls == 24 and report.requests == 24
    records = list(iter_jsonl(out))
    assert sorted((r["provenance"]["doc_id"], r["provenance"]["sample"]) for r in records) == sorted(
        (i, s) for i, _ in DOCS for s in range(2)
    )

    # the five closest personas, computed here independently of PersonaIndex
    texts = dict(DOCS)
    q = tiny_embedder.encode_queries([t for _, t in DOCS], instruction=P.PERSONA_INSTRUCTION)
    d = tiny_embedder.encode_documents(PERSONAS)
    closest = {
        i: [PERSONAS[j] for j in np.argsort(-(q[n] @ d.T), kind="stable")[:5]]
        for n, (i, _) in enumerate(DOCS)
    }
    config_prompts = [prompt_of(b) for b in llm.bodies if kind_of(prompt_of(b)) == "configuration"]
    query_prompts = [prompt_of(b) for b in llm.bodies if kind_of(prompt_of(b)) == "query"]
    for r in records:
        EmbeddingRecord.model_validate(r)
        prov = r["provenance"]
        doc = texts[prov["doc_id"]]
        assert r["instruction"] == P.RETRIEVAL_INSTRUCTION and r["positive"] == doc and r["negatives"] == []
        assert prov["candidates"] == closest[prov["doc_id"]]
        assert (
            prov["persona"] == prov["candidates"][0] and prov["persona_in_candidates"] is True
        )  # the fake picks the first
        assert (prov["question_type"], prov["difficulty"]) == ("summary", "university")  # stage 1's choice
        assert prov["language"] in ("English", "German") and 3 <= prov["length"] <= 6
        assert (prov["task"], prov["prompt_version"], prov["model"], prov["seed"]) == (
            "retrieval",
            "v1",
            "fake-llm",
            7,
        )
        assert r["query"] == " ".join(re.findall(r"\w+", doc)[: prov["length"]])
        assert P.render_configuration(doc, prov["candidates"], "English") in config_prompts
        assert (
            P.render_query(
                doc,
                prov["persona"],
                type="summary",
                difficulty="university",
                length=prov["length"],
                language=prov["language"],
                corpus_language="English",
            )
            in query_prompts
        )
    assert len({(r["provenance"]["language"], r["provenance"]["length"]) for r in records}) > 1


def test_requirements_are_seeded_per_key_not_per_order(tmp_path, persona_index):
    def draws(seed, concurrency, docs):
        out = tmp_path / f"s{seed}-c{concurrency}-{len(docs)}.jsonl"
        cfg = SynthesisConfig(
            languages=Choice(("English", "French", "Thai"), (1, 1, 1)), lengths=LengthRange(2, 30), seed=seed
        )
        with FakeLLM() as llm:
            synthesize(
                "retrieval",
                docs,
                backend(llm, concurrency),
                out,
                cfg,
                personas=persona_index,
                show_progress=False,
            )
        return {
            r["provenance"]["doc_id"]: (r["provenance"]["language"], r["provenance"]["length"])
            for r in iter_jsonl(out)
        }

    a = draws(1, 4, CORPUS)
    assert draws(1, 1, CORPUS[::-1]) == a  # other order, other concurrency: same draws
    assert draws(1, 1, CORPUS[2:4]) == {k: a[k] for k in ("d2", "d3")}
    assert draws(2, 4, CORPUS) != a


def test_configured_distributions_override_stage_one(tmp_path, persona_index):
    cfg = SynthesisConfig(question_types=Choice(("keywords",), (1,)), difficulties=Choice(("phd",), (1,)))
    with FakeLLM() as llm:
        synthesize(
            "retrieval",
            CORPUS[:2],
            backend(llm),
            tmp_path / "o.jsonl",
            cfg,
            personas=persona_index,
            show_progress=False,
        )
    query_prompts = [prompt_of(b) for b in llm.bodies if kind_of(prompt_of(b)) == "query"]
    assert len(query_prompts) == 2
    assert all("- Type: keywords;\n- Difficulty: phd;\n" in p for p in query_prompts)
    for r in iter_jsonl(tmp_path / "o.jsonl"):
        assert (
            r["provenance"]["configuration"]["Question_Type"] == "summary"
        )  # stage 1 said so; kept as provenance
        assert (r["provenance"]["question_type"], r["provenance"]["difficulty"]) == ("keywords", "phd")


def test_invalid_json_is_retried_then_recorded_and_a_rerun_retries_it(tmp_path, persona_index):
    bad_doc = dict(DOCS)["d2"]

    def script(body, n):
        prompt = prompt_of(body)
        if passage_of(prompt) == bad_doc:
            return Reply('{"Character": "x", "Question_Type": ')  # cut off: invalid JSON
        return smart_reply(body, n)

    out = tmp_path / "out.jsonl"
    cfg = SynthesisConfig(max_invalid=3)
    with FakeLLM(script) as llm:
        report = synthesize(
            "retrieval", CORPUS, backend(llm), out, cfg, personas=persona_index, show_progress=False
        )
    assert (report.done, report.failed) == (5, 1)
    assert sum(passage_of(prompt_of(b)) == bad_doc for b in llm.bodies) == 3  # max_invalid attempts
    failures = list(iter_jsonl(tmp_path / "out.failed.jsonl"))
    assert [f["key"]["doc_id"] for f in failures] == ["d2"]
    assert (
        "no valid ConfigurationOutput in 3 attempts" in failures[0]["error"]
        and "invalid JSON" in failures[0]["error"]
    )

    with FakeLLM() as llm:  # the LLM behaves now: only the failed key is asked for
        report = synthesize(
            "retrieval", CORPUS, backend(llm), out, cfg, personas=persona_index, show_progress=False
        )
    assert (report.done, report.failed, report.skipped, report.retried) == (1, 0, 5, 1)
    assert llm.calls == 2 and {passage_of(prompt_of(b)) for b in llm.bodies} == {bad_doc}
    assert sorted(r["provenance"]["doc_id"] for r in iter_jsonl(out)) == [i for i, _ in DOCS]

    with FakeLLM() as llm:  # nothing left to do
        report = synthesize(
            "retrieval", CORPUS, backend(llm), out, cfg, personas=persona_index, show_progress=False
        )
    assert (report.done, report.skipped, llm.calls) == (0, 6, 0)


def test_transport_failures_fail_the_record_and_the_run_goes_on(tmp_path, persona_index):
    bad_doc = dict(DOCS)["d4"]

    def script(body, n):
        return Status(503) if passage_of(prompt_of(body)) == bad_doc else smart_reply(body, n)

    with FakeLLM(script) as llm:
        report = synthesize(
            "retrieval",
            CORPUS,
            backend(llm),
            tmp_path / "o.jsonl",
            SynthesisConfig(),
            personas=persona_index,
            show_progress=False,
        )
    assert (report.done, report.failed) == (5, 1)
    [failure] = iter_jsonl(tmp_path / "o.failed.jsonl")
    assert (
        failure["key"]["doc_id"] == "d4"
        and "LLM request failed" in failure["error"]
        and "503" in failure["error"]
    )


def test_a_fatal_answer_stops_the_run(tmp_path, persona_index):
    with FakeLLM(lambda body, n: Status(401)) as llm:
        with pytest.raises(LLMFatalError, match="401"):
            synthesize(
                "retrieval",
                CORPUS,
                backend(llm),
                tmp_path / "o.jsonl",
                SynthesisConfig(),
                personas=persona_index,
                show_progress=False,
            )
    assert llm.calls <= 4  # one per worker at most, no retries


@pytest.mark.parametrize("task", ["bitext", "sts", "classification"])
def test_other_tasks_produce_trainer_ready_records(tmp_path, task):
    cfg = SynthesisConfig(languages=Choice(("English", "German"), (1, 1)), per_doc=2)
    out = tmp_path / f"{task}.jsonl"
    with FakeLLM() as llm:
        report = synthesize(task, CORPUS, backend(llm), out, cfg, show_progress=False)
    assert (report.done, report.failed, llm.calls) == (12, 0, 12)
    for r in iter_jsonl(out):
        EmbeddingRecord.model_validate(r)
        prov = r["provenance"]
        assert prov["task"] == task and prov["prompt_version"] == P.PROMPT_VERSION
        if task == "bitext":
            assert (
                r["instruction"] == P.BITEXT_INSTRUCTION and prov["language"] == "German"
            )  # never the corpus language
            assert r["positive"] == "[translated] " + r["query"]
        elif task == "sts":
            assert r["instruction"] == P.STS_INSTRUCTION and r["negatives"] == ["something else entirely"]
        else:
            assert r["instruction"] == "Classify the topic of a text"
            assert (r["positive"], r["negatives"]) == ("science", ["sport", "politics"])
    prompts = [prompt_of(b) for b in llm.bodies]
    render = {"bitext": P.render_bitext, "sts": P.render_sts, "classification": P.render_classification}[task]
    r = next(iter_jsonl(out))
    p = r["provenance"]
    doc = dict(DOCS)[p["doc_id"]]
    if task == "bitext":
        expected = render(
            doc,
            source_language="English",
            target_language="German",
            length=p["length"],
            corpus_language="English",
        )
    else:
        expected = render(
            doc,
            difficulty=p["difficulty"],
            length=p["length"],
            language=p["language"],
            corpus_language="English",
        )
    assert expected in prompts


def test_bad_settings_fail_early_naming_the_value(tmp_path):
    with pytest.raises(
        ValueError, match="bitext needs --languages with a language other than the corpus language"
    ):
        synthesize(
            "bitext",
            CORPUS,
            OpenAIBackend("http://127.0.0.1:9/v1", "m"),
            tmp_path / "o.jsonl",
            show_progress=False,
        )
    with pytest.raises(ValueError, match="unknown synthesis task 'qa'"):
        synthesize(
            "qa",
            CORPUS,
            OpenAIBackend("http://127.0.0.1:9/v1", "m"),
            tmp_path / "o.jsonl",
            show_progress=False,
        )
    with pytest.raises(ValueError, match="needs a PersonaIndex"):
        synthesize(
            "retrieval",
            CORPUS,
            OpenAIBackend("http://127.0.0.1:9/v1", "m"),
            tmp_path / "o.jsonl",
            show_progress=False,
        )
    with pytest.raises(ValueError, match=r"question types \['opinion'\]"):
        SynthesisConfig(question_types=Choice(("opinion",), (1,)))
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        Choice.parse(
            "en,xx", normalise=__import__("embedforge.synthesis.config", fromlist=["x"]).language_name
        )
    with pytest.raises(ValueError, match="per_doc must be >= 1"):
        SynthesisConfig(per_doc=0)
    with pytest.raises(ValueError, match="bad length range"):
        LengthRange.parse("five")
    assert Choice.parse(["en=0.7,zh=0.3"]).weights == (0.7, 0.3)


def test_corpus_formats(tmp_path, corpus_file):
    assert [d.id for d in load_corpus(corpus_file)] == [i for i, _ in DOCS]
    beir = tmp_path / "beir.jsonl"
    beir.write_text(json.dumps({"_id": "x", "title": "Title", "text": "Body."}) + "\n", encoding="utf-8")
    assert load_corpus(beir) == [Document("x", "Title Body.")]
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"contents": "first"}) + "\n\n" + json.dumps({"contents": "second"}) + "\n")
    assert load_corpus(plain) == [Document("1", "first"), Document("3", "second")]
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha\n")
    (folder / "sub" / "b.md").write_text("beta")
    (folder / "skip.bin").write_bytes(b"\x00")
    assert load_corpus(folder) == [Document("a.txt", "alpha"), Document("sub/b.md", "beta")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body2": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: no text field; expected one of"):
        load_corpus(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps({"id": 1, "text": "a"}) + "\n" + json.dumps({"id": 1, "text": "b"}) + "\n")
    with pytest.raises(ValueError, match="duplicate document id '1'"):
        load_corpus(dup)


def test_persona_library(tmp_path, persona_file):
    assert load_personas(persona_file) == PERSONAS
    lines = tmp_path / "p.txt"
    lines.write_text("a nurse\n\na farmer\na nurse\n")
    assert load_personas(lines) == ["a nurse", "a farmer"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"name": "x"}\n')
    with pytest.raises(ValueError, match="Persona Hub format"):
        load_personas(bad)
    builtin = load_personas()
    assert len(builtin) >= 200 and all(len(p.split()) >= 4 for p in builtin)


def test_a_documents_own_language_goes_into_its_prompts(tmp_path, persona_index):
    corpus = tmp_path / "multi.jsonl"
    corpus.write_text(
        json.dumps({"id": "zh1", "text": "珊瑚礁在海水变暖时会白化。", "lang": "zh"})
        + "\n"
        + json.dumps({"id": "en1", "text": "Coral reefs bleach in warm water."})
        + "\n",
        encoding="utf-8",
    )
    docs = load_corpus(corpus)
    assert [d.language for d in docs] == ["Chinese", None]
    cfg = SynthesisConfig(languages=Choice(("English", "Chinese"), (1, 1)))
    with FakeLLM() as llm:
        synthesize(
            "retrieval",
            docs,
            backend(llm),
            tmp_path / "r.jsonl",
            cfg,
            personas=persona_index,
            show_progress=False,
        )
    configs = {
        passage_of(prompt_of(b)): prompt_of(b) for b in llm.bodies if kind_of(prompt_of(b)) == "configuration"
    }
    assert "the **Passage** will be in Chinese language" in configs["珊瑚礁在海水变暖时会白化。"]
    assert "the **Passage** will be in English language" in configs["Coral reefs bleach in warm water."]
    with FakeLLM() as llm:
        synthesize("bitext", docs, backend(llm), tmp_path / "b.jsonl", cfg, show_progress=False)
    pairs = {
        r["provenance"]["doc_id"]: (r["provenance"]["source_language"], r["provenance"]["language"])
        for r in iter_jsonl(tmp_path / "b.jsonl")
    }
    assert pairs == {"zh1": ("Chinese", "English"), "en1": ("English", "Chinese")}
    with pytest.raises(ValueError, match=r"other than the corpus language \(Chinese\)"):
        synthesize(
            "bitext",
            docs,
            backend(llm),
            tmp_path / "b2.jsonl",
            SynthesisConfig(languages=Choice(("Chinese", "German"), (1, 0))),
            show_progress=False,
        )


def test_persona_embeddings_are_cached_by_model_and_texts(tmp_path, tiny_embedder):
    from embedforge.store import EmbeddingStore

    cache = EmbeddingStore(tmp_path / "cache")
    first = PersonaIndex(tiny_embedder, PERSONAS, cache=cache)
    assert len(list((tmp_path / "cache").rglob("embeddings.npy"))) == 1
    np.testing.assert_allclose(first.embeddings, tiny_embedder.encode_documents(PERSONAS), atol=1e-6)
    calls = []
    original = tiny_embedder.encode_documents
    tiny_embedder.encode_documents = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        again = PersonaIndex(tiny_embedder, PERSONAS, cache=cache)
        assert calls == []  # read back, not encoded
        PersonaIndex(tiny_embedder, PERSONAS[:-1], cache=cache)
        assert len(calls) == 1  # other texts: another entry
    finally:
        del tiny_embedder.encode_documents
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    assert again.closest(["Coral reefs bleach."], 5) == first.closest(["Coral reefs bleach."], 5)
    with pytest.raises(ValueError, match="asked for 13 personas per passage but the library holds 12"):
        first.closest(["x"], 13)
