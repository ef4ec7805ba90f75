"""`python -m tests.support.fake_server --config FILE --port N [--token-delay S]`: the real app served as
`switchyard serve` serves it (uvicorn, the header deadline, the SIGTERM drain), with the deterministic
`FakeBackend` in place of the model. For tests of process behaviour (restarts, SIGKILL, SIGTERM, two
processes) that no model output decides: it starts in seconds, not in the half-minute a model takes."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from server.serving import serve
from server.settings import Settings
from tests.support.fake_backend import FakeBackend


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per generated token")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.load(args.config, server={"port": args.port})

    async def fake_backend(_: Settings) -> FakeBackend:
        return FakeBackend(settings.backend.max_context_tokens, delay=args.token_delay)

    serve(settings, fake_backend)


if __name__ == "__main__":
    main()
