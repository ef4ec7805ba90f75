"""The `switchyard` command line.

`serve` and `prepare` run here; the client commands (`experts`, `route`, `eval`, `calibrate`, `bench`)
talk to a running server and live in the `client` package, apart from the HTTP server's code. Exit
codes: 0 done, 1 the server refused (4xx), 2 bad arguments, 3 server unreachable, 4 server error (5xx).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from client import bench, eval_commands, experts, route
from client.common import CommandFailed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchyard", description="Expert-routing inference server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the HTTP server")
    serve.add_argument("--config", type=Path, help="YAML settings file (or SWITCHYARD_CONFIG)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--ray", action="store_true", help="scale out on Ray Serve (needs the `ray` extra)")
    serve.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one "
                       "(scale_out.ray_address)")
    serve.add_argument("--expert-replicas", type=int, help="Ray mode: expert-serving replicas "
                       "(scale_out.expert_replicas, default 2)")
    serve.add_argument("--gateway-replicas", type=int, help="Ray mode: gateways over the one registry store "
                       "(scale_out.gateway_replicas, default 1)")

    prepare = sub.add_parser("prepare", help="convert and cache the base model without serving")
    prepare.add_argument("--config", type=Path)

    config = sub.add_parser("config", help="settings without a server")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="print the effective settings (secrets redacted) or the problems")
    check.add_argument("--config", type=Path, help="YAML settings file (or SWITCHYARD_CONFIG)")
    config_sub.add_parser("reference", help="print the configuration reference (Markdown) of every setting")

    experts.add_arguments(sub.add_parser("experts", help="list, show, add, replace or remove experts"))
    route.add_arguments(sub.add_parser("route", help="ask a running server where a query would go"))
    evaluate = sub.add_parser("eval", help="routing accuracy on a labelled file (server or offline)")
    calibrate = sub.add_parser("calibrate", help="fit a running server's fallback rule on a labelled file")
    eval_commands.add_arguments(evaluate, calibrate)
    bench.add_arguments(sub.add_parser("bench", help="load-test a running server (routing or chat)"))

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise in a CLI
    commands = {"serve": _serve, "prepare": _prepare, "config": _config_check, "experts": experts.run,
                "route": route.run, "eval": eval_commands.run_eval, "calibrate": eval_commands.run_calibrate,
                "bench": bench.run}
    try:
        return commands[args.command](args)
    except CommandFailed as failure:
        if getattr(args, "json", False):
            print(json.dumps(failure.body if failure.body is not None else {"error": {"message": str(failure)}}))
        print(f"error: {failure}", file=sys.stderr)
        return failure.exit_code


def _config_file(args: argparse.Namespace) -> Path | None:
    from server.settings import config_file_from

    return config_file_from(args.config)


def _load_settings(args: argparse.Namespace, **overrides: object):  # noqa: ANN202
    from pydantic import ValidationError

    from server.settings import Settings

    config = _config_file(args)
    try:
        return Settings.load(config, **overrides)
    except ValidationError as exc:  # one line per bad setting, not a traceback
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise CommandFailed(2, f"invalid settings, the server will not start: {problems}") from exc
    except (OSError, ValueError) as exc:  # an unreadable or malformed config file
        raise CommandFailed(2, f"invalid settings, the server will not start: {exc}") from exc


def _serve(args: argparse.Namespace) -> int:
    settings = _load_settings(args, server={"host": args.host, "port": args.port},
                              scale_out={"expert_replicas": args.expert_replicas, "ray_address": args.ray_address,
                                         "gateway_replicas": args.gateway_replicas})
    if args.ray:
        from server.scaleout.app import run

        return run(settings)
    from server.serving import serve

    serve(settings)
    return 0


def _config_check(args: argparse.Namespace) -> int:
    """The settings a server started the same way would run with, as YAML (secrets shown as stars), or the
    problems and exit code 2, as `serve` reports them, without loading any model; or the reference."""
    import yaml

    if args.config_command == "reference":
        from server.settings.reference import markdown

        print(markdown(), end="")
        return 0
    settings = _load_settings(args)
    print(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=True), end="")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from experts.encoders.pool import shared_encoder
    from experts.models import resolve_base_model

    settings = _load_settings(args)
    print(resolve_base_model(settings.backend.base_model, settings.server.model_cache_dir))
    # exports the ONNX encoder when that runtime is on
    shared_encoder(settings.encoder_config(), settings.backend.resolved_device())
    return 0


if __name__ == "__main__":
    sys.exit(main())
