"""Every synthesis prompt, as versioned data, in one place.

The two retrieval templates are the paper's (Qwen3 Embedding, appendix A.1) character for character,
including its misspellings ("Requirment", "Languange"). The paper elided the option descriptions and
the few-shot examples with "..."; ours fill exactly those slots and nothing else, so the rendered text
equals the paper's wherever the paper gives text. The bitext, STS and classification templates are
ours, written in the same style.

Any change to a template, a description or an example must bump ``PROMPT_VERSION``: the version is
part of every record's key, so a resumed run never mixes records made from different prompts.
"""

from __future__ import annotations

import json

PROMPT_VERSION = "v1"

QUESTION_TYPES: dict[str, str] = {
    "keywords": "a short search-engine style query made of a few keywords or key phrases that the passage "
    "covers, not a full sentence",
    "acquire_knowledge": "a question that seeks a specific fact, definition, number or explanation which "
    "the passage provides",
    "summary": "a request for an overview of the passage's main points, as someone would ask before "
    "deciding to read it",
    "yes_or_no": "a question that can be answered with yes or no, and whose answer the passage supports",
    "background": "a question about the context of the passage's topic: its causes, history, purpose or "
    "the wider setting it belongs to",
}

DIFFICULTIES: dict[str, str] = {
    "high_school": "answerable with general knowledge and everyday words; a curious high-school student "
    "could ask it",
    "university": "needs subject knowledge at undergraduate level and uses the field's common terms",
    "phd": "needs expert, research-level knowledge; uses precise technical terms and makes fine distinctions",
}

# --- stage 1: configuration (the paper's template; "..." and the example line are our slots) -----
CONFIGURATION_TEMPLATE = (
    "Given a **Passage** and **Character**, select the appropriate option from three fields: Character, "
    "Question_Type, Difficulty, and return the output in JSON format.\n"
    "First, select the Character who are likely to be interested in the Passage from the candidates. "
    "Then select the Question_Type that the Character might ask about the Passage; Finally, choose the "
    "Difficulty of the possible question based on the Passage, the Character, and the Question_Type.\n"
    "Character: Given by input **Character**\n"
    "\n"
    "Question_Type:\n"
    "- keywords: {desc_keywords}\n"
    "- acquire_knowledge: {desc_acquire_knowledge}\n"
    "- summary: {desc_summary}\n"
    "- yes_or_no: {desc_yes_or_no}\n"
    "- background: {desc_background}\n"
    "\n"
    "Difficulty:\n"
    "- high_school: {desc_high_school}\n"
    "- university: {desc_university}\n"
    "- phd: {desc_phd}\n"
    "\n"
    "Here are some examples\n"
    "{examples}\n"
    "\n"
    "Now, generate the **output** based on the **Passage** and **Character** from user, the **Passage** "
    "will be in {language} language and the **Character** will be in English.\n"
    "Ensure to generate only the JSON output with content in English.\n"
    "\n"
    "**Passage**:\n"
    "{passage}\n"
    "**Character**:\n"
    "{character}"
)

# --- stage 2: query generation (the paper's template; the example line is our slot) ----------
QUERY_TEMPLATE = (
    "Given a **Character**, **Passage**, and **Requirement**, generate a query from the **Character**'s "
    "perspective that satisfies the **Requirement** and can be used to retrieve the **Passage**. Please "
    "return the result in JSON format.\n"
    "\n"
    "Here is an example:\n"
    "{example}\n"
    "\n"
    "Now, generate the **output** based on the **Character**, **Passage** and **Requirement** from user, "
    "the **Passage** will be in {corpus_language} language, the **Character** and **Requirement** will be "
    "in English.\n"
    "Ensure to generate only the JSON output, with the key in English and the value in {queries_language} "
    "language.\n"
    "\n"
    "**Character**\n"
    "{character}\n"
    "**Passage**\n"
    "{passage}\n"
    "**Requirment**\n"
    "- Type: {type};\n"
    "- Difficulty: {difficulty};\n"
    "- Length: the length of the generated sentences should be {length} words;\n"
    "- Languange: the language in which the results are generated should be {language} language;"
)


def format_candidates(personas: list[str]) -> str:
    """The **Character** block of the configuration prompt: one candidate persona per line."""
    return "\n".join(f"- {p}" for p in personas)


def _json(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False)


