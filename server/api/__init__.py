"""Endpoint groups. Each module defines one FastAPI `APIRouter` named `api` (not "router": in this
project a router is a routing policy)."""
