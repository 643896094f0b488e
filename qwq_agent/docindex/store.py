"""The document index: SQLite FTS5 over document sections, BM25-ranked, updated incrementally."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from qwq_agent.docindex.extract import (
    EXTRACTOR_VERSION,
    ExtractError,
    Section,
    extract_document,
    kind_of,
)
from qwq_agent.docindex.query import plain_to_fts, query_phrases, query_words
from qwq_agent.docindex.update_lock import UPDATE_WAIT_S, update_lock

SCHEMA_VERSION = "1"
DEFAULT_DB_NAME = ".qwq-docindex.sqlite3"
MAX_FILE_BYTES = 50 * 1024 * 1024
# Stored for a file whose extraction the deadline cut (`Extracted.timed_out`) in place of its mtime and
# hash: no file on disk has them, so the next `update` reads it again; its partial text stays searchable.
_RETRY_MTIME_NS = -1
_RETRY_SHA256 = ""
_SKIP_DIRS = {"node_modules", "__pycache__", "venv", ".venv", "site-packages"}
# The full-text table's columns and tokenizer: the index's and the syntax probe's (`_FTS_PROBE`) alike.
_FTS_COLUMNS = "heading, body, tokenize = 'porter unicode61 remove_diacritics 2'"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT UNIQUE NOT NULL,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    error TEXT
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    line INTEGER NOT NULL,
    page INTEGER,
    linemap TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks(file_id);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5({_FTS_COLUMNS});
"""
# An empty table like `fts`, to tell a query FTS5 cannot parse from an index that cannot be read.
_FTS_PROBE = f"CREATE VIRTUAL TABLE fts USING fts5({_FTS_COLUMNS})"


def connect_read_only(db_path: str | os.PathLike[str]) -> sqlite3.Connection:
    """`db_path` opened for reading only: nothing is created, changed or left next to it.

    `mode=ro` and nothing else, so a file that is no index (or no longer one) is reported, never turned
    into an empty one. An index left in WAL mode (built before `update` switched it back) cannot be
    opened so on read-only storage (a `:ro` mount, a read-only image layer): SQLite needs to create
    its -shm file. Without a -wal holding anything, the file alone is the whole index, and it is read
    as `immutable`.
    """
    path = Path(db_path).resolve()
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size:
            raise  # committed changes may be in it: the file alone is not the index
    return sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)


class QuerySyntaxError(ValueError):
    """An FTS5 query the engine could not parse; the message says how to fix it."""


class OtherRoot(ValueError):
    """The index file holds the documents of another folder than the one it was asked to index."""


