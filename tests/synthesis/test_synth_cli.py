"""``embedforge synth ...`` through the project's command line."""

from __future__ import annotations

import json

import pytest
from synth_fake_llm import FakeLLM, Reply, smart_reply
from synth_testdata import DOCS

from embedforge.cli import main
from embedforge.synthesis.sources import load_personas
from embedforge.synthesis.store import iter_jsonl


def test_sts_with_weighted_languages(tmp_path, corpus_file):
    out = tmp_path / "sts.jsonl"
    with FakeLLM() as llm:
        rc = main(
            [
                "synth",
                "sts",
                "--corpus",
                str(corpus_file),
                "--llm",
                llm.url,
                "--model",
                "m",
                "--out",
                str(out),
                "--languages",
                "en",
                "de=3",
                "--difficulties",
                "phd",
                "--per-doc",
                "2",
                "--seed",
                "3",
                "--no-progress",
            ]
        )
    assert rc == 0
    records = list(iter_jsonl(out))
    assert len(records) == 2 * len(DOCS) == llm.calls
    assert {r["provenance"]["language"] for r in records} == {"English", "German"}
    assert {r["provenance"]["difficulty"] for r in records} == {"phd"}
    assert all(r["provenance"]["seed"] == 3 and r["provenance"]["model"] == "m" for r in records)


def test_retrieval_with_the_builtin_persona_library(tmp_path, corpus_file, tiny_embedder_dir):
    out = tmp_path / "r.jsonl"
    with FakeLLM() as llm:
        rc = main(
            [
                "synth",
                "retrieval",
                "--corpus",
                str(corpus_file),
                "--llm",
                llm.url,
                "--model",
                "m",
                "--embedder",
                str(tiny_embedder_dir),
                "--out",
                str(out),
                "--limit",
                "3",
                "--no-progress",
            ]
        )
    assert rc == 0
    library = set(load_personas())
    records = list(iter_jsonl(out))
    assert [r["provenance"]["doc_id"] for r in sorted(records, key=lambda r: r["provenance"]["doc_id"])] == [
        "d0",
        "d1",
        "d2",
    ]
    for r in records:
        assert len(r["provenance"]["candidates"]) == 5 and set(r["provenance"]["candidates"]) <= library


def test_failures_give_exit_code_3_and_are_listed(tmp_path, corpus_file, capsys):
    out = tmp_path / "c.jsonl"

    def script(body, n):
        return (
            Reply("not json at all")
            if "Coral" in body["messages"][0]["content"].rsplit("**Passage**", 1)[1]
            else smart_reply(body, n)
        )

    with FakeLLM(script) as llm:
        rc = main(
            [
                "synth",
                "classification",
                "--corpus",
                str(corpus_file),
                "--llm",
                llm.url,
                "--model",
                "m",
                "--out",
                str(out),
                "--max-invalid",
                "2",
                "--no-progress",
            ]
        )
    assert rc == 3
    err = capsys.readouterr().err
    assert f"{len(DOCS) - 1} done, 1 failed, 0 skipped" in err and "c.failed.jsonl" in err
    [failure] = iter_jsonl(tmp_path / "c.failed.jsonl")
    assert failure["key"] == {"doc_id": "d0", "task": "classification", "sample": 0, "prompt_version": "v1"}


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--languages", "xx"], "unknown language code 'xx'"),
        (["--difficulties", "easy"], "'easy' is not one of ['high_school', 'university', 'phd']"),
        (["--lengths", "9-3"], "1 <= low <= high, got 9-3"),
        (["--per-doc", "0"], "per_doc must be >= 1"),
        (["--temperature", "5"], "temperature must be in [0, 2]"),
        (["--concurrency", "0"], "concurrency must be >= 1"),
    ],
)
def test_bad_values_are_named(tmp_path, corpus_file, capsys, extra, message):
    rc = main(
        [
            "synth",
            "sts",
            "--corpus",
            str(corpus_file),
            "--llm",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "--out",
            str(tmp_path / "o.jsonl"),
            "--no-progress",
            *extra,
        ]
    )
    assert rc == 2
    assert message in capsys.readouterr().err


