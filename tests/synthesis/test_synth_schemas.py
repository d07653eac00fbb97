"""Parsing and validating LLM answers."""

from __future__ import annotations

import pytest

from embedforge.synthesis.schemas import (
    BitextOutput,
    ClassificationOutput,
    ConfigurationOutput,
    InvalidOutput,
    QueryOutput,
    STSOutput,
    extract_json,
    parse_output,
)


@pytest.mark.parametrize(
    "text",
    [
        '{"Query": "q"}',
        '```json\n{"Query": "q"}\n```',
        '<think>\nlet me think {not json}\n</think>\n\n{"Query": "q"}',
        'Sure! Here it is: {"Query": "q"} Hope this helps.',
        '{"query": "  q  "}',
    ],
)
def test_lenient_where_it_costs_nothing(text):
    assert parse_output(text, QueryOutput).query == "q"


@pytest.mark.parametrize(
    "text,reason",
    [
        ("no json here", "no JSON object"),
        ('{"Query": "q"', "invalid JSON"),
        ('["Query", "q"]', "no JSON object"),
        ('{"Question": "q"}', "QueryOutput: Query"),
        ('{"Query": ""}', "QueryOutput: Query"),
    ],
)
def test_invalid_answers_name_the_reason(text, reason):
    with pytest.raises(InvalidOutput, match=reason):
        parse_output(text, QueryOutput)


def test_extract_json_takes_the_first_object():
    assert extract_json('```json\n[{"a": 1}, {"b": 2}]\n```') == {"a": 1}
    with pytest.raises(InvalidOutput, match="no JSON object"):
        extract_json("```json\n[1, 2]\n```")


def test_configuration_choices_are_closed():
    ok = parse_output(
        '{"Character": "a nurse", "Question_Type": "yes_or_no", "Difficulty": "phd"}', ConfigurationOutput
    )
    assert (ok.character, ok.question_type.value, ok.difficulty.value) == ("a nurse", "yes_or_no", "phd")
    with pytest.raises(InvalidOutput, match="Question_Type"):
        parse_output(
            '{"Character": "a", "Question_Type": "opinion", "Difficulty": "phd"}', ConfigurationOutput
        )
    with pytest.raises(InvalidOutput, match="Difficulty"):
        parse_output(
            '{"Character": "a", "Question_Type": "summary", "Difficulty": "kindergarten"}',
            ConfigurationOutput,
        )


def test_task_schemas_check_their_rules():
    with pytest.raises(InvalidOutput, match="same text"):
        parse_output('{"Source": "x", "Target": "x"}', BitextOutput)
    with pytest.raises(InvalidOutput, match="three different"):
        parse_output('{"S1": "a", "S2": "a", "S3": "b"}', STSOutput)
    with pytest.raises(InvalidOutput, match="not one of Labels"):
        parse_output('{"Task": "t", "Labels": ["a", "b"], "Text": "x", "Label": "c"}', ClassificationOutput)
    with pytest.raises(InvalidOutput, match="distinct"):
        parse_output('{"Task": "t", "Labels": ["a", "a"], "Text": "x", "Label": "a"}', ClassificationOutput)
    ok = parse_output('{"task": "t", "labels": ["a", "b"], "text": "x", "label": "b"}', ClassificationOutput)
    assert ok.labels == ["a", "b"]
