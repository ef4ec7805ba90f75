"""What every client command shares: the connection, exit codes, tables, JSON output, progress bars."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import httpx

EXIT_OK = 0
EXIT_REFUSED = 1  # the server answered with a 4xx (bad input, not found, conflict, unauthorised)
EXIT_USAGE = 2  # argparse's own code for bad arguments
EXIT_UNREACHABLE = 3  # no answer: wrong URL, server down, timeout
EXIT_SERVER_ERROR = 4  # the server answered with a 5xx
DEFAULT_URL = "http://127.0.0.1:8000"


class CommandFailed(Exception):
    """Ends a command with `exit_code`; `main` prints the message (or the JSON error) and exits."""

    def __init__(self, exit_code: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.exit_code, self.body = exit_code, body


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("SWITCHYARD_URL", DEFAULT_URL),
                        help="server URL (or SWITCHYARD_URL; default %(default)s)")
    parser.add_argument("--token", default=None, help="admin token (or SWITCHYARD_SECURITY__ADMIN_TOKEN, the "
                        "variable the server reads)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")


def auth_headers(args: argparse.Namespace) -> dict[str, str]:
    """The admin token of `--token`, else of the environment the server reads it from (the flat
    SWITCHYARD_ADMIN_TOKEN of the previous release too)."""
    token = args.token or os.environ.get("SWITCHYARD_SECURITY__ADMIN_TOKEN") or os.environ.get("SWITCHYARD_ADMIN_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


class Connection:
    """An HTTP client for one server; turns transport failures and error answers into `CommandFailed`."""

    def __init__(self, args: argparse.Namespace, timeout: float = 120.0) -> None:
        self.url = args.url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=auth_headers(args), timeout=timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CommandFailed(EXIT_UNREACHABLE, f"could not reach {self.url}: {exc}") from exc
        body = response.json() if response.content and "json" in response.headers.get("content-type", "") else None
        if response.status_code >= 400:
            message = body["error"]["message"] if isinstance(body, dict) and "error" in body else response.text
            code = EXIT_SERVER_ERROR if response.status_code >= 500 else EXIT_REFUSED
            raise CommandFailed(code, f"{response.status_code}: {message}", body)
        return body

    def close(self) -> None:
        self.http.close()


def emit(args: argparse.Namespace, data: Any, render: Callable[[Any], None]) -> None:
    """JSON on stdout with --json, else the command's human rendering."""
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        render(data)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> None:
    """A plain-text table; columns listed in `right` are right-aligned (numbers)."""
    cells = [[str(h) for h in headers]] + [["–" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths,
                                                                                                  strict=True)))
    print(line(cells[0]).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row).rstrip())


class Progress:
    """A progress bar on stderr when it is a terminal (silent otherwise, so logs and pipes stay clean)."""

    def __init__(self, total: int, label: str, enabled: bool | None = None) -> None:
        self.total, self.label, self.done = max(total, 1), label, 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def update(self, done: int) -> None:
        self.done = done
        if self.enabled:
            filled = int(30 * min(done, self.total) / self.total)
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}")
            sys.stderr.flush()

    def advance(self, step: int = 1) -> None:
        self.update(self.done + step)

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
