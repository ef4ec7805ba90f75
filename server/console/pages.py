"""The console's pages: sign-in, sign-out and the single-page console behind the session cookie."""

from __future__ import annotations

import hmac
import html
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from server.api.deps import State
from server.console.logins import COOKIE, SESSION_SECONDS

STATIC = Path(__file__).parent / "static"
# Scripts and styles from this server only; no inline script, no framing by other sites.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_LOGIN_BYTES = 4096

api = APIRouter(prefix="/console", include_in_schema=False)


@api.get("")
async def console(request: Request, state: State) -> Response:
    if not state.console.signed_in(request):
        return RedirectResponse("/console/login", status_code=303)
    return FileResponse(STATIC / "console.html", headers=SECURITY_HEADERS)


@api.get("/login")
async def login_page(state: State) -> HTMLResponse:
    return _login_page(None if state.settings.security.admin_token else _DISABLED)


@api.post("/login")
async def login(request: Request, state: State) -> Response:
    """Exchange the admin token for a session cookie (constant-time comparison, as for the API)."""
    token = state.settings.security.admin_token
    if token is None:
        return _login_page(_DISABLED, status=403)
    body = (await request.body())[:MAX_LOGIN_BYTES].decode("utf-8", errors="replace")
    presented = (parse_qs(body).get("token") or [""])[0].strip().encode()
    if not hmac.compare_digest(presented, token.get_secret_value().encode()):
        return _login_page("That is not the admin token.", status=401)
    response = RedirectResponse("/console#experts", status_code=303)
    response.set_cookie(COOKIE, state.console.create(), max_age=SESSION_SECONDS, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


@api.post("/logout")
async def logout(request: Request, state: State) -> Response:
    state.console.end(request.cookies.get(COOKIE))
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


_DISABLED = "The admin API is disabled on this server: start it with SWITCHYARD_SECURITY__ADMIN_TOKEN set."


def _login_page(error: str | None, status: int = 200) -> HTMLResponse:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    page = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Switchyard console</title><link rel="stylesheet" href="/console/static/console.css"></head>
<body class="login">
<main>
  <h1>Switchyard console</h1>
  {message}
  <form method="post" action="/console/login">
    <label for="token">Admin token</label>
    <input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
    <button type="submit">Sign in</button>
  </form>
  <p class="hint">The token the server was started with (<code>SWITCHYARD_SECURITY__ADMIN_TOKEN</code>).</p>
</main>
</body></html>"""
    return HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)
