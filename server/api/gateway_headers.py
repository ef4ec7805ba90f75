"""Which gateway answered: `x-switchyard-gateway` on every response, and on admin responses the registry
version that gateway has (`x-switchyard-registry-version`).

With several gateways behind Ray Serve's proxies, an operator (and the tests) can tell which one served a
response and whether it has caught up with a write: a write's answer carries the version it committed,
a read's answer the version it read. A plain ASGI middleware, so streamed answers are not buffered.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.observability.fleet import gateway_id


class GatewayHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._gateway = gateway_id().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        admin = scope["path"].startswith("/admin")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-switchyard-gateway", self._gateway)]
                state = getattr(scope["app"].state, "switchyard", None) if admin else None
                if state is not None:
                    version = str(state.registry.snapshot.version).encode()
                    headers.append((b"x-switchyard-registry-version", version))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
