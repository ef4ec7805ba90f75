"""Retriever experts as the server runs them: search (`service`), building their indexes in the
background (`indexing`), `/v1/embeddings` (`embeddings`) and answers grounded on retrieved passages
(`grounding`). Indexes and documents themselves live in `experts/retrieval/`."""
