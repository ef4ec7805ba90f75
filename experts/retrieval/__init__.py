"""Retriever experts: documents, chunking, the exact vector index and its persistent segments."""
