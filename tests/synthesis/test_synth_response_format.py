"""JSON-schema constrained output (``response_format``) and what a bad reply from an endpoint gives,
against the fake endpoint on loopback, which checks each ``response_format`` as a server would."""

from __future__ import annotations

import asyncio
import json

import pytest
from jsonschema import Draft202012Validator
from synth_fake_llm import FakeLLM, Reply, Status, constrained_reply, kind_of, prompt_of, smart_reply
from synth_testdata import DOCS, PERSONAS

from embedforge.cli import main
from embedforge.synthesis import prompts as P
from embedforge.synthesis.config import Choice, SynthesisConfig, language_name
from embedforge.synthesis.llm import (
    LLMFatalError,
    OpenAIBackend,
    OutputSchema,
    ResponseFormat,
    RetryPolicy,
    make_backend,
    response_format_field,
)
from embedforge.synthesis.pipeline import PersonaIndex, synthesize
from embedforge.synthesis.schemas import (
    BitextOutput,
    ClassificationOutput,
    ConfigurationOutput,
    QueryOutput,
    STSOutput,
    json_schema,
)
from embedforge.synthesis.sources import Document
from embedforge.synthesis.store import iter_jsonl
from embedforge.synthesis.tasks import RAW_REPLY_CHARS

FAST = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02)
MSG = [{"role": "user", "content": "hi"}]
CANDIDATES = ["a nurse on night shifts", "a coral reef biologist"]

# written by hand from the prompts (the keys they ask for), not derived from the pydantic models
EXPECTED_KEYS = {
    ConfigurationOutput: ["Character", "Question_Type", "Difficulty"],
    QueryOutput: ["Query"],
    BitextOutput: ["Source", "Target"],
    STSOutput: ["S1", "S2", "S3"],
    ClassificationOutput: ["Task", "Labels", "Text", "Label"],
}
VALID = {
    ConfigurationOutput: {"Character": "x", "Question_Type": "yes_or_no", "Difficulty": "phd"},
    QueryOutput: {"Query": "why do corals bleach"},
    BitextOutput: {"Source": "a", "Target": "b"},
    STSOutput: {"S1": "a", "S2": "b", "S3": "c"},
    ClassificationOutput: {"Task": "t", "Labels": ["a", "b"], "Text": "x", "Label": "a"},
}


def docs(n: int = 4) -> list[Document]:
    return [Document(i, t) for i, t in DOCS[:n]]


def complete(backend, **kw):
    async def go():
        try:
            return await backend.complete(MSG, temperature=0.0, max_tokens=16, **kw)
        finally:
            await backend.aclose()

    return asyncio.run(go())


# --- the schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(EXPECTED_KEYS))
def test_json_schema_is_the_answer_the_prompt_asks_for(model):
    schema = json_schema(model)
    Draft202012Validator.check_schema(schema)
    assert "$ref" not in json.dumps(schema) and "$defs" not in schema  # inlined for grammar converters
    assert list(schema["properties"]) == EXPECTED_KEYS[model]  # the prompts' key order
    assert schema["required"] == EXPECTED_KEYS[model] and schema["additionalProperties"] is False
    v = Draft202012Validator(schema)
    good = VALID[model]
    assert v.is_valid(good) and model.model_validate(good)
    assert not v.is_valid({k: x for k, x in good.items() if k != EXPECTED_KEYS[model][0]})  # a key missing
    assert not v.is_valid({**good, "Extra": "x"})


def test_json_schema_closed_choices_and_candidates():
    schema = json_schema(ConfigurationOutput, choices={"Character": CANDIDATES})
    v = Draft202012Validator(schema)
    assert schema["properties"]["Question_Type"]["enum"] == list(P.QUESTION_TYPES)
    assert schema["properties"]["Difficulty"]["enum"] == list(P.DIFFICULTIES)
    ok = {"Character": CANDIDATES[1], "Question_Type": "summary", "Difficulty": "university"}
    assert v.is_valid(ok)
    assert not v.is_valid({**ok, "Character": "someone else"})
    assert not v.is_valid({**ok, "Question_Type": "essay"})
    with pytest.raises(ValueError, match="has no field 'Persona'"):
        json_schema(ConfigurationOutput, choices={"Persona": CANDIDATES})


