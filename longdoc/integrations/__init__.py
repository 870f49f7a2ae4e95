"""Retrievers for RAG frameworks, over a local index or a running ``longdoc serve``.

* ``longdoc.integrations.langchain.LongdocRetriever``: a LangChain ``BaseRetriever`` (``pip install
  'longdoc[langchain]'``) returning ``Document`` objects;
* ``longdoc.integrations.llamaindex.LongdocRetriever``: a LlamaIndex ``BaseRetriever`` (``pip install
  'longdoc[llamaindex]'``) returning ``NodeWithScore`` objects;
* ``longdoc.integrations.source``: what both share (``SearchSource``: one search, local or over HTTP, as the
  hit dicts of ``longdoc search --json``; ``SearchOptions``), importable without either framework.

Nothing here is imported by ``import longdoc``; each framework module imports its framework.
"""
