"""`Annotated` dependency aliases: handlers declare what they need, the app state provides it."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr

from server.errors import APIError
from server.settings.groups import SecuritySettings
from server.state import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.switchyard


State = Annotated[AppState, Depends(get_state)]


def _bearer(request: Request) -> bytes | None:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    return presented.strip().encode() if scheme.lower() == "bearer" else None


def _matches(presented: bytes | None, secrets: list[SecretStr]) -> bool:
    """Constant-time comparison against every configured secret (no early exit on the first match)."""
    if not presented:  # no header, or an empty bearer: never equal to a configured (non-blank) secret
        return False
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(presented, secret.get_secret_value().encode())
    return found


def require_admin(request: Request, state: State) -> None:
    """The admin token, or a signed-in console (its session cookie plus the console header)."""
    if not state.console.admits(request):
        check_admin(request, state.settings.security)


def check_admin(request: Request, settings: SecuritySettings) -> None:
    """Bearer-token check for admin endpoints, in constant time. No token configured: admin is off."""
    token = settings.admin_token
    if token is None:
        if settings.insecure_dev_admin:
            return
        raise APIError(
            403, "the admin API is disabled: set SWITCHYARD_SECURITY__ADMIN_TOKEN (or admin_token in the config)",
            "permission_error", "admin_disabled",
        )
    if not _matches(_bearer(request), [token]):
        raise APIError(401, "missing or invalid admin token", "authentication_error", "invalid_admin_token")


def require_api_key(request: Request, state: State) -> None:
    if not state.console.admits(request):
        check_api_key(request, state.settings.security)


def check_api_key(request: Request, settings: SecuritySettings) -> None:
    """Inference keys (`api_keys`), separate from the admin token: with none configured, inference is open."""
    keys = settings.api_keys
    if keys and not _matches(_bearer(request), keys):
        raise APIError(401, "missing or invalid API key", "authentication_error", "invalid_api_key")


AdminAccess = Depends(require_admin)
InferenceAccess = Depends(require_api_key)


ANONYMOUS = "anonymous"  # the one namespace of every caller when inference keys are off
CONSOLE = "console"  # the signed-in console (an admin, through the console's own scripts)


def caller_namespace(request: Request, state: AppState) -> str:
    """Whose request this is, for what a caller stores (sessions): a digest of the API key it presented
    (never the key itself), the console, or one anonymous namespace when `api_keys` are off. Inference
    keys are checked before any handler runs, so a presented key here is a valid one."""
    if state.console.admits(request):
        return CONSOLE
    presented = _bearer(request)
    if not state.settings.security.api_keys or not presented:
        return ANONYMOUS
    return "key-" + hashlib.sha256(presented).hexdigest()[:16]
