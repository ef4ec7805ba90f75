"""Experts: what a routable expert is, the registry that holds them, and the model backends.

Nothing here knows about HTTP or about routing policies; `server/` composes this package with
`routers/`.
"""