def test_the_prompts_examples_fit_their_schemas():
    """Each template's worked example answer is valid under the schema sent with that template."""
    for block in P.CONFIGURATION_EXAMPLES.split("**output**:\n")[1:]:
        answer = json.loads(block.split("\n", 1)[0])
        assert Draft202012Validator(json_schema(ConfigurationOutput)).is_valid(answer)
    for example, model in [
        (P.QUERY_EXAMPLE, QueryOutput),
        (P.BITEXT_EXAMPLE, BitextOutput),
        (P.STS_EXAMPLE, STSOutput),
        (P.CLASSIFICATION_EXAMPLE, ClassificationOutput),
    ]:
        answer = json.loads(example.split("**output**:\n", 1)[1].split("\n", 1)[0])
        assert Draft202012Validator(json_schema(model)).is_valid(answer), model.__name__


# --- the request --------------------------------------------------------------------------------


def test_response_format_field_in_both_dialects():
    out = OutputSchema("query", {"type": "object"})
    assert response_format_field("json_schema", out) == {
        "type": "json_schema",
        "json_schema": {"name": "query", "schema": {"type": "object"}},
    }
    assert response_format_field(ResponseFormat.json_object, out) == {
        "type": "json_object",
        "schema": {"type": "object"},
    }
    assert response_format_field("none", out) is None
    with pytest.raises(ValueError, match=r"one of \['none', 'json_schema', 'json_object'\], got 'grammar'"):
        response_format_field("grammar", out)


@pytest.mark.parametrize("fmt", ["json_schema", "json_object"])
def test_backend_sends_the_schema_and_keeps_extra_body(fmt):
    out = OutputSchema("query", json_schema(QueryOutput))
    with FakeLLM(lambda body, n: Reply('{"Query": "q"}')) as llm:
        backend = OpenAIBackend(llm.url, "m", retry=FAST, response_format=fmt, extra_body={"top_k": 5})

        async def two():
            try:
                return [
                    await backend.complete(MSG, temperature=0, max_tokens=8, output_schema=out),
                    await backend.complete(MSG, temperature=0, max_tokens=8),  # no schema asked for
                ]
            finally:
                await backend.aclose()

        assert asyncio.run(two()) == ['{"Query": "q"}'] * 2
    first, second = llm.bodies
    assert first["top_k"] == 5 and first["response_format"] == response_format_field(fmt, out)
    assert second["top_k"] == 5 and "response_format" not in second
    assert llm.schema_violations == []


def test_backend_without_response_format_sends_no_schema():
    with FakeLLM(lambda body, n: Reply('{"Query": "q"}')) as llm:
        backend = OpenAIBackend(llm.url, "m", retry=FAST)
        complete(backend, output_schema=OutputSchema("query", json_schema(QueryOutput)))
    assert llm.response_formats == [None]
    with pytest.raises(ValueError, match="response_format must be one of"):
        OpenAIBackend("http://127.0.0.1:1/v1", "m", response_format="grammar")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="local:PATH model has no constrained decoding"):
        make_backend("local:/nonexistent", response_format="json_schema")


@pytest.mark.parametrize("status", [400, 422, 500])
def test_a_server_that_rejects_the_dialect_stops_the_run_with_a_hint(status):
    """No request can succeed, so it is fatal; llama-cpp-python 0.3.36 answers json_schema with a 500."""
    with FakeLLM(smart_reply, accepts=frozenset({"json_object"}), rejected_status=status) as llm:
        backend = OpenAIBackend(llm.url, "m", retry=FAST, response_format="json_schema")
        with pytest.raises(
            LLMFatalError, match=rf"rejected response_format='json_schema' \({status}.*json_object"
        ):
            complete(backend, output_schema=OutputSchema("query", json_schema(QueryOutput)))
        assert llm.calls == 0 and len(llm.response_formats) == 1  # refused before the script, not retried


def test_a_500_that_does_not_name_response_format_is_still_retried():
    with FakeLLM(lambda body, n: Reply('{"Query": "q"}')) as llm:
        llm.script = lambda body, n: Status(500) if n == 0 else Reply('{"Query": "q"}')
        backend = OpenAIBackend(llm.url, "m", retry=FAST, response_format="json_schema")
        assert complete(backend, output_schema=OutputSchema("query", json_schema(QueryOutput)))
    assert backend.stats.server_errors == 1 and llm.calls == 2


