"""`switchyard experts list|show|add|replace|remove`: the admin API's expert operations from a shell."""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import zipfile
from pathlib import Path
from typing import Any

from client.common import (
    EXIT_OK,
    EXIT_REFUSED,
    CommandFailed,
    Connection,
    Progress,
    add_connection_arguments,
    emit,
    table,
)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    add_connection_arguments(actions.add_parser("list", help="every expert with kind, version, tier and state"))
    show = actions.add_parser("show", help="one expert in full")
    show.add_argument("name")
    add_connection_arguments(show)
    for verb in ("add", "replace"):
        spec = actions.add_parser(verb, help=f"{verb} an expert (adapter or retriever)")
        spec.add_argument("name")
        spec.add_argument("--kind", choices=["adapter", "retriever"], default="adapter")
        spec.add_argument("--description", default="")
        spec.add_argument("--examples", type=Path, help="text file: one example query per line")
        spec.add_argument("--capabilities", type=Path,
                          help="text file: one capability phrase per line (what the expert handles)")
        spec.add_argument("--adapter", help="adapter: directory on the server, under its adapter roots")
        spec.add_argument("--upload", type=Path, help="adapter: local directory or .zip/.tar.gz to upload")
        spec.add_argument("--documents", type=Path, help="retriever: local JSONL file of documents to upload")
        spec.add_argument("--documents-path", help="retriever: file or directory on the server")
        spec.add_argument("--generator", help="retriever: adapter expert that writes grounded answers")
        spec.add_argument("--no-wait", action="store_true", help="retriever: return while indexing runs")
        add_connection_arguments(spec)
    suggest = actions.add_parser("suggest", help="capability phrases suggested from an expert's examples")
    suggest.add_argument("name")
    suggest.add_argument("--count", type=int, default=15)
    add_connection_arguments(suggest)
    remove = actions.add_parser("remove", help="remove an expert (running requests finish first)")
    remove.add_argument("name")
    add_connection_arguments(remove)


def run(args: argparse.Namespace) -> int:
    connection = Connection(args)
    try:
        if args.action == "list":
            emit(args, connection.call("GET", "/admin/experts"), _print_list)
        elif args.action == "show":
            emit(args, connection.call("GET", f"/admin/experts/{args.name}"), _print_one)
        elif args.action == "suggest":
            emit(args, connection.call("GET", f"/admin/experts/{args.name}/suggested-capabilities",
                                       params={"count": args.count}),
                 lambda r: print("\n".join(r["suggestions"]) or "(no suggestions)"))
        elif args.action == "remove":
            connection.call("DELETE", f"/admin/experts/{args.name}")
            emit(args, {"name": args.name, "removed": True}, lambda _: print(f"removed {args.name}"))
        else:
            result = _publish(connection, args)
            emit(args, result, lambda r: print(f"{'replaced' if args.action == 'replace' else 'added'} "
                                               f"{r['name']}: version {r['version']}, {r['state']}"))
    finally:
        connection.close()
    return EXIT_OK


def _lines(path: Path | None) -> list[str]:
    if path is None:
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _publish(connection: Connection, args: argparse.Namespace) -> dict[str, Any]:
    if args.examples is None and args.capabilities is None:
        raise CommandFailed(EXIT_REFUSED, "an expert needs --examples or --capabilities (or both)")
    spec: dict[str, Any] = {"name": args.name, "kind": args.kind, "description": args.description,
                            "examples": _lines(args.examples), "capabilities": _lines(args.capabilities)}
    if args.kind == "adapter":
        if bool(args.adapter) == bool(args.upload):
            raise CommandFailed(EXIT_REFUSED, "an adapter expert needs exactly one of --adapter and --upload")
        spec["adapter_path"] = args.adapter or _upload_adapter(connection, args.name, args.upload)
    else:
        if args.documents:
            uploaded = connection.call("POST", f"/admin/documents/{args.name}",
                                       content=args.documents.read_bytes())
            spec["documents_path"] = uploaded["documents_path"]
        elif args.documents_path:
            spec["documents_path"] = args.documents_path
        if args.generator:
            spec["generator"] = args.generator
    method, path = ("PUT", f"/admin/experts/{args.name}") if args.action == "replace" else ("POST", "/admin/experts")
    result = connection.call(method, path, json=spec)
    if result.get("state") == "indexing" and result.get("job") and not args.no_wait:
        result = _wait_for_index(connection, args.name, result["job"], quiet=args.json)
    return result


def _upload_adapter(connection: Connection, name: str, source: Path) -> str:
    """Upload a local adapter (a directory is zipped here) to the server's staging area."""
    if source.is_dir():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for filename in ADAPTER_FILES:
                if (source / filename).is_file():
                    archive.write(source / filename, filename)
        data = buffer.getvalue()
    else:
        data = source.read_bytes()
    with contextlib.suppress(CommandFailed):
        connection.call("DELETE", f"/admin/adapters/{name}")  # an earlier attempt's staging copy
    return connection.call("POST", f"/admin/adapters/{name}", content=data)["adapter_path"]


def _wait_for_index(connection: Connection, name: str, job: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """Follow the indexing job with a progress bar; the expert once it is routable."""
    progress = Progress(job.get("chunks_total") or 1, f"indexing {name}", enabled=None if not quiet else False)
    while job["state"] not in ("done", "failed"):
        time.sleep(0.5)
        job = connection.call("GET", f"/admin/jobs/{job['id']}")
        progress.total = max(job.get("chunks_total") or 1, 1)
        progress.update(job.get("chunks_done", 0))
    progress.close()
    if job["state"] == "failed":
        raise CommandFailed(EXIT_REFUSED, f"indexing {name} failed: {job.get('error')}", job)
    return connection.call("GET", f"/admin/experts/{name}")


def _print_list(body: dict[str, Any]) -> None:
    rows = [(e["name"], e["kind"], e["version"], e.get("tier"), e["state"], len(e.get("examples", [])),
             e.get("active_requests", 0)) for e in body["data"]]
    table(["NAME", "KIND", "VERSION", "TIER", "STATE", "EXAMPLES", "ACTIVE"], rows, right=(2, 5, 6))
    print(f"\nregistry version {body['registry_version']}, {len(rows)} experts")


def _print_one(expert: dict[str, Any]) -> None:
    for key in ("name", "kind", "description", "version", "state", "tier", "adapter_path", "generator",
                "active_requests", "error"):
        if expert.get(key) not in (None, ""):
            print(f"{key:>16}: {expert[key]}")
    if expert.get("index"):
        index = expert["index"]
        print(f"{'index':>16}: {index['documents']} documents, {index['chunks']} chunks, encoder {index['encoder']}")
    print(f"{'capabilities':>16}: {', '.join(expert.get('capabilities', [])) or '-'}")
    print(f"{'examples':>16}: {len(expert.get('examples', []))}")
    for example in expert.get("examples", [])[:10]:
        print(f"{'':>18}- {example}")
