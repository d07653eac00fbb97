"""Every prompt and template of the Qwen3 Embedding system, as data, in one place.

The strings are the exact ones of the Qwen3-Embedding and Qwen3-Reranker model cards: one changed
character changes the model's output. Everything that formats a query, a document or a reranker
input imports from here.
"""

from __future__ import annotations

from collections.abc import Mapping

# --- token ids of the Qwen3 tokenizer --------------------------------------------------------
ENDOFTEXT_ID = 151643  # "<|endoftext|>": appended to every embedding input; also the pad token
IM_END_ID = 151645  # "<|im_end|>": the tokenizer's eos_token — NOT the embedding end token
YES_ID = 9693  # "yes"
NO_ID = 2152  # "no"
ENDOFTEXT = "<|endoftext|>"

# --- embedding ---------------------------------------------------------------------------------
DEFAULT_QUERY_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def query_prompt(instruction: str) -> str:
    """The text put before a query: ``"Instruct: {instruction}\\nQuery:"`` (no space after ``Query:``)."""
    return f"Instruct: {instruction}\nQuery:"


def format_query(query: str, instruction: str = DEFAULT_QUERY_INSTRUCTION) -> str:
    """A Qwen3-Embedding query: ``f"Instruct: {instruction}\\nQuery:{query}"``. Documents take no prompt."""
    return query_prompt(instruction) + query


SIDES = ("query", "document")


def side_prompt(side: str | None, instruction: str | None, table: Mapping[str, str]) -> str:
    """The text put before every input of one side: the one rule, used by the embedder, the
    server, evaluation and training.

    - an instruction, on either side: the Qwen3 ``"Instruct: {instruction}\\nQuery:"`` (a task
      that instructs documents too, like STS or ArguAna, passes it for documents);
    - no instruction: the checkpoint's ``table[side]`` prompt (``query``: for Qwen3 the default
      instruction; ``document``: usually empty);
    - ``side=None`` (plain text) and no instruction: no prompt.
    """
    if instruction is not None:
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
        return query_prompt(instruction)
    if side is None:
        return ""
    if side not in SIDES:
        raise ValueError(f"side must be one of {list(SIDES)} or None, got {side!r}")
    return table.get(side, "")


# --- reranking ---------------------------------------------------------------------------------
DEFAULT_RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def format_rerank_query(query: str, instruction: str = DEFAULT_RERANK_INSTRUCTION) -> str:
    """The instruction-and-query part of a reranker pair (what the query's share of the window holds)."""
    return f"<Instruct>: {instruction}\n<Query>: {query}"


def format_rerank_document(document: str) -> str:
    """The document part of a reranker pair, which follows the query part."""
    return f"\n<Document>: {document}"


def format_rerank_pair(query: str, document: str, instruction: str = DEFAULT_RERANK_INSTRUCTION) -> str:
    """The middle part of a reranker input (the only part that is truncated):
    ``"<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {document}"``."""
    return format_rerank_query(query, instruction) + format_rerank_document(document)


__all__ = [
    "DEFAULT_QUERY_INSTRUCTION",
    "DEFAULT_RERANK_INSTRUCTION",
    "ENDOFTEXT",
    "ENDOFTEXT_ID",
    "IM_END_ID",
    "NO_ID",
    "RERANK_PREFIX",
    "RERANK_SUFFIX",
    "SIDES",
    "YES_ID",
    "format_query",
    "format_rerank_document",
    "format_rerank_pair",
    "format_rerank_query",
    "query_prompt",
    "side_prompt",
]


# =============================================================================================
# Official Qwen3-Embedding per-task instructions (appended by the evaluation helper; data only).
# The strings are those of QwenLM/Qwen3-Embedding's evaluation/task_prompts.json for common MTEB
# tasks, keyed by MTEB task name. How they are applied (the rules of the official evaluation
# script, implemented in embedforge.evaluation.instructions):
#   - Retrieval: the query only; documents take no instruction. A task in
#     QWEN3_SYMMETRIC_RETRIEVAL_TASKS instructs both sides with the same text.
#   - STS and pair classification: both sides, always QWEN3_STS_INSTRUCTION.
#   - Bitext mining: both sides, always QWEN3_BITEXT_INSTRUCTION.
#   - Reranking, classification, clustering: every text.
# =============================================================================================
QWEN3_STS_INSTRUCTION = "Retrieve semantically similar text"
QWEN3_BITEXT_INSTRUCTION = "Retrieve parallel sentences"