class IndexStats(BaseModel):
    """What one `update` did."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    chunks: int = 0  # sections written by this run
    # files read again, though unchanged on disk, because another extractor version built the index
    reread: int = 0
    seconds: float = 0.0
    # (path, why) of files skipped, unreadable, or indexed only in part (a PDF's text cut at its cap)
    errors: list[tuple[str, str]] = Field(default_factory=list)
    # set (to its version) when a newer extractor built the index: the update left it as it was
    newer_extractor: str | None = None


class Hit(BaseModel):
    """One ranked search result, with where to cite it."""

    path: str
    line: int
    page: int | None = None
    heading: str = ""
    snippet: str
    score: float  # bm25: lower is better

    @property
    def location(self) -> str:
        """`path:line`, or `path#page=N` for a PDF page."""
        return f"{self.path}#page={self.page}" if self.page else f"{self.path}:{self.line}"


class DocIndex:
    """An FTS5 index of the documents under `root`, stored in the SQLite file `db_path`.

    Paths are stored relative to `root` with forward slashes, so hits cite them as the user sees them.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        root: str | os.PathLike[str] | None = None,
        *,
        read_only: bool = False,
    ) -> None:
        self.db_path = Path(db_path)
        if read_only:
            if root is not None:
                raise ValueError("a read-only index cannot be given a root to index")
            # A query sets no journal mode and creates no table (`connect_read_only`).
            self.conn = connect_read_only(self.db_path)
            try:
                stored_root = self._meta("root")
            except BaseException:
                self.conn.close()
                raise
            self.root = Path(stored_root) if stored_root else None
            return
        self.conn = sqlite3.connect(self.db_path)
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.executescript(_SCHEMA)
        stored_root = self._meta("root")
        if root is not None:
            stored_root = str(Path(root).resolve())
            self._claim_root(stored_root)
        self.root = Path(stored_root) if stored_root else None

    def _claim_root(self, root: str) -> None:
        """Record `root` (and the schema) as this index's, writing only what differs; `OtherRoot` when
        the index holds another folder's files.

        Opening an index that already says so writes nothing: a write waits on SQLite's lock, which an
        update in progress holds for a whole batch, and fails after the busy timeout; it would fail
        before `update` reaches the update lock, where a second updater waits its turn. `update` claims
        the root again under that lock, where no other update can have claimed it meanwhile.
        """
        stored = self._meta("root")
        if stored and stored != root and self.file_count():
            raise OtherRoot(f"{self.db_path} indexes {stored}, not {root}; use another --db")
        if stored != root or self._meta("schema") != SCHEMA_VERSION:
            self._set_meta("root", root)
            self._set_meta("schema", SCHEMA_VERSION)
            self.conn.commit()

    @classmethod
    def open_existing(cls, db_path: str | os.PathLike[str]) -> DocIndex:
        """Open an index that must already exist, read-only (for querying).

        Raises FileNotFoundError when there is none, `sqlite3.Error` when the file cannot be read as one.
        """
        if not Path(db_path).is_file():
            raise FileNotFoundError(f"no document index at {db_path}; build it with `qwq-agent index DIR`")
        return cls(db_path, read_only=True)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> DocIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def outdated(self) -> bool:
        """Whether the stored sections were extracted by another version of the extractor than this
        one (`EXTRACTOR_VERSION`): they may miss documents a fresh index finds, until an `update` reads
        every file again. An index with no files is never outdated."""
        return _version(self._meta("extractor")) < int(EXTRACTOR_VERSION) and self.file_count() > 0

    @property
    def newer(self) -> bool:
        """Whether a newer version of the extractor built the index: `update` leaves it as it is."""
        return _version(self._meta("extractor")) > int(EXTRACTOR_VERSION)

    def file_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM files").fetchone()[0])

    def chunk_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0])

    # -- building ---------------------------------------------------------------------------------

    def update(
        self,
        progress: Callable[[str], None] | None = None,
        batch: int = 500,
        *,
        wait_s: float = UPDATE_WAIT_S,
        on_wait: Callable[[int | None], None] | None = None,
    ) -> IndexStats:
        """Bring the index in line with the files under `root`.

        A file whose mtime and size are unchanged is not read, unless another version of the extractor
        built the index (`outdated`): then every file is read and extracted again (`IndexStats.reread`),
        and the version stored only once every file kept was. An index a newer extractor built is left
        as it is, nothing added or changed (`IndexStats.newer_extractor`).
        One whose stat changed is hashed and re-extracted only if its content changed. A PDF whose
        extraction the deadline cut is read again on every update until it is read whole (or cut at its
        cap, which cuts it the same each time).
        Files gone from disk are removed, and so are the sections of a file now skipped (too large,
        unreadable); a folder that cannot be listed keeps what was indexed under it. `IndexStats.errors`
        lists the files and folders skipped, unreadable or indexed only in part.

        While it runs the index is in WAL mode (searches go on meanwhile); it ends in rollback-journal
        mode, a single file that can be read where nothing can be written (a read-only mount).

        One update runs at a time per index file (`update_lock`): while another process updates it,
        `on_wait(its pid or None)` is called once and this waits at most `wait_s` seconds for it, then
        raises `IndexBusy`. Run alongside, the second read the index before the first's batches were
        committed and then inserted the same files again. `OtherRoot` when the update waited for was
        another folder's, which claimed the file meanwhile.
        """
        if self.root is None:
            raise ValueError("this index has no root directory; open it with DocIndex(db, root)")
        with update_lock(self.db_path, wait_s, on_wait):
            self._claim_root(str(self.root))
            self.conn.execute("PRAGMA journal_mode = WAL")
            try:
                return self._update(progress, batch)
            finally:
                with contextlib.suppress(sqlite3.OperationalError):  # a reader still has it open: WAL stays
                    self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    self.conn.execute("PRAGMA journal_mode = DELETE")

    def _update(self, progress: Callable[[str], None] | None, batch: int) -> IndexStats:
        assert self.root is not None
        started = time.perf_counter()
        stats = IndexStats()
        if self.newer:
            # Re-read here, its files would get this (older) extraction; stamped with this version, the
            # newer one would read them all again on its run, and so on back and forth for ever. Files
            # added or changed would be stored as this version extracts them under the newer version's
            # stamp, for good. So nothing is touched: the newer qwq-agent updates its own index.
            stats.newer_extractor = self._meta("extractor")
            return stats
        known = {
            path: (fid, mtime, size, sha)
            for fid, path, mtime, size, sha in self.conn.execute(
                "SELECT id, path, mtime_ns, size, sha256 FROM files"
            )
        }
        # Built by another extractor: what it stored is not what this one makes of the same bytes, so
        # every file is read and extracted again, whatever its stat and hash (as `_RETRY_MTIME_NS` does
        # for one file). The version is stored once the whole update went through and read every file
        # it keeps: an old row kept unread (under a folder that could not be listed, a file that vanished
        # mid-walk) would otherwise be taken for this version's, and never read again.
        reread = _version(self._meta("extractor")) < int(EXTRACTOR_VERSION)
        kept_unread = False
        seen: set[str] = set()
        unlisted: list[str] = []  # folders that could not be listed: what they held is kept
        pending = 0
        with self.conn:
            for rel, dirfd, name, kind in self._walk(stats.errors, unlisted):
                seen.add(rel)
                row = known.get(rel)
                if row and reread:
                    stats.reread += 1
                unchanged = (row[1], row[2]) if row and not reread else None
                try:
                    doc = _read_document(dirfd, name, unchanged=unchanged)
                except _Skipped as exc:
                    skip = str(exc)
                    if row:
                        # Its old sections no longer match the file: they would be found and cited
                        # at lines that hold other text now. Forgotten, it is tried again next time.
                        self._forget(row[0])
                        skip += "; its old sections were removed from the index"
                    stats.errors.append((rel, skip))
                    continue
                if doc is None:
                    kept_unread = kept_unread or (reread and row is not None)
                    continue  # vanished while walking; handled as removed next time
                st, data = doc
                if data is None:
                    stats.unchanged += 1
                    continue
                sha = hashlib.sha256(data).hexdigest()
                if row and row[3] == sha and not reread:
                    self.conn.execute(
                        "UPDATE files SET mtime_ns = ?, size = ? WHERE id = ?",
                        (st.st_mtime_ns, st.st_size, row[0]),
                    )
                    stats.unchanged += 1
                    continue
                title, error, retry = "", None, False
                sections: list[Section] = []
                try:
                    done = extract_document(data, kind)
                    title, sections, error, retry = done.title, done.sections, done.note, done.timed_out
                except ExtractError as exc:
                    error = str(exc)
                if error:
                    stats.errors.append((rel, error))
                mtime_ns, stored_sha = (_RETRY_MTIME_NS, _RETRY_SHA256) if retry else (st.st_mtime_ns, sha)
                if row:
                    self._delete_chunks(row[0])
                    self.conn.execute(
                        "UPDATE files SET mtime_ns=?, size=?, sha256=?, kind=?, title=?, error=? WHERE id=?",
                        (mtime_ns, st.st_size, stored_sha, kind, title, error, row[0]),
                    )
                    file_id = row[0]
                    stats.updated += 1
                else:
                    cur = self.conn.execute(
                        "INSERT INTO files (path, mtime_ns, size, sha256, kind, title, error) VALUES (?,?,?,?,?,?,?)",
                        (rel, mtime_ns, st.st_size, stored_sha, kind, title, error),
                    )
                    file_id = int(cur.lastrowid or 0)
                    stats.added += 1
                self._insert_sections(file_id, sections)
                stats.chunks += len(sections)
                if progress:
                    progress(rel)
                pending += 1
                if pending >= batch:
                    self.conn.commit()
                    pending = 0
            for rel in known.keys() - seen:
                if any(rel.startswith(folder) for folder in unlisted):
                    kept_unread = kept_unread or reread
                    continue
                self._forget(known[rel][0])
                stats.removed += 1
            if not kept_unread:
                self._set_meta("extractor", EXTRACTOR_VERSION)
        stats.seconds = time.perf_counter() - started
        return stats

    def _walk(
        self, errors: list[tuple[str, str]], unlisted: list[str]
    ) -> Iterator[tuple[str, int, str, str]]:
        """(path relative to the root, fd of its folder, file name, kind) of each document file.

        The folder's fd is valid until the next item is asked for; files are opened relative to it
        (`_read_document`). Nothing here is looked up by path again: a folder swapped for a link
        after it was listed is neither walked into (fwalk checks each folder it opens against what
        it listed) nor read through (its files are opened in the folder that was listed).

        Names that are not UTF-8 (SQLite stores text as UTF-8) and folders that cannot be listed are
        added to `errors`; the latter also to `unlisted`, as the prefix of the paths they hold.
        """
        assert self.root is not None
        db = self.db_path.resolve()

        def unlistable(exc: OSError) -> None:
            # A folder that could not be opened after the check below (it changed meanwhile): fwalk
            # names it relative to its parent only, so nothing is removed this time.
            unlisted.append("")
            errors.append((_shown(str(exc.filename)), f"folder cannot be read ({exc.strerror or exc})"))

        for dirpath, dirnames, filenames, dirfd in os.fwalk(self.root, onerror=unlistable):
            here = Path(dirpath).relative_to(self.root).as_posix()
            prefix = "" if here == "." else f"{here}/"
            # Hidden and dependency folders are noise; fwalk does not enter links to folders.
            kept = []
            for d in sorted(dirnames):
                if d.startswith(".") or d in _SKIP_DIRS:
                    continue
                if not _utf8(d):
                    errors.append((_shown(prefix + d), "folder name is not UTF-8, skipped"))
                    continue
                why = _unreadable_folder(dirfd, d)
                if why is not None:
                    # fwalk's own `onerror` drops such a folder without a word, and its documents
                    # then read as removed: it is reported, and what it held stays indexed.
                    unlisted.append(f"{prefix}{d}/")
                    errors.append(
                        (prefix + d, f"folder cannot be read ({why}); what was indexed under it is kept")
                    )
                    continue
                kept.append(d)
            dirnames[:] = kept
            for name in sorted(filenames):
                kind = kind_of(name)
                if kind is None or name.startswith("."):
                    continue
                if not _utf8(name):
                    # SQLite stores text as UTF-8: its INSERT failed and took the whole update with it
                    errors.append((_shown(prefix + name), "file name is not UTF-8, skipped"))
                    continue
                full = Path(dirpath, name)
                try:
                    # A link could lead outside the root: left out, as before. One swapped in after
                    # this check is refused by O_NOFOLLOW when opened.
                    if stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode):
                        continue
                except FileNotFoundError:
                    continue
                if full != db:
                    yield full.relative_to(self.root).as_posix(), dirfd, name, kind

    def _forget(self, file_id: int) -> None:
        self._delete_chunks(file_id)
        self.conn.execute("DELETE FROM files WHERE id = ?", (file_id,))

    def _delete_chunks(self, file_id: int) -> None:
        self.conn.execute(
            "DELETE FROM fts WHERE rowid IN (SELECT id FROM chunks WHERE file_id = ?)", (file_id,)
        )
        self.conn.execute("DELETE FROM chunks WHERE file_id = ?", (file_id,))

    def _insert_sections(self, file_id: int, sections: list[Section]) -> None:
        for section in sections:
            cur = self.conn.execute(
                "INSERT INTO chunks (file_id, line, page, linemap) VALUES (?, ?, ?, ?)",
                (file_id, section.line, section.page, json.dumps(section.linemap, separators=(",", ":"))),
            )
            self.conn.execute(
                "INSERT INTO fts (rowid, heading, body) VALUES (?, ?, ?)",
                (cur.lastrowid, section.heading, section.body),
            )

    # -- querying ---------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        limit: int = 10,
        syntax: Literal["plain", "fts"] = "plain",
        path_glob: str | None = None,
    ) -> list[Hit]:
        """Rank sections by BM25 (headings weigh 3x the body).

        `plain` queries are escaped into quoted terms, all required; if nothing has them all, any term
        will do. `fts` passes FTS5 syntax through (`NEAR`, `OR`, `prefix*`, `heading:`); a malformed
        one raises `QuerySyntaxError`.
        """
        if syntax == "fts":
            if not query.strip():
                raise QuerySyntaxError("empty query")
            return self._run(query, limit, path_glob, query_words(query), query_phrases(query))
        words, phrases = query_words(query), query_phrases(query)
        strict = plain_to_fts(query)
        if strict is None:
            raise QuerySyntaxError(f"the query {query!r} has no words to search for")
        hits = self._run(strict, limit, path_glob, words, phrases)
        loose = plain_to_fts(query, any_term=True)
        if not hits and loose and loose != strict:
            hits = self._run(loose, limit, path_glob, words, phrases)
        return hits

    def _run(
        self, match: str, limit: int, path_glob: str | None, words: list[str], phrases: list[list[str]]
    ) -> list[Hit]:
        sql = (
            "SELECT f.path, c.line, c.page, c.linemap, fts.heading, fts.body, "
            "snippet(fts, 1, '**', '**', '…', 24), bm25(fts, 3.0, 1.0) AS score "
            "FROM fts JOIN chunks c ON c.id = fts.rowid JOIN files f ON f.id = c.file_id "
            "WHERE fts MATCH ?"
        )
        params: list[object] = [match]
        if path_glob:
            sql += " AND f.path GLOB ?"
            params.append(path_glob)
        sql += " ORDER BY score LIMIT ?"
        params.append(limit)
        try:
            rows = self.conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            # Locked, damaged, a table missing: the index's trouble, not the query's.
            if not _unparsable(match):
                raise
            raise QuerySyntaxError(_explain(str(exc), match)) from None
        hits = []
        for path, line, page, linemap, heading, body, snippet, score in rows:
            section = Section(line=line, page=page, heading=heading, body=body, linemap=json.loads(linemap))
            hits.append(
                Hit(
                    path=path,
                    line=_match_line(section, words, phrases),
                    page=page,
                    heading=heading,
                    snippet=" ".join(snippet.split()),
                    score=score,
                )
            )
        return hits

    def _meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _version(stored: str | None) -> int:
    """An extractor version stored in `meta` as a number: none is 1 (before versions were stored), one
    that is no number 0 (older than any: read again)."""
    if stored is None:
        return 1
    try:
        return int(stored)
    except ValueError:
        return 0


