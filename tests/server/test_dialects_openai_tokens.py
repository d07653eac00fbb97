"""Token-id inputs on the OpenAI route: refused unless the request says they are this model's own
ids, so LangChain's default OpenAIEmbeddings (which sends OpenAI tiktoken ids) fails with an error
that says what to do, instead of getting vectors of the wrong tokens."""

from __future__ import annotations

import langchain_openai.embeddings.base as lc_base
import numpy as np
import openai
import pytest
import tiktoken
from langchain_openai import OpenAIEmbeddings

EMBEDDER_ID = "tiny-embedder"
TEXTS = ["What is the capital of China?", "Explain gravity"]


@pytest.fixture
def offline_tiktoken(monkeypatch):
    """A real tiktoken encoding (byte-level) standing in for OpenAI's, whose BPE file is downloaded
    at run time (no network here); LangChain's default path then tokenizes as it does with OpenAI's."""
    encoding = tiktoken.Encoding(
        name="bytes-test",
        pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={},
    )
    monkeypatch.setattr(lc_base.tiktoken, "encoding_for_model", lambda name: encoding)
    monkeypatch.setattr(lc_base.tiktoken, "get_encoding", lambda name: encoding)
    return encoding


def test_langchain_default_path_fails_clearly(server, offline_tiktoken):
    client = OpenAIEmbeddings(model=EMBEDDER_ID, base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.embed_documents(TEXTS)  # sends tiktoken ids, as with OpenAI's own encoding
    message = err.value.body["message"]
    assert "check_embedding_ctx_length=False" in message and "input_token_ids" in message
    assert err.value.body["code"] == "invalid_input" and err.value.body["param"] == "input"


def test_langchain_text_path_works(server, embedder):
    client = OpenAIEmbeddings(
        model=EMBEDDER_ID, base_url=server.url + "/v1", api_key="unused", check_embedding_ctx_length=False
    )
    assert np.array_equal(np.array(client.embed_documents(TEXTS), np.float32), embedder.encode(TEXTS))


def test_model_token_ids_with_the_flag(server, embedder):
    ids = [embedder.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    res = client.embeddings.create(model=EMBEDDER_ID, input=ids, extra_body={"input_token_ids": True})
    assert np.array_equal(np.array([d.embedding for d in res.data], np.float32), embedder.encode(TEXTS))
    with pytest.raises(openai.BadRequestError, match="input_token_ids"):
        client.embeddings.create(model=EMBEDDER_ID, input=ids)
