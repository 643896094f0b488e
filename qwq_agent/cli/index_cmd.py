"""`qwq-agent index DIR [--db PATH]`: build or refresh the offline document index for `search_docs`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `index` sub-command."""
    parser = subparsers.add_parser(
        "index",
        help="index a folder of documents (md, txt, html, pdf) for search_docs",
        description="Build or incrementally refresh a SQLite FTS5 index of the documents under DIR.",
    )
    parser.add_argument("dir", metavar="DIR", help="folder of documents")
    parser.add_argument("--db", metavar="PATH", help="index file (default: DIR/.qwq-docindex.sqlite3)")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.add_argument("--query", metavar="TEXT", help="after indexing, run one search and print the hits")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sqlite3

    from qwq_agent.cli.errors import CliError, sqlite_error
    from qwq_agent.cli.preflight import check_index_target
    from qwq_agent.docindex import DEFAULT_DB_NAME

    root = Path(args.dir)
    if not root.is_dir():
        raise CliError(f"{root} is not a folder", "pass the folder of documents to index")
    db = Path(args.db) if args.db else root / DEFAULT_DB_NAME
    check_index_target(db)
    try:
        _index(args, db, root)
    except sqlite3.Error as exc:  # named with the file, and told apart: a full disk is no broken index
        raise sqlite_error(exc, db) from exc
    return 0


def _index(args: argparse.Namespace, db: Path, root: Path) -> None:
    """Build or refresh the index `db` of `root` and print what changed (and `--query`'s hits)."""
    from qwq_agent.cli.errors import CliError
    from qwq_agent.docindex import DocIndex, QuerySyntaxError
    from qwq_agent.docindex.extract import EXTRACTOR_VERSION
    from qwq_agent.docindex.store import OtherRoot
    from qwq_agent.settings import get_settings
    from qwq_agent.tools.search_docs import format_hits

    wait_s = get_settings().index_wait_s
    try:
        index = DocIndex(db, root)
    except OtherRoot as exc:
        raise CliError(str(exc), "pass another --db, or delete that file to re-index") from None

    def waiting(pid: int | None) -> None:
        who = f" (pid {pid})" if pid is not None else ""
        print(
            f"another process{who} is updating {db}; waiting for it to end (at most {wait_s:g} s)",
            file=sys.stderr,
            flush=True,
        )

    with index:
        try:
            stats = index.update(on_wait=waiting, wait_s=wait_s)
        except OtherRoot as exc:  # the update it waited for indexed another folder into the file
            raise CliError(str(exc), "pass another --db, or delete that file to re-index") from None
        if args.json:
            print(json.dumps(stats.model_dump() | {"db": str(db), "files": index.file_count()}))
        elif stats.newer_extractor is not None:
            print(
                f"{db} was built by a newer qwq-agent (extractor {stats.newer_extractor}, this one has "
                f"{EXTRACTOR_VERSION}): left as it is, not updated; update it with that version"
            )
        else:
            # Files read again for a new extractor count as updated; the line says why they were.
            reread = f"; re-read {stats.reread} files: the index was built by an older extractor"
            print(
                f"added {stats.added}, updated {stats.updated}, removed {stats.removed}, "
                f"unchanged {stats.unchanged} in {stats.seconds:.2f} s "
                f"({index.file_count()} documents, {index.chunk_count()} sections) -> {db}"
                + (reread if stats.reread else "")
            )
            for path, why in stats.errors:
                print(f"  {path}: {why}", file=sys.stderr)  # each reason says what was left out
        if args.query:
            try:
                print(format_hits(args.query, index.search(args.query), index.file_count()))
            except QuerySyntaxError as exc:
                raise CliError(str(exc), "quote the words, or leave FTS operators out") from None