def test_bad_endpoint_and_corpus_are_named(tmp_path, corpus_file, capsys):
    assert (
        main(
            [
                "synth",
                "bitext",
                "--corpus",
                str(corpus_file),
                "--llm",
                "ftp://x",
                "--model",
                "m",
                "--languages",
                "de",
                "--out",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 2
    )
    assert (
        "--llm must be an http(s):// URL of an OpenAI-compatible endpoint or local:PATH, got 'ftp://x'"
        in capsys.readouterr().err
    )
    assert (
        main(
            [
                "synth",
                "sts",
                "--corpus",
                str(tmp_path / "missing.jsonl"),
                "--llm",
                "http://127.0.0.1:9/v1",
                "--model",
                "m",
                "--out",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 2
    )
    assert "missing.jsonl' does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", "summaries"])


def test_question_type_override_from_the_command_line(tmp_path, corpus_file, persona_file, tiny_embedder_dir):
    out = tmp_path / "r.jsonl"
    with FakeLLM() as llm:
        assert (
            main(
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
                    "m",
                    "--embedder",
                    str(tiny_embedder_dir),
                    "--out",
                    str(out),
                    "--limit",
                    "2",
                    "--question-types",
                    "keywords=1,yes_or_no=0",
                    "--no-progress",
                ]
            )
            == 0
        )
    assert {r["provenance"]["question_type"] for r in iter_jsonl(out)} == {"keywords"}
    assert all(
        json.loads(json.dumps(r))["provenance"]["configuration"]["Question_Type"] == "summary"
        for r in iter_jsonl(out)
    )


def test_local_backend_runs_the_pipeline(tmp_path, corpus_file, tiny_embedder_plain_dir, capsys):
    """``local:PATH``: a random tiny model writes no valid JSON, so both records fail with the reason."""
    out = tmp_path / "l.jsonl"
    rc = main(
        [
            "synth",
            "sts",
            "--corpus",
            str(corpus_file),
            "--llm",
            f"local:{tiny_embedder_plain_dir}",
            "--out",
            str(out),
            "--limit",
            "2",
            "--max-tokens",
            "4",
            "--max-invalid",
            "1",
            "--temperature",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 3
    assert "0 done, 2 failed, 0 skipped (of 2); 2 requests" in capsys.readouterr().err
    failures = list(iter_jsonl(tmp_path / "l.failed.jsonl"))
    assert [f["key"]["doc_id"] for f in failures] == ["d0", "d1"]
    assert all(
        "no valid STSOutput in 1 attempts" in f["error"] and f["model"] == str(tiny_embedder_plain_dir)
        for f in failures
    )


def test_progress_bar_shows_done_failed_skipped(tmp_path, corpus_file, capsys):
    out = tmp_path / "p.jsonl"

    def script(body, n):
        return (
            Reply("{}")
            if "Coral" in body["messages"][0]["content"].rsplit("**Passage**", 1)[1]
            else smart_reply(body, n)
        )

    with FakeLLM(script) as llm:
        main(
            [
                "synth",
                "sts",
                "--corpus",
                str(corpus_file),
                "--llm",
                llm.url,
                "--model",
                "m",
                "--out",
                str(out),
                "--max-invalid",
                "1",
                "--limit",
                "3",
            ]
        )
        capsys.readouterr()
        main(
            [
                "synth",
                "sts",
                "--corpus",
                str(corpus_file),
                "--llm",
                llm.url,
                "--model",
                "m",
                "--out",
                str(out),
                "--max-invalid",
                "1",
            ]
        )
    err = capsys.readouterr().err
    assert "synth sts" in err and "rec/s" in err
    assert "6/6" in err and "done=3, failed=1, skipped=2" in err  # d0 fails again; d1, d2 were done before


def test_extra_body_reaches_the_endpoint(tmp_path, corpus_file, capsys):
    with FakeLLM() as llm:
        assert (
            main(
                [
                    "synth",
                    "sts",
                    "--corpus",
                    str(corpus_file),
                    "--llm",
                    llm.url,
                    "--model",
                    "m",
                    "--limit",
                    "1",
                    "--out",
                    str(tmp_path / "o.jsonl"),
                    "--no-progress",
                    "--extra-body",
                    '{"chat_template_kwargs": {"enable_thinking": false}}',
                ]
            )
            == 0
        )
    assert llm.bodies[0]["chat_template_kwargs"] == {"enable_thinking": False}
    assert (
        main(
            [
                "synth",
                "sts",
                "--corpus",
                str(corpus_file),
                "--llm",
                llm.url,
                "--model",
                "m",
                "--out",
                str(tmp_path / "o.jsonl"),
                "--extra-body",
                "[1]",
            ]
        )
        == 2
    )
    assert "--extra-body must be a JSON object, got '[1]'" in capsys.readouterr().err
