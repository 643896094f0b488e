"""The `search_docs` tool: BM25 search over the user's document index, hits cited as `path:line`."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from qwq_agent.docindex import DocIndex, Hit, QuerySyntaxError
from qwq_agent.protocols import ToolContext, ToolOutput
from qwq_agent.tools.base import ModelTool


class SearchDocsArgs(BaseModel):
    """Arguments of `search_docs`."""

    model_config = ConfigDict(extra="forbid")  # a misspelt argument is an error, not silently ignored

    query: str = Field(min_length=1, max_length=500, description="Words to look for in the documents.")
    limit: int = Field(default=8, ge=1, le=50, description="How many sections to return.")
    path_glob: str | None = Field(
        default=None, description="Only documents whose path matches this glob, e.g. 'papers/*.pdf'."
    )
    syntax: Literal["plain", "fts"] = Field(
        default="plain",
        description="'plain': the words as typed. 'fts': SQLite FTS5 syntax (AND/OR/NOT, \"phrase\", NEAR, prefix*).",
    )


class SearchDocs(ModelTool[SearchDocsArgs]):
    """Search an index built by `qwq-agent index DIR` and return ranked sections with citations."""

    name = "search_docs"
    description = (
        "Full-text search (BM25) over the user's local documents (Markdown, text, HTML, PDF). "
        "Each hit gives `path:line` (or `path#page=N`), its section heading and a snippet with "
        "**matches** marked; cite hits by that location."
    )
    Args = SearchDocsArgs

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = Path(db_path)

    async def run(self, args: SearchDocsArgs, context: ToolContext) -> ToolOutput:
        try:
            # SQLite is blocking; a fresh connection in a worker thread keeps the event loop free.
            hits, files, outdated = await asyncio.to_thread(self._search, args)
        except FileNotFoundError as exc:
            return ToolOutput(text=f"search_docs: {exc}", is_error=True)
        except QuerySyntaxError as exc:
            return ToolOutput(text=f"search_docs: {exc}", is_error=True)
        except sqlite3.Error as exc:  # damaged, replaced by another program's file, locked
            return ToolOutput(
                text=f"search_docs: the index at {self.db_path} is unreadable: {exc}. If it is damaged or "
                "was replaced, rebuild it with `qwq-agent index DIR`.",
                is_error=True,
            )
        text = format_hits(args.query, hits, files)
        metadata: dict[str, object] = {"hits": [h.model_dump() | {"location": h.location} for h in hits]}
        if outdated:
            # Still searched (a query only reads), but documents a fresh index finds may be missing;
            # only `qwq-agent index` can read them again, so the model is told to pass that on.
            text += f"\n\n{OUTDATED_NOTE}"
            metadata["index_outdated"] = True
        return ToolOutput(text=text, metadata=metadata)

    def _search(self, args: SearchDocsArgs) -> tuple[list[Hit], int, bool]:
        with DocIndex.open_existing(self.db_path) as index:
            hits = index.search(args.query, limit=args.limit, syntax=args.syntax, path_glob=args.path_glob)
            return hits, index.file_count(), index.outdated


OUTDATED_NOTE = (
    "(Note: this document index was built by an older qwq-agent and may miss documents; the user can "
    "refresh it with `qwq-agent index DIR`.)"
)


def format_hits(query: str, hits: list[Hit], files: int) -> str:
    """Numbered hits, each led by its citation."""
    if not hits:
        return f"No document sections match {query!r} (searched {files} documents). Try fewer or other words."
    lines = [f"{len(hits)} sections match {query!r} (best first, {files} documents indexed):"]
    for i, hit in enumerate(hits, 1):
        heading = f" — {hit.heading}" if hit.heading else ""
        lines.append(f"\n[{i}] {hit.location}{heading}\n    {hit.snippet}")
    return "\n".join(lines)