def test_usage_and_truncation_are_counted():
    with FakeLLM(lambda body, n: Reply('{"Query": "a b', finish_reason="length")) as llm:
        backend = OpenAIBackend(llm.url, "m", retry=FAST)
        complete(backend)
    assert backend.stats.truncated == 1
    assert backend.stats.prompt_tokens == 1 and backend.stats.completion_tokens == 3  # the fake counts words


# --- the pipeline -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def persona_index(tiny_embedder):
    return PersonaIndex(tiny_embedder, PERSONAS)


@pytest.mark.parametrize("fmt", ["json_schema", "json_object"])
def test_retrieval_sends_each_steps_schema(tmp_path, persona_index, fmt):
    with FakeLLM() as llm:
        backend = OpenAIBackend(llm.url, "m", retry=FAST, concurrency=2, response_format=fmt)
        report = synthesize(
            "retrieval", docs(), backend, tmp_path / "out.jsonl", personas=persona_index, show_progress=False
        )
    assert report.done == 4 and report.failed == 0
    assert llm.schema_violations == []  # the fake's (valid) answers fit what we sent
    records = {r["provenance"]["doc_id"]: r["provenance"] for r in iter_jsonl(tmp_path / "out.jsonl")}
    for body in llm.bodies:
        rf = body["response_format"]
        assert rf["type"] == fmt
        schema = rf["schema"] if fmt == "json_object" else rf["json_schema"]["schema"]
        kind = kind_of(prompt_of(body))
        if kind == "configuration":
            doc_id = next(i for i, t in DOCS if t in prompt_of(body))
            # the persona must be one of this passage's candidates, in their order
            assert schema["properties"]["Character"]["enum"] == records[doc_id]["candidates"]
            assert fmt == "json_object" or rf["json_schema"]["name"] == "configuration"
        else:
            assert kind == "query" and schema == json_schema(QueryOutput)
    assert report.steps["retrieval/configuration"]["calls"] == 4
    assert report.steps["retrieval/query"]["calls"] == 4
    assert report.invalid_answers == 0 and report.prompt_tokens > 0 and report.completion_tokens > 0


@pytest.mark.parametrize("task", ["bitext", "sts", "classification"])
def test_other_tasks_send_their_schema(tmp_path, task):
    cfg = SynthesisConfig(languages=Choice.parse("en,de", normalise=language_name))
    with FakeLLM() as llm:
        backend = OpenAIBackend(llm.url, "m", retry=FAST, response_format="json_schema")
        report = synthesize(task, docs(2), backend, tmp_path / "out.jsonl", cfg, show_progress=False)
    assert report.done == 2 and llm.schema_violations == []
    model = {"bitext": BitextOutput, "sts": STSOutput, "classification": ClassificationOutput}[task]
    assert all(b["response_format"]["json_schema"]["schema"] == json_schema(model) for b in llm.bodies)
    assert set(report.steps) == {task}


def test_constrained_decoding_turns_chatter_into_records(tmp_path, persona_index):
    """A model that chatters unless constrained: without a schema every record fails, with one none."""
    cfg = SynthesisConfig(max_invalid=2)
    runs = {}
    for fmt in ("none", "json_object"):
        with FakeLLM(constrained_reply) as llm:
            backend = OpenAIBackend(llm.url, "m", retry=FAST, response_format=fmt)
            runs[fmt] = synthesize(
                "retrieval",
                docs(3),
                backend,
                tmp_path / f"{fmt}.jsonl",
                cfg,
                personas=persona_index,
                show_progress=False,
            )
    none, constrained = runs["none"], runs["json_object"]
    assert (none.done, none.failed) == (0, 3) and (constrained.done, constrained.failed) == (3, 0)
    conf = none.steps["retrieval/configuration"]
    assert conf == {
        "calls": 3,
        "answers": 6,
        "invalid": 6,
        "empty": 0,
        "first_try_invalid": 3,
        "failed": 3,
    }
    assert "retrieval/query" not in none.steps  # stage 2 never ran
    assert none.first_try_invalid == 3 and constrained.first_try_invalid == 0


