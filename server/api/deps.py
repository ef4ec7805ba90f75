"""`Annotated` dependency aliases: handlers declare what they need, the app state provides it."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from server.errors import APIError
from server.state import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.switchyard


State = Annotated[AppState, Depends(get_state)]


def require_admin(request: Request, state: State) -> None:
    """Bearer-token check for admin endpoints, in constant time. No token configured: admin is off."""
    token = state.settings.admin_token
    if token is None:
        if state.settings.insecure_dev_admin:
            return
        raise APIError(
            403, "the admin API is disabled: set SWITCHYARD_ADMIN_TOKEN (or admin_token in the config)",
            "permission_error", "admin_disabled",
        )
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), token.get_secret_value().encode()
    ):
        raise APIError(401, "missing or invalid admin token", "authentication_error", "invalid_admin_token")


AdminAccess = Depends(require_admin)