_CONFIGURATION_EXAMPLES: list[dict] = [
    {
        "passage": "The mitochondrion is the site of oxidative phosphorylation. Electrons from NADH pass "
        "along the respiratory chain in the inner membrane, pumping protons into the intermembrane "
        "space; ATP synthase uses the resulting gradient to make ATP.",
        "candidates": [
            "a biology teacher preparing a lesson on cell respiration",
            "a marathon runner curious about where muscle energy comes from",
            "a biochemistry PhD student studying electron transport chain inhibitors",
            "a retired accountant who enjoys popular science documentaries",
            "a pharmacist checking how certain drugs affect cell metabolism",
        ],
        "output": {
            "Character": "a biochemistry PhD student studying electron transport chain inhibitors",
            "Question_Type": "acquire_knowledge",
            "Difficulty": "phd",
        },
    },
    {
        "passage": "The city council approved a plan to turn the old rail yard into a public park with "
        "bike paths, a playground and a weekly farmers' market. Construction starts next spring and is "
        "expected to take two years.",
        "candidates": [
            "a parent of two young children living near the city centre",
            "an urban planner who reviews brownfield redevelopment projects",
            "a local journalist covering city hall",
            "a cyclist who commutes to work every day",
            "a small farmer looking for new places to sell vegetables",
        ],
        "output": {
            "Character": "a parent of two young children living near the city centre",
            "Question_Type": "yes_or_no",
            "Difficulty": "high_school",
        },
    },
    {
        "passage": "Gradient clipping rescales the gradient when its norm exceeds a threshold. It keeps "
        "the updates of recurrent networks stable when gradients explode over long sequences, without "
        "changing the direction of the update.",
        "candidates": [
            "a machine learning engineer debugging unstable training runs",
            "a computer science undergraduate taking a first deep learning course",
            "a data journalist explaining artificial intelligence to readers",
            "a robotics hobbyist training small neural networks at home",
            "a mathematics lecturer interested in optimisation methods",
        ],
        "output": {
            "Character": "a computer science undergraduate taking a first deep learning course",
            "Question_Type": "background",
            "Difficulty": "university",
        },
    },
]

CONFIGURATION_EXAMPLES = "\n".join(
    f"<Example{i}>\n**Passage**:\n{e['passage']}\n**Character**:\n{format_candidates(e['candidates'])}\n"
    f"**output**:\n{_json(e['output'])}\n</Example{i}>"
    for i, e in enumerate(_CONFIGURATION_EXAMPLES, start=1)
)

QUERY_EXAMPLE = (
    "<example>\n"
    "**Character**\n"
    "a marathon runner curious about where muscle energy comes from\n"
    "**Passage**\n"
    "The mitochondrion is the site of oxidative phosphorylation. Electrons from NADH pass along the "
    "respiratory chain in the inner membrane, pumping protons into the intermembrane space; ATP synthase "
    "uses the resulting gradient to make ATP.\n"
    "**Requirment**\n"
    "- Type: acquire_knowledge;\n"
    "- Difficulty: high_school;\n"
    "- Length: the length of the generated sentences should be 9 words;\n"
    "- Languange: the language in which the results are generated should be English language;\n"
    "**output**:\n"
    + _json({"Query": "how do my muscle cells actually turn food into energy"})
    + "\n</example>"
)

# --- our templates for the other three task types ----------------------------------------------
BITEXT_TEMPLATE = (
    "Given a **Passage** and a **Requirement**, write one sentence in {source_language} language that states "
    "a fact from the **Passage**, and its faithful translation into {target_language} language. Please return "
    'the result in JSON format with the keys "Source" and "Target".\n'
    "\n"
    "Here is an example:\n"
    "{example}\n"
    "\n"
    "Now, generate the **output** based on the **Passage** and **Requirement** from user, the **Passage** will "
    "be in {corpus_language} language and the **Requirement** will be in English.\n"
    "Ensure to generate only the JSON output, with the keys in English.\n"
    "\n"
    "**Passage**\n"
    "{passage}\n"
    "**Requirement**\n"
    "- Length: the source sentence should be about {length} words;\n"
    "- Source: the source sentence should be in {source_language} language;\n"
    "- Target: the target sentence should be in {target_language} language and mean exactly the same;"
)

BITEXT_EXAMPLE = (
    "<example>\n**Passage**\nThe city council approved a plan to turn the old rail yard into a public park "
    "with bike paths, a playground and a weekly farmers' market.\n**Requirement**\n"
    "- Length: the source sentence should be about 12 words;\n"
    "- Source: the source sentence should be in English language;\n"
    "- Target: the target sentence should be in German language and mean exactly the same;\n"
    "**output**:\n"
    + _json(
        {
            "Source": "The old rail yard will become a public park with bike paths.",
            "Target": "Der alte Rangierbahnhof wird ein öffentlicher Park mit Radwegen.",
        }
    )
    + "\n</example>"
)

STS_TEMPLATE = (
    'Given a **Passage** and a **Requirement**, write three sentences in JSON format with the keys "S1", '
    '"S2" and "S3": S1 states one idea of the **Passage**; S2 says the same as S1 in different words '
    "(a paraphrase with high semantic similarity); S3 is on the same topic but means something different "
    "(low semantic similarity to S1).\n"
    "\n"
    "Here is an example:\n"
    "{example}\n"
    "\n"
    "Now, generate the **output** based on the **Passage** and **Requirement** from user, the **Passage** will "
    "be in {corpus_language} language and the **Requirement** will be in English.\n"
    "Ensure to generate only the JSON output, with the keys in English and the values in {language} language.\n"
    "\n"
    "**Passage**\n"
    "{passage}\n"
    "**Requirement**\n"
    "- Difficulty: {difficulty};\n"
    "- Length: each sentence should be about {length} words;\n"
    "- Language: the sentences should be in {language} language;"
)

