"""Routing policies: (query embedding, index of expert vectors) -> decision. No HTTP, no model serving.

Policies are small classes registered by name (`routers.policies.create_router`). The query encoder lives
here too (`routers.encoder`) because it defines the vector space every policy scores in; retrievers will
reuse the same encoder class for their own embedding models.
"""
