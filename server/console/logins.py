"""Console sessions: the admin token is typed once, then a random session id stands in for it.

The cookie is HttpOnly (page scripts never see it) and SameSite=Strict, and the admin API accepts it only
together with the `X-Switchyard-Console` header, which a cross-site form or image cannot send and a
cross-site script cannot add without a CORS preflight that the server refuses. Sessions live in memory:
a restart signs everyone out, which is the safe direction.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict

from fastapi import Request

COOKIE = "switchyard_console"
HEADER = "x-switchyard-console"
SESSION_SECONDS = 8 * 3600
MAX_SESSIONS = 256


class ConsoleSessions:
    def __init__(self, lifetime_s: float = SESSION_SECONDS) -> None:
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lifetime = lifetime_s

    def create(self) -> str:
        session = secrets.token_urlsafe(32)
        self._expiry[session] = time.monotonic() + self._lifetime
        while len(self._expiry) > MAX_SESSIONS:
            self._expiry.popitem(last=False)  # the oldest sign-in goes first
        return session

    def end(self, session: str | None) -> None:
        if session:
            self._expiry.pop(session, None)

    def valid(self, session: str | None) -> bool:
        if not session:
            return False
        expiry = self._expiry.get(session)
        if expiry is None or expiry < time.monotonic():
            self._expiry.pop(session, None)
            return False
        return True

    def signed_in(self, request: Request) -> bool:
        """A page request with a live session cookie."""
        return self.valid(request.cookies.get(COOKIE))

    def admits(self, request: Request) -> bool:
        """An API call from the console's own scripts: live cookie *and* the console header."""
        return request.headers.get(HEADER) == "1" and self.signed_in(request)
