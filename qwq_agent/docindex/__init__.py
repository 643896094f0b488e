"""Offline full-text search over a folder of documents (Markdown, text, HTML, PDF) with SQLite FTS5.

`DocIndex(db, root).update()` builds or refreshes the index incrementally; `DocIndex.search()` ranks
sections with BM25 and returns hits that cite `path:line` (or `path#page=N` for PDFs).
"""

from qwq_agent.docindex.extract import SUFFIXES, ExtractError, Section, extract, kind_of
from qwq_agent.docindex.store import DEFAULT_DB_NAME, DocIndex, Hit, IndexStats, QuerySyntaxError
from qwq_agent.docindex.update_lock import IndexBusy

__all__ = [
    "DEFAULT_DB_NAME",
    "SUFFIXES",
    "DocIndex",
    "ExtractError",
    "Hit",
    "IndexBusy",
    "IndexStats",
    "QuerySyntaxError",
    "Section",
    "extract",
    "kind_of",
]
