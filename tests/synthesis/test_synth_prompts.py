"""The synthesis prompts: the paper's text character for character, our slots filled, versions kept."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from embedforge.synthesis import prompts as P

# Appendix A.1 of the Qwen3 Embedding paper, quoted exactly ("..." and the example lines are the
# paper's own elisions; "Requirment" and "Languange" are its spelling).
PAPER_CONFIGURATION = """Given a **Passage** and **Character**, select the appropriate option from three fields: Character, Question_Type, Difficulty, and return the output in JSON format.
First, select the Character who are likely to be interested in the Passage from the candidates. Then select the Question_Type that the Character might ask about the Passage; Finally, choose the Difficulty of the possible question based on the Passage, the Character, and the Question_Type.
Character: Given by input **Character**

Question_Type:
- keywords: ...
- acquire_knowledge: ...
- summary: ...
- yes_or_no: ...
- background: ...

Difficulty:
- high_school: ...
- university: ...
- phd: ...

Here are some examples
<Example1> <Example2> <Example3>

Now, generate the **output** based on the **Passage** and **Character** from user, the **Passage** will be in {language} language and the **Character** will be in English.
Ensure to generate only the JSON output with content in English.

**Passage**:
{passage}
**Character**:
{character}"""

PAPER_QUERY = """Given a **Character**, **Passage**, and **Requirement**, generate a query from the **Character**'s perspective that satisfies the **Requirement** and can be used to retrieve the **Passage**. Please return the result in JSON format.

Here is an example:
<example>

Now, generate the **output** based on the **Character**, **Passage** and **Requirement** from user, the **Passage** will be in {corpus_language} language, the **Character** and **Requirement** will be in English.
Ensure to generate only the JSON output, with the key in English and the value in {queries_language} language.

**Character**
{character}
**Passage**
{passage}
**Requirment**
- Type: {type};
- Difficulty: {difficulty};
- Length: the length of the generated sentences should be {length} words;
- Languange: the language in which the results are generated should be {language} language;"""

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "synthesis-prompts.md"


def test_embedded_copies_match_the_reference_file():
    if not REFERENCE.exists():
        pytest.skip(f"the reference file {REFERENCE} is absent (../shared not here)")
    blocks = re.findall(r"```\n(.*?)\n```", REFERENCE.read_text(encoding="utf-8"), re.DOTALL)
    assert blocks == [PAPER_CONFIGURATION, PAPER_QUERY]


def test_configuration_template_is_the_papers_with_our_slots():
    elided = P.CONFIGURATION_TEMPLATE.format(
        **{f"desc_{k}": "..." for k in [*P.QUESTION_TYPES, *P.DIFFICULTIES]},
        examples="<Example1> <Example2> <Example3>",
        language="{language}",
        passage="{passage}",
        character="{character}",
    )
    assert elided == PAPER_CONFIGURATION


def test_query_template_is_the_papers_with_our_slot():
    elided = P.QUERY_TEMPLATE.format(
        example="<example>",
        **{
            k: "{" + k + "}"
            for k in (
                "corpus_language",
                "queries_language",
                "character",
                "passage",
                "type",
                "difficulty",
                "length",
                "language",
            )
        },
    )
    assert elided == PAPER_QUERY


def test_render_configuration_character_for_character():
    personas = ["a nurse", "a farmer", "a {braced} historian", "a cyclist", "a lawyer"]
    passage = "Crop rotation restores soil {nutrients}.\nSecond line."
    expected = PAPER_CONFIGURATION
    for name, desc in {**P.QUESTION_TYPES, **P.DIFFICULTIES}.items():
        expected = expected.replace(f"- {name}: ...", f"- {name}: {desc}")
    expected = (
        expected.replace("<Example1> <Example2> <Example3>", P.CONFIGURATION_EXAMPLES)
        .replace("{language}", "German")
        .replace("{passage}", passage)
        .replace("{character}", "- a nurse\n- a farmer\n- a {braced} historian\n- a cyclist\n- a lawyer")
    )
    assert P.render_configuration(passage, personas, "German") == expected


def test_render_query_character_for_character():
    got = P.render_query(
        "The passage.",
        "a nurse",
        type="yes_or_no",
        difficulty="phd",
        length=12,
        language="Chinese",
        corpus_language="English",
    )
    expected = PAPER_QUERY.replace("<example>", P.QUERY_EXAMPLE)
    for k, v in {
        "corpus_language": "English",
        "queries_language": "Chinese",
        "character": "a nurse",
        "passage": "The passage.",
        "type": "yes_or_no",
        "difficulty": "phd",
        "length": "12",
        "language": "Chinese",
    }.items():
        expected = expected.replace("{" + k + "}", v)
    assert got == expected
    assert got.endswith(
        "**Requirment**\n- Type: yes_or_no;\n- Difficulty: phd;\n"
        "- Length: the length of the generated sentences should be 12 words;\n"
        "- Languange: the language in which the results are generated should be Chinese language;"
    )


def test_examples_hold_valid_answers_of_the_schemas():
    from embedforge.synthesis.schemas import (
        BitextOutput,
        ClassificationOutput,
        ConfigurationOutput,
        QueryOutput,
        STSOutput,
        parse_output,
    )

    for block in re.findall(r"\*\*output\*\*:\n(\{.*?\})\n</Example\d>", P.CONFIGURATION_EXAMPLES):
        out = parse_output(block, ConfigurationOutput)
        assert out.character in P.CONFIGURATION_EXAMPLES
    assert len(re.findall(r"<Example\d>", P.CONFIGURATION_EXAMPLES)) == 3
    for example, schema in [
        (P.QUERY_EXAMPLE, QueryOutput),
        (P.BITEXT_EXAMPLE, BitextOutput),
        (P.STS_EXAMPLE, STSOutput),
        (P.CLASSIFICATION_EXAMPLE, ClassificationOutput),
    ]:
        parse_output(example.split("**output**:\n", 1)[1], schema)


@pytest.mark.parametrize(
    "render,kwargs",
    [
        (
            P.render_bitext,
            {
                "source_language": "English",
                "target_language": "German",
                "length": 9,
                "corpus_language": "English",
            },
        ),
        (
            P.render_sts,
            {"difficulty": "phd", "length": 9, "language": "French", "corpus_language": "English"},
        ),
        (
            P.render_classification,
            {"difficulty": "university", "length": 9, "language": "Thai", "corpus_language": "English"},
        ),
    ],
)
def test_our_templates_render_every_input(render, kwargs):
    text = render("PASSAGE {x}", **kwargs)
    assert "\n**Passage**\nPASSAGE {x}\n**Requirement**\n" in text
    for v in kwargs.values():
        assert str(v) in text
    assert not re.search(r"\{[a-z_]+\}", text.replace("{x}", ""))  # no slot left unfilled


# Any edit of the prompt data must bump PROMPT_VERSION (it keys every record) and then this table.
PROMPT_DATA_SHA256 = {"v1": "8c8e4fafe692d7656739010950f7d0bdccd2262b931c8490b8fa91edcc68591c"}


def _prompt_data_hash() -> str:
    data = {
        name: getattr(P, name)
        for name in sorted(dir(P))
        if name.isupper() and isinstance(getattr(P, name), (str, dict))
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def test_prompt_changes_bump_the_version():
    assert P.PROMPT_VERSION in PROMPT_DATA_SHA256, f"record the hash of {P.PROMPT_VERSION}"
    assert _prompt_data_hash() == PROMPT_DATA_SHA256[P.PROMPT_VERSION], (
        f"the prompt data changed: bump PROMPT_VERSION and record the new hash here ({_prompt_data_hash()})"
    )
