"""Running the app under uvicorn, as `switchyard serve` does: the request-header deadline, and a graceful
drain on SIGTERM (`/ready` turns 503 while running streams get `server.drain_seconds` to finish)."""

from __future__ import annotations

import uvicorn

from server.api.limits import header_deadline_protocol
from server.app import BackendFactory, create_app, local_backend
from server.settings import Settings


def serve(settings: Settings, backend_factory: BackendFactory = local_backend) -> None:
    """Serve until SIGTERM or SIGINT."""
    app = create_app(settings, backend_factory)

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT: mark the app draining (so /ready says 503), then let uvicorn stop accepting
        connections and wait up to `drain_seconds` for running requests and streams to finish."""

        def handle_exit(self, sig: int, frame: object) -> None:
            app.state.draining = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=settings.server.host, port=settings.server.port, log_level="info",
                            timeout_graceful_shutdown=settings.server.drain_seconds,
                            http=header_deadline_protocol(settings.limits.header_timeout_seconds))
    DrainingServer(config).run()
