"""Scale-out on Ray Serve: one routing ingress, many expert-serving replicas, one shared catalogue.

Imported only by `switchyard serve --ray` and `deploy/ray/` (the `ray` extra); the single-machine server
never imports Ray. See `app.py` for how the three parts fit together.
"""
