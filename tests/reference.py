"""Reference implementations written from the Qwen3 model cards, independent of embedforge.

Every string here is typed from the model cards, not imported from the package, so a drift in
``embedforge.prompts`` fails the equivalence tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

CARD_TASK = "Given a web search query, retrieve relevant passages that answer the query"


def get_detailed_instruct(task_description: str, query: str) -> str:
    return f"Instruct: {task_description}\nQuery:{query}"


def card_last_token_pool(last_hidden_states, attention_mask):
    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    batch_size = last_hidden_states.shape[0]
    return last_hidden_states[torch.arange(batch_size), sequence_lengths]


def card_embedding_inputs(tokenizer, texts, max_length=8192, tokenizer_appends_eos=True):
    """New model card (tokenizer appends <|endoftext|>) or the older card (append it by hand)."""
    if tokenizer_appends_eos:
        return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    eod_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    batch = tokenizer(texts, padding=False, truncation=True, max_length=max_length - 1)
    for seq, att in zip(batch["input_ids"], batch["attention_mask"]):
        seq.append(eod_id)
        att.append(1)
    return tokenizer.pad(batch, padding=True, return_tensors="pt")


@torch.no_grad()
def card_embed(path, texts, *, max_length=8192, tokenizer_appends_eos=True, batch_size=16, dim=None):
    """Model-card loop: left padding, batches of ``batch_size`` in input order."""
    tokenizer = AutoTokenizer.from_pretrained(str(path), padding_side="left")
    model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = card_embedding_inputs(
            tokenizer, texts[start : start + batch_size], max_length, tokenizer_appends_eos
        )
        hidden = model(**batch).last_hidden_state
        emb = card_last_token_pool(hidden, batch["attention_mask"])
        if dim is not None:
            emb = emb[:, :dim]
        out.append(F.normalize(emb, p=2, dim=1))
    return torch.cat(out).numpy()


def card_embedding_ids(path, texts, *, max_length=8192, tokenizer_appends_eos=True):
    tokenizer = AutoTokenizer.from_pretrained(str(path), padding_side="left")
    batch = card_embedding_inputs(tokenizer, texts, max_length, tokenizer_appends_eos)
    return [
        [t for t, m in zip(row, mask) if m]
        for row, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist())
    ]


# --- reranker ---------------------------------------------------------------------------------
CARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def format_instruction(instruction, query, doc):
    if instruction is None:
        instruction = "Given a web search query, retrieve relevant passages that answer the query"
    return "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(
        instruction=instruction, query=query, doc=doc
    )


class CardReranker:
    """The Qwen3-Reranker model-card code: full logits at every position, read at position -1."""

    def __init__(self, path, max_length=8192):
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        self.token_false_id = self.tokenizer.convert_tokens_to_ids("no")
        self.token_true_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.max_length = max_length
        self.prefix_tokens = self.tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)

    def process_inputs(self, pairs):
        inputs = self.tokenizer(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ele + self.suffix_tokens
        return self.tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=self.max_length)

    def ids(self, query_doc_pairs, instruction=None):
        pairs = [format_instruction(instruction, q, d) for q, d in query_doc_pairs]
        inputs = self.process_inputs(pairs)
        return [
            [t for t, m in zip(row, mask) if m]
            for row, mask in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist())
        ]

    @torch.no_grad()
    def logits_and_scores(self, query_doc_pairs, instruction=None, batch_size=16):
        logits, scores = [], []
        for start in range(0, len(query_doc_pairs), batch_size):
            chunk = query_doc_pairs[start : start + batch_size]
            inputs = self.process_inputs([format_instruction(instruction, q, d) for q, d in chunk])
            batch_scores = self.model(**inputs).logits[:, -1, :]
            true_vector = batch_scores[:, self.token_true_id]
            false_vector = batch_scores[:, self.token_false_id]
            pair_logits = torch.stack([false_vector, true_vector], dim=1)
            logits.append(pair_logits)
            scores.append(torch.nn.functional.log_softmax(pair_logits, dim=1)[:, 1].exp())
        return torch.cat(logits).numpy(), torch.cat(scores).numpy()
