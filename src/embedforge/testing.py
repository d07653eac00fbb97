"""Build small random Qwen3 checkpoints laid out as the Hub ships them.

Used by the test-suite and the benchmarks: no weights can be downloaded here, so both build a
checkpoint in a chosen shape, save it with ``save_pretrained`` (safetensors) beside the real Qwen3
tokenizer, and load it back through the real loading path.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .loading import write_sentence_transformers
from .prompts import DEFAULT_QUERY_INSTRUCTION, query_prompt

# The two added tokens the tokenizer's post-processor may append (newer Hub revisions of
# Qwen3-Embedding append <|endoftext|> themselves; older ones and the reranker do not).
_EOS_TEMPLATE = {
    "type": "TemplateProcessing",
    "single": [
        {"Sequence": {"id": "A", "type_id": 0}},
        {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
    ],
    "pair": [
        {"Sequence": {"id": "A", "type_id": 0}},
        {"Sequence": {"id": "B", "type_id": 1}},
        {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
    ],
    "special_tokens": {
        "<|endoftext|>": {"id": "<|endoftext|>", "ids": [151643], "tokens": ["<|endoftext|>"]}
    },
}

QWEN3_EMBEDDING_PROMPTS = {"query": query_prompt(DEFAULT_QUERY_INSTRUCTION), "document": ""}


@dataclass(frozen=True)
class Qwen3Shape:
    """Shape of a Qwen3 decoder. The default is a tiny test shape; ``QWEN3_0_6B`` is the real one."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    vocab_size: int = 151669
    tie_word_embeddings: bool = True

    def describe(self) -> str:
        return (
            f"hidden={self.hidden_size} layers={self.num_hidden_layers} heads={self.num_attention_heads}/"
            f"{self.num_key_value_heads} head_dim={self.head_dim} intermediate={self.intermediate_size} "
            f"vocab={self.vocab_size}"
        )


QWEN3_0_6B = Qwen3Shape(1024, 28, 16, 8, 128, 3072, 151669, True)


def write_tokenizer(src: str | Path, dst: str | Path, *, append_eos: bool) -> None:
    """Copy the Qwen3 tokenizer files into ``dst``; with ``append_eos`` add the post-processor
    that appends ``<|endoftext|>`` (the newer Qwen3-Embedding tokenizer flavour)."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, dst / name)
    if append_eos:
        tok = json.loads((dst / "tokenizer.json").read_text(encoding="utf-8"))
        tok["post_processor"] = {"type": "Sequence", "processors": [tok["post_processor"], _EOS_TEMPLATE]}
        (dst / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")


def make_random_qwen3(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    *,
    shape: Qwen3Shape = Qwen3Shape(),
    seed: int = 0,
    append_eos: bool = False,
    sentence_transformers: bool = False,
    dtype: str = "float32",
) -> Path:
    """Save a randomly initialised ``Qwen3ForCausalLM`` (safetensors) with the Qwen3 tokenizer.

    ``append_eos`` picks the tokenizer flavour; ``sentence_transformers`` adds the embedding
    checkpoint's sentence-transformers files. Returns ``out_dir``.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # rope_theta: a typed argument before transformers 5, read into rope_parameters by 5.x
    config = Qwen3Config(  # type: ignore[call-arg]
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=shape.tie_word_embeddings,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
    )
    config.architectures = ["Qwen3ForCausalLM"]
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    # Random init gives near-identical hidden states for all inputs; widen the embeddings so that
    # different texts produce clearly different outputs in tests.
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    write_tokenizer(tokenizer_dir, out, append_eos=append_eos)
    if sentence_transformers:
        write_sentence_transformers(
            out,
            pooling="lasttoken",
            normalize=True,
            prompts=QWEN3_EMBEDDING_PROMPTS,
            max_seq_length=8192,
            hidden=shape.hidden_size,
        )
    return out
