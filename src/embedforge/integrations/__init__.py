"""Framework integrations, imported directly so that each framework stays an optional extra:

- ``embedforge.integrations.langchain``: ``EmbedforgeEmbeddings`` (LangChain ``Embeddings``) and
  ``EmbedforgeRerank`` (a document compressor);
- ``embedforge.integrations.llama_index``: ``EmbedforgeEmbedding`` (LlamaIndex ``BaseEmbedding``)
  and ``EmbedforgeRerank`` (a node postprocessor).

Each works in-process (an ``Embedder`` / ``Reranker`` object) or against an ``embedforge serve``
URL, with the same numbers either way.
"""