QWEN3_RETRIEVAL_INSTRUCTIONS: dict[str, str] = {
    "ArguAna": "Given a claim, find documents that refute the claim",
    "ClimateFEVER": "Given a claim about climate change, retrieve documents that support or refute the claim",
    "ClimateFEVERHardNegatives": "Given a claim about climate change, retrieve documents that support or refute the claim",
    "CQADupstackRetrieval": "Given a question, retrieve detailed question descriptions from Stackexchange that are duplicates to the given question",
    "DBPedia": "Given a query, retrieve relevant entity descriptions from DBPedia",
    "FEVER": "Given a claim, retrieve documents that support or refute the claim",
    "FEVERHardNegatives": "Given a claim, retrieve documents that support or refute the claim",
    "FiQA2018": "Given a financial question, retrieve user replies that best answer the question",
    "HotpotQA": "Given a multi-hop question, retrieve documents that can help answer the question",
    "HotpotQAHardNegatives": "Given a multi-hop question, retrieve documents that can help answer the question",
    "MSMARCO": "Given a web search query, retrieve relevant passages that answer the query",
    "NFCorpus": "Given a question, retrieve relevant documents that best answer the question",
    "NQ": "Given a question, retrieve Wikipedia passages that answer the question",
    "QuoraRetrieval": "Given a question, retrieve questions that are semantically equivalent to the given question",
    "SCIDOCS": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
    "SciFact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "Touche2020": "Given a question, retrieve detailed and persuasive arguments that answer the question",
    "Touche2020Retrieval.v3": "Given a question, retrieve detailed and persuasive arguments that answer the question",
    "TRECCOVID": "Given a query on COVID-19, retrieve documents that answer the query",
    "MIRACLRetrievalHardNegatives": "Retrieval relevant passage for the given query",
    "MLQARetrieval": "Retrieval the relevant passage for the given query",
    "BelebeleRetrieval": "Retrieval the relevant passage for the given query",
    "T2Retrieval": "Given a Chinese search query, retrieve web passages that answer the question",
    "MMarcoRetrieval": "Given a web search query, retrieve relevant passages that answer the query",
    "DuRetrieval": "Given a Chinese search query, retrieve web passages that answer the question",
}
# retrieval tasks whose official entry instructs queries and documents alike
QWEN3_SYMMETRIC_RETRIEVAL_TASKS: frozenset[str] = frozenset({"ArguAna"})

QWEN3_STS_TASKS: frozenset[str] = frozenset(
    {
        "STS12",
        "STS13",
        "STS14",
        "STS15",
        "STS16",
        "STS17",
        "STS22",
        "STS22.v2",
        "STSBenchmark",
        "STSBenchmarkMultilingualSTS",
        "SICK-R",
        "BIOSSES",
        "GermanSTSBenchmark",
        "STSB",
        "STSES",
    }
)
QWEN3_PAIR_CLASSIFICATION_TASKS: frozenset[str] = frozenset(
    {"SprintDuplicateQuestions", "TwitterSemEval2015", "TwitterURLCorpus", "PawsXPairClassification", "XNLI"}
)
QWEN3_BITEXT_TASKS: frozenset[str] = frozenset(
    {"Tatoeba", "BUCC", "BUCC.v2", "FloresBitextMining", "NTREXBitextMining", "BibleNLPBitextMining"}
)
# reranking / classification / clustering: the instruction goes on every text
QWEN3_ALL_TEXT_INSTRUCTIONS: dict[str, str] = {
    "AskUbuntuDupQuestions": "Retrieve duplicate questions from AskUbuntu forum",
    "MindSmallReranking": "Retrieve relevant news articles based on user browsing history",
    "SciDocsRR": "Given a title of a scientific paper, retrieve the titles of other relevant papers",
    "StackOverflowDupQuestions": "Retrieve duplicate questions from StackOverflow forum",
    "AmazonCounterfactualClassification": "Classify a given Amazon customer review text as either counterfactual or not-counterfactual",
    "Banking77Classification": "Given a online banking query, find the corresponding intents",
    "ImdbClassification": "Classify the sentiment expressed in the given movie review text from the IMDB dataset",
    "ToxicConversationsClassification": "Classify the given comments as either toxic or not toxic",
    "TweetSentimentExtractionClassification": "Classify the sentiment of a given tweet as either positive, negative, or neutral",
    "ArXivHierarchicalClusteringP2P": "Identify the main and secondary category of Arxiv papers based on the titles and abstracts",
    "ArXivHierarchicalClusteringS2S": "Identify the main and secondary category of Arxiv papers based on the titles",
    "TwentyNewsgroupsClustering": "Identify the topic or theme of the given news articles",
}
