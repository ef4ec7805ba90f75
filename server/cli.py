"""The `switchyard` command line: `serve`, `prepare` and `route`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import httpx

from server import evaluation_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchyard", description="Expert-routing inference server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the HTTP server")
    serve.add_argument("--config", type=Path, help="YAML settings file (or SWITCHYARD_CONFIG)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--ray", action="store_true", help="scale out on Ray Serve (needs the `ray` extra)")
    serve.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    serve.add_argument("--expert-replicas", type=int, default=2, help="Ray mode: expert-serving replicas")

    prepare = sub.add_parser("prepare", help="convert and cache the base model without serving")
    prepare.add_argument("--config", type=Path)

    route = sub.add_parser("route", help="ask a running server where a query would go")
    route.add_argument("query")
    route.add_argument("--url", default="http://127.0.0.1:8000")

    evaluation = sub.add_parser("eval", help="routing accuracy on a labelled file (server or offline)")
    calibrate = sub.add_parser("calibrate", help="fit a running server's fallback rule on a labelled file")
    evaluation_cli.add_arguments(evaluation, calibrate)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise in a CLI
    if args.command == "serve":
        return _serve(args)
    if args.command == "prepare":
        return _prepare(args)
    if args.command == "eval":
        return evaluation_cli.run_eval(args)
    if args.command == "calibrate":
        return evaluation_cli.run_calibrate(args)
    return _route(args)


def _load_settings(args: argparse.Namespace, **overrides: object):  # noqa: ANN202
    import os

    from server.settings import Settings

    config = args.config or (Path(os.environ["SWITCHYARD_CONFIG"]) if os.environ.get("SWITCHYARD_CONFIG") else None)
    return Settings.load(config, **overrides)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app

    settings = _load_settings(args, host=args.host, port=args.port)
    if args.ray:
        from server.scaleout.app import run

        return run(args.config, settings.host, settings.port, args.expert_replicas, args.ray_address)
    app = create_app(settings)

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT: mark the app draining (so /ready says 503), then let uvicorn stop accepting
        connections and wait up to `drain_seconds` for running requests and streams to finish."""

        def handle_exit(self, sig: int, frame: object) -> None:
            app.state.draining = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                            timeout_graceful_shutdown=settings.drain_seconds)
    DrainingServer(config).run()
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from experts.models import resolve_base_model

    settings = _load_settings(args)
    print(resolve_base_model(settings.base_model, settings.model_cache_dir))
    return 0


def _route(args: argparse.Namespace) -> int:
    try:
        response = httpx.post(f"{args.url.rstrip('/')}/v1/route", json={"query": args.query}, timeout=30)
    except httpx.HTTPError as exc:
        print(f"could not reach {args.url}: {exc}", file=sys.stderr)
        return 2
    body = response.json()
    if response.status_code != 200:
        print(json.dumps(body, indent=2), file=sys.stderr)
        return 1
    decision = body["decision"]
    print(f"-> {decision['expert']} ({decision['reason']})")
    for entry in body["ranking"]:
        print(f"   {entry['score']:.3f}  {entry['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