STS_EXAMPLE = (
    "<example>\n**Passage**\nGradient clipping rescales the gradient when its norm exceeds a threshold.\n"
    "**Requirement**\n- Difficulty: university;\n- Length: each sentence should be about 10 words;\n"
    "- Language: the sentences should be in English language;\n**output**:\n"
    + _json(
        {
            "S1": "Clipping shrinks the gradient whenever its norm grows too large.",
            "S2": "When the gradient norm passes a limit, clipping scales it down.",
            "S3": "Large learning rates can make the gradient norm grow quickly.",
        }
    )
    + "\n</example>"
)

CLASSIFICATION_TEMPLATE = (
    "Given a **Passage** and a **Requirement**, invent a text classification task that the **Passage**'s "
    "domain suggests (for example topic, sentiment, intent or genre), then write one new text for it and "
    'give its label. Please return the result in JSON format with the keys "Task" (a one-sentence '
    'instruction that describes the classification), "Labels" (two to eight short label names), '
    '"Text" (the new text) and "Label" (the text\'s label, one of "Labels").\n'
    "\n"
    "Here is an example:\n"
    "{example}\n"
    "\n"
    "Now, generate the **output** based on the **Passage** and **Requirement** from user, the **Passage** will "
    "be in {corpus_language} language and the **Requirement** will be in English.\n"
    'Ensure to generate only the JSON output, with the keys, "Task" and "Labels" in English and '
    '"Text" in {language} language.\n'
    "\n"
    "**Passage**\n"
    "{passage}\n"
    "**Requirement**\n"
    "- Difficulty: {difficulty};\n"
    "- Length: the text should be about {length} words;\n"
    "- Language: the text should be in {language} language;"
)

CLASSIFICATION_EXAMPLE = (
    "<example>\n**Passage**\nThe city council approved a plan to turn the old rail yard into a public park.\n"
    "**Requirement**\n- Difficulty: high_school;\n- Length: the text should be about 14 words;\n"
    "- Language: the text should be in English language;\n**output**:\n"
    + _json(
        {
            "Task": "Classify the sentiment of a resident's comment about a city project",
            "Labels": ["positive", "negative", "neutral"],
            "Text": "Finally a park where the kids can play instead of that ugly fenced rail yard!",
            "Label": "positive",
        }
    )
    + "\n</example>"
)

# --- embedding instructions of the records each task produces (reference section 2) ------------
RETRIEVAL_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
BITEXT_INSTRUCTION = "Retrieve parallel sentences"
STS_INSTRUCTION = "Retrieve semantically similar text"
PERSONA_INSTRUCTION = "Given a passage, retrieve the personas most likely to be interested in it"


def render_configuration(passage: str, personas: list[str], language: str) -> str:
    """The stage-1 prompt: the paper's template with our descriptions and examples."""
    return CONFIGURATION_TEMPLATE.format(
        **{f"desc_{k}": v for k, v in QUESTION_TYPES.items()},
        **{f"desc_{k}": v for k, v in DIFFICULTIES.items()},
        examples=CONFIGURATION_EXAMPLES,
        language=language,
        passage=passage,
        character=format_candidates(personas),
    )


def render_query(
    passage: str,
    character: str,
    *,
    type: str,
    difficulty: str,
    length: int,
    language: str,
    corpus_language: str,
) -> str:
    """The stage-2 prompt: the paper's template with our example."""
    return QUERY_TEMPLATE.format(
        example=QUERY_EXAMPLE,
        corpus_language=corpus_language,
        queries_language=language,
        character=character,
        passage=passage,
        type=type,
        difficulty=difficulty,
        length=length,
        language=language,
    )


def render_bitext(
    passage: str, *, source_language: str, target_language: str, length: int, corpus_language: str
) -> str:
    return BITEXT_TEMPLATE.format(
        example=BITEXT_EXAMPLE,
        passage=passage,
        source_language=source_language,
        target_language=target_language,
        length=length,
        corpus_language=corpus_language,
    )


def render_sts(passage: str, *, difficulty: str, length: int, language: str, corpus_language: str) -> str:
    return STS_TEMPLATE.format(
        example=STS_EXAMPLE,
        passage=passage,
        difficulty=difficulty,
        length=length,
        language=language,
        corpus_language=corpus_language,
    )


def render_classification(
    passage: str, *, difficulty: str, length: int, language: str, corpus_language: str
) -> str:
    return CLASSIFICATION_TEMPLATE.format(
        example=CLASSIFICATION_EXAMPLE,
        passage=passage,
        difficulty=difficulty,
        length=length,
        language=language,
        corpus_language=corpus_language,
    )
