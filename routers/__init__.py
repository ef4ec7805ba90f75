"""Routing policies: (query embedding, index of expert vectors) -> decision. No HTTP, no model serving.

Policies are small classes registered by name (`routers.policies.create_router`). The query encoder that
defines the vector space they score in lives with the other models, in `experts.encoders`.
"""