# --- bad replies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply,reason",
    [
        ("", "the reply is empty"),
        ("   \n", "the reply is empty"),
        ('{"Query": "why do', "invalid JSON"),
        ("I cannot help with that.", "no JSON object in the answer"),
        ('{"query": ""}', "QueryOutput: Query: String should have at least 1 character"),
        (
            '{"Character": "x", "Question_Type": "essay", "Difficulty": "phd"}',
            "Question_Type: Input should be",
        ),
    ],
)
def test_a_bad_reply_fails_the_record_naming_step_reason_and_reply(tmp_path, persona_index, reply, reason):
    cfg = SynthesisConfig(max_invalid=2)
    query_step = reply.startswith(('{"query"', '{"Query"')) or not reply.strip()

    def script(body, n):
        if kind_of(prompt_of(body)) == "query" or not query_step:
            return Reply(reply)
        return smart_reply(body, n)

    with FakeLLM(script) as llm:
        backend = OpenAIBackend(llm.url, "m", retry=FAST)
        report = synthesize(
            "retrieval",
            docs(1),
            backend,
            tmp_path / "o.jsonl",
            cfg,
            personas=persona_index,
            show_progress=False,
        )
    assert report.failed == 1 and report.retries == 0  # not a transport problem: re-asked by ask()
    (failure,) = iter_jsonl(tmp_path / "o.failed.jsonl")
    step = "retrieval/query" if query_step else "retrieval/configuration"
    schema = "QueryOutput" if query_step else "ConfigurationOutput"
    assert failure["error"].startswith(f"{step}: no valid {schema} in 2 attempts: ")
    assert failure["error"].endswith(f"; last reply ({len(reply)} chars) {reply!r}")
    assert reason in failure["error"]
    assert report.steps[step]["invalid"] == 2 and report.steps[step]["failed"] == 1
    assert report.steps[step]["empty"] == (2 if not reply.strip() else 0)


def test_a_long_bad_reply_is_cut_in_the_error(tmp_path, persona_index):
    long = "blah " * 400
    with FakeLLM(lambda body, n: Reply(long)) as llm:
        backend = OpenAIBackend(llm.url, "m", retry=FAST)
        synthesize(
            "retrieval",
            docs(1),
            backend,
            tmp_path / "o.jsonl",
            SynthesisConfig(max_invalid=1),
            personas=persona_index,
            show_progress=False,
        )
    (failure,) = iter_jsonl(tmp_path / "o.failed.jsonl")
    assert f"({len(long)} chars) {long[:RAW_REPLY_CHARS]!r} ..." in failure["error"]
    assert len(failure["error"]) < RAW_REPLY_CHARS + 300
    assert llm.calls == 1


# --- the command line ---------------------------------------------------------------------------


def test_cli_response_format_and_report(tmp_path, corpus_file, persona_file, tiny_embedder_dir, capsys):
    out, report_path = tmp_path / "out.jsonl", tmp_path / "report.json"
    with FakeLLM(constrained_reply) as llm:
        code = main(
            [
                "synth",
                "retrieval",
                "--corpus",
                str(corpus_file),
                "--personas",
                str(persona_file),
                "--llm",
                llm.url,
                "--model",
                "fake-llm",
                "--embedder",
                str(tiny_embedder_dir),
                "--out",
                str(out),
                "--response-format",
                "json_object",
                "--report",
                str(report_path),
                "--limit",
                "3",
                "--no-progress",
            ]
        )
    assert code == 0
    assert {rf["type"] for rf in llm.response_formats} == {"json_object"}
    report = json.loads(report_path.read_text())
    assert report["done"] == 3 and report["failed"] == 0 and report["out"] == str(out)
    assert report["steps"]["retrieval/query"]["calls"] == 3 and report["first_try_invalid"] == 0
    assert report["requests"] == 6 and report["completion_tokens"] > 0
    assert "0 invalid answers (0 on the first try)" in capsys.readouterr().err


def test_cli_rejected_dialect_is_a_clear_error(
    tmp_path, corpus_file, persona_file, tiny_embedder_dir, capsys
):
    with FakeLLM(smart_reply, accepts=frozenset({"json_object"}), rejected_status=500) as llm:
        code = main(
            [
                "synth",
                "retrieval",
                "--corpus",
                str(corpus_file),
                "--personas",
                str(persona_file),
                "--llm",
                llm.url,
                "--model",
                "fake-llm",
                "--embedder",
                str(tiny_embedder_dir),
                "--out",
                str(tmp_path / "out.jsonl"),
                "--response-format",
                "json_schema",
                "--no-progress",
            ]
        )
    assert code == 2
    err = capsys.readouterr().err
    assert "rejected response_format='json_schema'" in err and "try another --response-format" in err