def _utf8(name: str) -> bool:
    """Whether a name from the file system is UTF-8 (Python decodes other bytes to lone surrogates)."""
    return name.isascii() or not any("\udc80" <= c <= "\udcff" for c in name)


def _shown(rel: str) -> str:
    """`rel` printable: bytes that are not UTF-8 as `\\xe9`."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def _unreadable_folder(dirfd: int, name: str) -> str | None:
    """Why the folder `name` in `dirfd` cannot be listed, or None (it can, it is gone, or it is a link)."""
    try:
        os.close(os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None  # a link: fwalk does not enter it
        return exc.strerror or str(exc)
    return None


class _Skipped(Exception):
    """A file the walk found but `update` does not index; the message says why."""


# Read without following a link and without waiting: should the file be a FIFO (or be swapped for
# one, or for a link, after the walk listed it), open() neither blocks for a writer that never comes
# nor reads outside the root; the fd's own fstat then says what was opened, and it alone is read.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_TYPES = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
}


def _read_document(
    dirfd: int, name: str, unchanged: tuple[int, int] | None
) -> tuple[os.stat_result, bytes | None] | None:
    """The stat and bytes of the regular file `name` in the folder `dirfd`, both through one fd;
    None if it is gone.

    `unchanged` is the (mtime_ns, size) the index holds for it: a file that still has them is not
    read (its bytes are None). Raises `_Skipped` for a file that is not indexed.
    """
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dirfd)
    except FileNotFoundError:
        return None
    except OSError as exc:  # a socket (ENXIO), a link swapped in (ELOOP), no permission
        raise _Skipped(f"cannot read ({exc.strerror or exc}), skipped") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = _FILE_TYPES.get(stat.S_IFMT(st.st_mode), "of an unknown type")
            raise _Skipped(f"not a regular file ({what}), skipped")
        if unchanged == (st.st_mtime_ns, st.st_size):
            return st, None
        if st.st_size <= MAX_FILE_BYTES:
            with open(fd, "rb", closefd=False) as file:
                data = file.read(MAX_FILE_BYTES + 1)  # it may have grown since the fstat
            if len(data) <= MAX_FILE_BYTES:
                return st, data
        raise _Skipped(f"larger than {MAX_FILE_BYTES} bytes, skipped")
    except OSError as exc:
        raise _Skipped(f"cannot read ({exc.strerror or exc}), skipped") from None
    finally:
        os.close(fd)


def _match_line(section: Section, words: list[str], phrases: list[list[str]]) -> int:
    # The first place a query phrase, else a query word (or its stem's prefix, as porter may have
    # matched a variant), appears gives a more precise line than the section start.
    lower = section.body.lower()
    for phrase in phrases:
        m = re.search(r"\b" + r"\W+".join(map(re.escape, phrase)), lower)
        if m:
            return section.line_at(m.start())
    # Whole words first: a prefix probe for "radix" would stop at the heading "RadixAttention".
    for patterns in (
        [r"\b" + re.escape(w) + r"\b" for w in words],
        [r"\b" + re.escape(w[: max(4, len(w) - 3)]) for w in words],
    ):
        starts = [m.start() for p in patterns if (m := re.search(p, lower))]
        if starts:
            return section.line_at(min(starts))
    return section.line


def _unparsable(match: str) -> bool:
    """Whether FTS5 refuses `match` itself: tried on an empty table of the same columns in memory."""
    with contextlib.closing(sqlite3.connect(":memory:")) as probe:
        probe.execute(_FTS_PROBE)
        try:
            probe.execute("SELECT rowid FROM fts WHERE fts MATCH ?", (match,)).fetchall()
        except sqlite3.OperationalError:
            return True
    return False


def _explain(error: str, match: str) -> str:
    detail = error.removeprefix("fts5: ")
    return (
        f"the search query {match!r} is not valid FTS5 syntax ({detail}). Use syntax='plain' to search for "
        'the words as typed, or fix the query: quote terms with special characters ("C++"), use AND/OR/NOT '
        "between terms, NEAR(a b, 5), prefix*, or heading:word."
    )
