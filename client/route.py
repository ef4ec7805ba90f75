"""`switchyard route QUERY`: where a running server would send a query, and why (nothing is generated)."""

from __future__ import annotations

import argparse
from typing import Any

from client.common import EXIT_OK, Connection, add_connection_arguments, emit, table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query")
    parser.add_argument("--top", type=int, default=None, help="show only the best N experts")
    add_connection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    connection = Connection(args, timeout=30)
    try:
        body = {"query": args.query, **({"top_n": args.top} if args.top else {})}
        emit(args, connection.call("POST", "/v1/route", json=body), _print)
    finally:
        connection.close()
    return EXIT_OK


def _print(body: dict[str, Any]) -> None:
    decision = body["decision"]
    print(f"-> {decision['expert']} ({decision['reason']})")
    table(["SCORE", "EXPERT"], [(f"{e['score']:.3f}", e["name"]) for e in body["ranking"]], right=(0,))
