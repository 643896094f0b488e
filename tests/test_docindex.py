"""The document index and search_docs on real files and a real SQLite database."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwq_agent.cli.main import main
from qwq_agent.docindex import DocIndex, IndexStats, QuerySyntaxError
from qwq_agent.protocols import ToolContext
from qwq_agent.tools.search_docs import SearchDocs

CTX = ToolContext()
# Bounds every wait on another process or thread (none of them takes more than seconds when it works).
DEADLINE_S = 60.0

GUIDE_MD = """---
title: ignored front matter mentioning zebra
---
# Telescope Guide

An introduction to amateur astronomy.

## Mounting

Attach the tube to the equatorial mount.
Balance the counterweight before observing Jupiter.

```
align --star Polaris
```
"""
NOTES_TXT = "Shopping list\n\nmilk and bread\n\n\nThe refractor lens needs cleaning every spring.\n"
PAGE_HTML = """<!doctype html>
<html><head><title>Comets</title><script>var hidden = "nebula";</script></head>
<body>
<h1>Comet Halley</h1>
<p>Halley returns every
76 years to the inner solar system.</p>
<ul><li>Perihelion in 2061</li></ul>
</body></html>
"""


def make_pdf(pages: list[str]) -> bytes:
    """A small valid PDF whose pages each show one line of text in Helvetica."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    font_id = 3
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
        content_id = len(objects)
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>"
        )
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "guide.md").write_text(GUIDE_MD)
    (root / "notes.txt").write_text(NOTES_TXT)
    (root / "sub" / "comets.html").write_text(PAGE_HTML)
    (root / "sub" / "paper.pdf").write_bytes(
        make_pdf(["Introduction to spectroscopy", "Redshift of quasars"])
    )
    (root / "image.png").write_bytes(b"\x89PNG not a document")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.md").write_text("# Secret\nquasars hidden here")
    return root


def build(root: Path, tmp_path: Path) -> DocIndex:
    index = DocIndex(tmp_path / "index.sqlite3", root)
    return index


def locations(index: DocIndex, query: str, **kw: object) -> list[str]:
    return [hit.location for hit in index.search(query, **kw)]  # type: ignore[arg-type]


def test_a_hostile_heading_line_is_read_in_linear_time() -> None:
    import time

    from qwq_agent.docindex.extract import extract

    # The heading pattern's lazy title retried its closing-`#` class at every character: ~9 s on 64 KB.
    t0 = time.process_time()
    _, sections = extract(("# Title" + " #" * 32_000 + "\n\nbody\n").encode(), "markdown")
    assert sections[0].heading == "Title"
    _, sections = extract(("## A #b" + " #" * 32_000 + "x\n").encode(), "markdown")
    assert sections[0].heading.startswith("A #b # #")  # the title, whole up to the "x" (then cut)
    _, sections = extract(b"# ###   \n\nbody\n", "markdown")
    assert sections[0].heading == "(untitled)"
    assert time.process_time() - t0 < 10  # a bound on runaway work (ms expected), not a timing measurement


def test_builds_index_and_cites_path_and_line(corpus: Path, tmp_path: Path) -> None:
    with build(corpus, tmp_path) as index:
        stats = index.update()
        assert (stats.added, stats.updated, stats.removed, stats.unchanged) == (4, 0, 0, 0)
        assert stats.errors == []
        assert locations(index, "counterweight") == ["guide.md:11"]
        assert locations(index, "Polaris") == ["guide.md:14"]
        assert locations(index, "refractor lens") == ["notes.txt:6"]
        assert locations(index, "76 years") == ["sub/comets.html:6"]
        assert locations(index, "perihelion") == ["sub/comets.html:7"]
        assert locations(index, "quasars") == ["sub/paper.pdf#page=2"]  # the hidden folder is skipped
        hit = index.search("counterweight")[0]
        assert hit.heading == "Telescope Guide > Mounting"
        assert "**counterweight**" in hit.snippet
        # Front matter, scripts and non-documents are not indexed.
        assert index.search("zebra") == [] and index.search("nebula") == []


def test_bm25_ranks_denser_and_heading_matches_first(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "a.md").write_text("# Other\n\nOne mention of saturn among many other words here.\n")
    (root / "b.md").write_text("# Saturn\n\nSaturn has rings. Saturn is large.\n")
    (root / "c.md").write_text("# Nothing\n\nNo planets here.\n")
    with build(root, tmp_path) as index:
        index.update()
        hits = index.search("saturn")
        assert [h.path for h in hits] == ["b.md", "a.md"]
        assert hits[0].score < hits[1].score


def test_incremental_update_reads_only_changed_files(corpus: Path, tmp_path: Path) -> None:
    with build(corpus, tmp_path) as index:
        index.update()
        again = index.update()
        assert (again.added, again.updated, again.removed, again.unchanged, again.chunks) == (0, 0, 0, 4, 0)

        # A new mtime with the same content is hashed but not re-extracted.
        os.utime(corpus / "notes.txt", ns=(1, 1))
        touched = index.update()
        assert (touched.updated, touched.unchanged, touched.chunks) == (0, 4, 0)

        (corpus / "notes.txt").write_text("The reflector mirror needs collimation.\n")
        (corpus / "sub" / "comets.html").unlink()
        (corpus / "new.md").write_text("# New\n\nEclipse timings.\n")
        changed = index.update()
        assert (changed.added, changed.updated, changed.removed, changed.unchanged) == (1, 1, 1, 2)
        assert locations(index, "collimation") == ["notes.txt:1"]
        assert index.search("refractor") == []
        assert index.search("Halley") == []
        assert locations(index, "eclipse") == ["new.md:3"]
        assert index.file_count() == 4


def test_plain_queries_are_escaped_and_fall_back_to_any_term(corpus: Path, tmp_path: Path) -> None:
    with build(corpus, tmp_path) as index:
        index.update()
        # FTS5 operators and punctuation are just words in a plain query.
        assert locations(index, "milk AND ( bread") == ["notes.txt:3"]
        assert index.search('C++ ( "unclosed') == []
        # The whole word "mount" (line 10) is cited before the heading "Mounting" (line 8) that stems to it.
        assert locations(index, "NEAR(mount") == ["guide.md:10"]
        # No section has both words, so any-term ranking applies.
        assert set(locations(index, "Jupiter spectroscopy")) == {"guide.md:11", "sub/paper.pdf#page=1"}
        # Quoted phrases stay together.
        assert locations(index, '"equatorial mount"') == ["guide.md:10"]
        assert index.search('"mount equatorial"') == []
        with pytest.raises(QuerySyntaxError, match="no words"):
            index.search("?!")


def test_fts_syntax_passes_through_and_errors_are_explained(corpus: Path, tmp_path: Path) -> None:
    with build(corpus, tmp_path) as index:
        index.update()
        assert set(locations(index, "redsh* OR halley", syntax="fts")) == {
            "sub/comets.html:4",
            "sub/paper.pdf#page=2",
        }
        assert locations(index, "heading:mounting", syntax="fts") == ["guide.md:8"]
        with pytest.raises(QuerySyntaxError, match="not valid FTS5 syntax"):
            index.search("mount AND", syntax="fts")
        with pytest.raises(QuerySyntaxError):
            index.search("nosuchcolumn:x", syntax="fts")


def test_path_glob_restricts_hits(corpus: Path, tmp_path: Path) -> None:
    with build(corpus, tmp_path) as index:
        index.update()
        assert set(locations(index, "introduction")) == {"guide.md:6", "sub/paper.pdf#page=1"}
        assert locations(index, "introduction", path_glob="sub/*.pdf") == ["sub/paper.pdf#page=1"]


def test_unreadable_files_are_reported_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (root / "binary.txt").write_bytes(b"abc\x00\x01\x02")
    (root / "ok.md").write_text("fine content\n")
    with build(root, tmp_path) as index:
        stats = index.update()
        assert stats.added == 3
        assert {path for path, _ in stats.errors} == {"broken.pdf", "binary.txt"}
        assert locations(index, "fine") == ["ok.md:1"]
        # A broken file is remembered by hash, so it is not retried until it changes.
        assert index.update().unchanged == 3


def test_html_is_decoded_by_its_declared_charset_and_a_bom_before_the_nul_check(tmp_path: Path) -> None:
    # Every document was decoded utf-8, else cp1252: a page's <meta charset> was never read, so a
    # windows-1251 or Shift_JIS page was stored as mojibake (unsearchable, no error), and a UTF-16
    # file with a BOM was refused as binary (its NUL bytes were looked at before its BOM).
    root = tmp_path / "r"
    root.mkdir()
    for name, charset, words in (
        ("ru.html", "windows-1251", "Привет мир, документация по кэшированию"),
        ("ja.html", "shift_jis", "東京 キャッシュ 説明書"),
        ("puny.html", "punycode", "plain words -abc"),  # a codec no page is in: read as naming none
    ):
        page = f'<html><head><meta charset="{charset}"><title>t</title></head><body><p>{words}'
        (root / name).write_bytes(page.encode("utf-8" if charset == "punycode" else charset))
    (root / "wide.txt").write_bytes("Notes on кэширование\n".encode("utf-16"))
    (root / "wide.html").write_bytes(
        "<html><body><p>Über Zwischenspeicher</p></body></html>".encode("utf-16")
    )
    (root / "binary.txt").write_bytes(b"abc\x00\x01\x02")
    with build(root, tmp_path) as index:
        stats = index.update()
        assert dict(stats.errors).keys() == {"binary.txt"}, stats.errors
        assert locations(index, "кэшированию") == ["ru.html:1"]
        assert locations(index, "キャッシュ") == ["ja.html:1"]
        assert locations(index, "abc") == ["puny.html:1"]
        assert locations(index, "кэширование") == ["wide.txt:1"]
        assert locations(index, "Zwischenspeicher") == ["wide.html:1"]


def test_a_binary_file_that_starts_like_a_byte_order_mark_is_still_refused_as_binary(tmp_path: Path) -> None:
    # The mark is read before the NUL check (UTF-16 text is full of NUL bytes), and whatever followed it
    # was indexed: a binary file starting with FF FE became an index entry of UTF-16 noise.
    import random
    import zlib

    root = tmp_path / "r"
    root.mkdir()
    squeezed = zlib.compress(" ".join(str(i * i) for i in range(5000)).encode(), 9)
    (root / "packed.txt").write_bytes(b"\xff\xfe" + squeezed)  # compressed data: random-looking bytes
    (root / "sparse.txt").write_bytes(b"\xfe\xff" + b"\x00\x00\x00\x07" * 500)  # mostly zeros
    (root / "wide32.txt").write_bytes(b"\xff\xfe\x00\x00" + random.Random(0).randbytes(4096))
    (root / "cjk.txt").write_bytes("東京の説明書 キャッシュ 😀\n".encode("utf-16"))  # text, kept
    with build(root, tmp_path) as index:
        stats = index.update()
        assert dict(stats.errors).keys() == {"packed.txt", "sparse.txt", "wide32.txt"}, stats.errors
        assert all("binary file" in why for _, why in stats.errors), stats.errors
        assert locations(index, "キャッシュ") == ["cjk.txt:1"]


def test_a_short_file_after_a_utf16_mark_must_be_strict_utf16_text(tmp_path: Path) -> None:
    # The mark's text was decoded with replacement and judged by a share of odd characters: a short
    # binary file (a cut code unit, a lone surrogate, a couple of control bytes among a few dozen
    # characters) stayed under the share and was indexed as text.
    root = tmp_path / "r"
    root.mkdir()
    words = "plain words of a short note, enough of them"
    le = words.encode("utf-16-le")
    (root / "odd.txt").write_bytes(b"\xff\xfe" + le + b"\x41")  # no whole number of code units
    (root / "lone.txt").write_bytes(b"\xff\xfe" + le + b"\x00\xd8" + "ab".encode("utf-16-le"))
    (root / "lone_be.txt").write_bytes(b"\xfe\xff" + words.encode("utf-16-be") + b"\xdc\x00")
    (root / "controls.txt").write_bytes(b"\xff\xfe" + "\x01\x02".encode("utf-16-le") + le)
    (root / "c1.txt").write_bytes(b"\xff\xfe" + le + "\x9b".encode("utf-16-le"))
    (root / "nul32.txt").write_bytes("\x00".join(["words"] * 9).encode("utf-32"))
    # Text, kept: whitespace controls, a pair of surrogates (an emoji), UTF-32 and big-endian UTF-16.
    (root / "tabs.txt").write_bytes(f"{words}\tcolumn\f\r\nnext 😀\n".encode("utf-16"))
    (root / "wide32.txt").write_bytes("quartz in wide32 text\n".encode("utf-32"))
    (root / "be.txt").write_bytes(b"\xfe\xff" + "granite in big endian\n".encode("utf-16-be"))
    with build(root, tmp_path) as index:
        stats = index.update()
        binary = {"odd.txt", "lone.txt", "lone_be.txt", "controls.txt", "c1.txt", "nul32.txt"}
        assert dict(stats.errors).keys() == binary, stats.errors
        assert all("binary file" in why for _, why in stats.errors), stats.errors
        assert locations(index, "column") == ["tabs.txt:1"]
        assert locations(index, "quartz") == ["wide32.txt:1"]
        assert locations(index, "granite") == ["be.txt:1"]


def test_symlinks_out_of_root_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.md").write_text("private diary entry\n")
    root = tmp_path / "r"
    root.mkdir()
    (root / "ok.md").write_text("public text\n")
    (root / "link.md").symlink_to(outside / "private.md")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    with build(root, tmp_path) as index:
        assert index.update().added == 1
        assert index.search("diary") == []


def test_a_folder_swapped_for_a_link_during_the_walk_is_not_read_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.md").write_text("# key\nHOSTSECRETTOKEN begin private key\n")
    root = tmp_path / "r"
    sub = root / "sub"
    sub.mkdir(parents=True)
    (sub / "a.md").write_text("first harmless note\n")
    (sub / "b.md").write_text("second harmless note\n")

    def swap(rel: str) -> None:
        # Whoever writes into the folder (sandboxed code in a shared workspace) swaps `sub` for a link
        # after the walk listed it: links were rejected when listed, then files were opened by path,
        # through the link, and the host's file was indexed and served by search_docs.
        if rel == "sub/a.md":
            sub.rename(root / ".moved")
            sub.symlink_to(outside, target_is_directory=True)

    with build(root, tmp_path) as index:
        index.update(progress=swap)
        assert index.search("HOSTSECRETTOKEN") == []
        # Read through the folder the walk listed (its fd), wherever it was moved.
        assert locations(index, "second harmless") == ["sub/b.md:1"]


def test_a_fifo_named_like_a_document_is_skipped_not_waited_on(tmp_path: Path) -> None:
    import threading

    root = tmp_path / "r"
    root.mkdir()
    (root / "a.md").write_text("# A\nhello radix\n")
    fifo = root / "b.md"
    os.mkfifo(fifo)
    # Reading a FIFO by path blocked until a writer came: `qwq-agent index` hung for good on one
    # `mkfifo` in the folder. Now the file is opened without blocking and skipped as no regular file.
    done: list[tuple[IndexStats, list[str]]] = []

    def index_it() -> None:  # SQLite connections stay in the thread that made them
        with build(root, tmp_path) as index:
            done.append((index.update(), locations(index, "radix")))

    worker = threading.Thread(target=index_it, daemon=True)
    worker.start()
    worker.join(timeout=30)  # milliseconds expected
    blocked = worker.is_alive()
    if blocked:  # let the old code's read end (a writer that closes at once is an EOF) before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join()
    assert not blocked, "update() blocked reading the FIFO b.md"
    ((stats, hits),) = done
    assert stats.errors == [("b.md", "not a regular file (a FIFO), skipped")]
    assert hits == ["a.md:2"]


def test_an_index_belongs_to_one_root(corpus: Path, tmp_path: Path) -> None:
    with build(corpus, tmp_path) as index:
        index.update()
    with pytest.raises(ValueError, match="indexes"):
        DocIndex(tmp_path / "index.sqlite3", tmp_path)


async def test_search_docs_tool_cites_locations(corpus: Path, tmp_path: Path) -> None:
    with build(corpus, tmp_path) as index:
        index.update()
    tool = SearchDocs(tmp_path / "index.sqlite3")
    assert tool.spec.name == "search_docs" and "query" in tool.spec.parameters["properties"]
    out = await tool({"query": "counterweight Jupiter"}, CTX)
    assert not out.is_error
    assert "[1] guide.md:11 — Telescope Guide > Mounting" in out.text
    assert out.metadata["hits"][0]["location"] == "guide.md:11"
    none = await tool({"query": "xylophone"}, CTX)
    assert not none.is_error and "No document sections match" in none.text


async def test_search_docs_tool_errors_are_observations(corpus: Path, tmp_path: Path) -> None:
    missing = await SearchDocs(tmp_path / "nope.sqlite3")({"query": "x"}, CTX)
    assert missing.is_error and "qwq-agent index" in missing.text
    assert not (tmp_path / "nope.sqlite3").exists()
    with build(corpus, tmp_path) as index:
        index.update()
    tool = SearchDocs(tmp_path / "index.sqlite3")
    bad = await tool({"query": "mount AND", "syntax": "fts"}, CTX)
    assert bad.is_error and "not valid FTS5 syntax" in bad.text
    invalid = await tool({"query": "x", "limit": 0}, CTX)
    assert invalid.is_error and "limit" in invalid.text


async def test_a_damaged_or_replaced_index_is_an_observation_and_is_only_read(
    corpus: Path, tmp_path: Path
) -> None:
    import sqlite3

    from qwq_agent.agent.messages import ToolCall
    from qwq_agent.tools.registry import ToolRegistry

    db = tmp_path / "index.sqlite3"
    with build(corpus, tmp_path) as index:
        index.update()
    registry = ToolRegistry([SearchDocs(db)])

    def remove_index() -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)

    async def search(query: str = "telescope", syntax: str = "plain") -> str:
        out = await registry.call(
            ToolCall(id="c", name="search_docs", arguments={"query": query, "syntax": syntax})
        )
        assert out.is_error and "Traceback" not in out.text, out.text
        return out.text

    # An index whose search table is gone: every OperationalError read as the query's fault.
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE fts")
    assert f"the index at {db} is unreadable: no such table: fts" in await search(syntax="fts")
    assert "qwq-agent index DIR" in await search()
    assert "not valid FTS5 syntax" in await search("mount AND", syntax="fts")  # that one is the query's
    # The file replaced by another program's database: the query connection set WAL mode and created
    # the index's tables in it. It is opened read-only now, and left as it was.
    remove_index()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    before = db.read_bytes()
    assert "is unreadable: no such table: meta" in await search()
    assert db.read_bytes() == before
    # Damaged (or half written): raw DatabaseError and a traceback in the observation before.
    remove_index()
    db.write_bytes(b"this is not an sqlite file at all" * 200)
    assert "is unreadable: file is not a database" in await search()


def test_cli_index_prints_counts(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "cli.sqlite3"
    assert main(["index", str(corpus), "--db", str(db)]) == 0
    first = capsys.readouterr().out
    assert "added 4, updated 0, removed 0, unchanged 0" in first
    (corpus / "notes.txt").write_text("changed\n")
    assert main(["index", str(corpus), "--db", str(db), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["added"], counts["updated"], counts["removed"], counts["unchanged"]) == (0, 1, 0, 3)
    assert isinstance(counts["seconds"], float)
    assert main(["index", str(tmp_path / "absent")]) == 2


@contextlib.contextmanager
def update_held_mid_batch(db: Path, root: Path) -> Iterator[None]:
    """A real `DocIndex.update` of `db` (in a thread of this process) held inside its first batch: it
    holds the update lock and SQLite's write lock (its first file inserted, not committed) for the block,
    as a concurrent `qwq-agent index` extracting a slow PDF does. Let go on the way out; it must end."""
    import threading

    inside, release = threading.Event(), threading.Event()
    outcome: list[object] = []

    def hold(rel: str) -> None:
        inside.set()
        release.wait(DEADLINE_S)

    def first() -> None:
        try:
            with DocIndex(db, root) as index:
                outcome.append(index.update(progress=hold))
        except BaseException as exc:
            outcome.append(exc)
            inside.set()

    worker = threading.Thread(target=first)
    worker.start()
    try:
        assert inside.wait(DEADLINE_S) and not outcome, outcome
        yield
    finally:
        release.set()
        worker.join(DEADLINE_S)
    assert len(outcome) == 1 and isinstance(outcome[0], IndexStats), outcome


def index_cli(root: Path, db: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "qwq_agent.cli.main", "index", str(root), "--db", str(db)]
    env = {k: v for k, v in os.environ.items() if k != "QWQ_INDEX_WAIT"} | (env or {})
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_cli_index_of_an_index_another_process_is_updating_says_so_not_rebuild(
    corpus: Path, tmp_path: Path
) -> None:
    # SQLITE_BUSY was mapped like any DatabaseError: "cannot be used ... rebuild it with `qwq-agent
    # index DIR`", the very command that just failed, for an index that is fine. And the second update
    # never got to wait for the first: opening the index wrote to it, and SQLite's 5 s busy timeout
    # failed it ("database is locked") before it reached the update lock.
    db = tmp_path / "busy.sqlite3"
    with update_held_mid_batch(db, corpus):
        proc = index_cli(corpus, db, {"QWQ_INDEX_WAIT": "0.5"})  # the wait's limit, 60 s by default
        try:
            out, err = proc.communicate(timeout=DEADLINE_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = err.strip().splitlines()
    assert lines[0] == (
        f"another process (pid {os.getpid()}) is updating {db}; waiting for it to end (at most 0.5 s)"
    ), err
    assert proc.returncode == 2, (out, err)
    assert f"another process (pid {os.getpid()}) is updating {db}" in lines[1], err
    assert "try again" in err and "rebuild" not in err and "Traceback" not in err, err
    assert len(lines) == 3, err


def test_cli_index_waits_for_an_update_inside_its_batch_and_then_runs(corpus: Path, tmp_path: Path) -> None:
    # Two overlapping cron jobs: the second must queue behind the first, not fail on SQLite's lock.
    db = tmp_path / "shared.sqlite3"
    with update_held_mid_batch(db, corpus):
        proc = index_cli(corpus, db)
        try:
            assert proc.stderr is not None
            said = proc.stderr.readline()  # printed once it found the update running: then it goes on
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    try:
        out, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"another process (pid {os.getpid()}) is updating {db}; waiting" in said, said + err
    assert proc.returncode == 0, said + err
    assert out.startswith("added 0, updated 0, removed 0, unchanged 4"), out


def test_an_update_waits_for_one_in_progress_instead_of_clashing_with_its_batches(tmp_path: Path) -> None:
    """Two updates of one index overlapped: the second read the index while the first was between batch
    commits, then inserted a file the first had committed since (`UNIQUE constraint failed`), which the
    CLI reported as an index to rebuild."""
    import threading

    root = tmp_path / "docs"
    root.mkdir()
    for i in range(1, 4):
        (root / f"d{i}.md").write_text(f"# Doc {i}\n\nword{i} text\n")
    db = tmp_path / "index.sqlite3"
    # `moved`: the second update waits for the first (fixed), or is about to insert (the old clash).
    ready, go, moved = threading.Event(), threading.Event(), threading.Event()
    waited_for: list[int | None] = []
    outcome: list[object] = []

    def second() -> None:
        try:
            index = DocIndex(db, root)  # opened before the first update: it reads the index after `go`
            with index:
                # Seen just before an INSERT runs: the clash, had it not waited, would follow.
                index.conn.set_trace_callback(lambda sql: sql.startswith("INSERT INTO files") and moved.set())
                ready.set()
                go.wait()

                def on_wait(pid: int | None) -> None:
                    waited_for.append(pid)
                    moved.set()

                outcome.append(index.update(batch=1, on_wait=on_wait))
        except BaseException as exc:
            outcome.append(exc)
            ready.set()
            moved.set()

    worker = threading.Thread(target=second)
    worker.start()
    assert ready.wait(60)

    def between_batches(rel: str) -> None:
        # The first file is committed, this one not yet: the second update starts here.
        if rel == "d2.md":
            go.set()
            assert moved.wait(60)

    with DocIndex(db, root) as first:
        stats = first.update(progress=between_batches, batch=1)
    worker.join(60)
    assert stats.added == 3
    assert len(outcome) == 1 and isinstance(outcome[0], IndexStats), outcome
    assert outcome[0].unchanged == 3 and outcome[0].added == 0 and not outcome[0].errors
    assert waited_for == [os.getpid()]  # it said whom it waited for
    with DocIndex(db, root) as index:
        assert index.file_count() == 3 and locations(index, "word2") == ["d2.md:3"]
    assert not (tmp_path / "index.sqlite3-update.lock").exists()  # removed by the last holder


def test_an_update_that_waited_long_enough_is_refused_as_busy_not_broken(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qwq_agent.cli.errors import explain
    from qwq_agent.docindex import IndexBusy
    from qwq_agent.docindex.update_lock import update_lock

    db = tmp_path / "busy.sqlite3"
    with update_lock(db):  # what another `qwq-agent index` holds while it updates
        with DocIndex(db, corpus) as index, pytest.raises(IndexBusy, match=f"pid {os.getpid()}") as info:
            index.update(wait_s=0)
    error = explain(info.value)
    assert error is not None
    assert "another process" in str(error) and "try again" in error.fix and "rebuild" not in error.fix
    with DocIndex(db, corpus) as index:  # the lock is free again
        assert index.update(wait_s=0).added == 4


def test_cli_index_waits_for_another_update_and_then_runs(corpus: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from qwq_agent.docindex.update_lock import update_lock

    db = tmp_path / "shared.sqlite3"
    cmd = [sys.executable, "-m", "qwq_agent.cli.main", "index", str(corpus), "--db", str(db)]
    with update_lock(db):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            said = proc.stderr.readline()  # printed once it found the lock held: then it is released
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    out, err = proc.communicate(timeout=120)
    assert f"another process (pid {os.getpid()}) is updating {db}; waiting" in said, said + err
    assert proc.returncode == 0, err
    assert out.startswith("added 4, updated 0, removed 0"), out


def test_line_numbers_count_newlines_only(tmp_path):
    from qwq_agent.docindex.store import DocIndex

    docs = tmp_path / "docs"
    docs.mkdir()
    # A form feed and U+2028 are line breaks to str.splitlines() but not to editors or grep -n.
    (docs / "notes.txt").write_text(
        "intro\x0cpage two\n\nsecond para \u2028 same line\n\nthe zebrafish result\n"
    )
    with DocIndex(tmp_path / "ix.db", root=docs) as index:
        index.update()
        hits = index.search("zebrafish")
    assert [h.location for h in hits] == ["notes.txt:5"]


# A PDF on which pypdf raises neither PdfReadError nor ValueError (a /Lengths typo, an 'endstream' typo).
ODD_PDF = base64.b64decode(
    "JVBERi0xLjQKMSAwIG9iago8PCAvVHlwZSAvQ2F0YWxvUmcgL1BhZ2VzIDIgMCBSID4+CmVuZG9iagoyIDAgb2JqCjw8IC9U"
    "eXBlIC9QYWdlcyAvS2lkcyBbMyAwIFJdIC9Db3VudCAxID4+CmVuZG9iagozIDAgb2JqCjw8IC9UeXBlIC9QYWdlIC9QYXJl"
    "bnQgMiAwIFIgL01lZGlhQm94IFswIDAgNjEyIDc5Ml0gL0NvbnRlbnRzIDQgMCBSIC9SZXNvdXJjZXMgPDwgL0ZvbnQgPDwg"
    "L0YxIDUgMCBSID4+ID4+ID4+CmVuZG9iago0IDAgb2JqCjw8IC9MZW5ndFJoIDU2ID4+CnN0cmVhbQpCVCAvRjEgMTIgVGYg"
    "NzIgNzEyIFRkIChIZWxsbyB3b3JsZCBpbnN0YWxsIGd1aWRlKSBUaiBFVApl6GRzdHJlYW0KZW5kb2JqCjUgMCBvYmoKPDwg"
    "L1R5cGUgL0ZvbnQgL1N1YnR5cGUgL1R5cGUxIC9CYXNlRm9udCAvSGVsdmV0aWNhID4+CmVuZG9iagp4cmVmCjAgNgowMDAw"
    "MDAwMDAwIDY1NTM1IGYgCjAwMDAwMDAwMDkgMDAwMDAgbiAKMDAwMDAwMDA1OCAwMDAwMCBuIAowMDAwMDAwMTE1IDAwMDAw"
    "IG4gCjAwMDAwMDAyNDEgMDAwMDAgbiAKMDAwMDAwMDM0NyAwMDAwMCBuIAp0cmFpbGVyCjw8IC9TaXplIDYgL1Jvb3QgMSAw"
    "IFIgPj4Kc3RhcnR4cmVmCjQxNwolJUVPRgo="
)


def test_a_document_a_parser_chokes_on_is_reported_and_the_rest_indexed(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    # html.parser raised on `<![x>` (ParserRejectedMarkup); libxml2 reads it as a browser does
    (root / "marked.html").write_bytes(b"<html><body><p>Conditional: <![x> text</p></body></html>")
    (root / "odd.pdf").write_bytes(ODD_PDF)
    (root / "good.md").write_text("# Install\n\nRun pip install qwq-agent to install it.\n")
    with build(root, tmp_path) as index:
        stats = index.update()  # used to raise, rolling back every document
        errors = dict(stats.errors)
        assert set(errors) == {"odd.pdf"}
        assert locations(index, "install") == ["good.md:1"]
        assert locations(index, "conditional") == ["marked.html:1"]


def test_a_long_block_of_blank_lines_is_split_in_linear_time_into_no_empty_sections(tmp_path: Path) -> None:
    import time

    from qwq_agent.docindex.extract import extract

    # The splitter re-summed its line buffer (up to 1,200 blank lines) for every line: ~25 µs a line,
    # 20 s for this 1 MB fence; and each 1,200 blank lines became a section of nothing.
    data = b"# Notes\n\n```\n" + b"\n" * 1_000_000 + b"```\n\nradix\n"
    t0 = time.process_time()
    _, sections = extract(data, "markdown")
    assert time.process_time() - t0 < 10  # a bound on runaway work (~1 s expected), not a measurement
    assert all(section.body.strip() for section in sections)
    assert len(sections) == 3  # the heading with the fence's opening, its closing, then "radix"
    root = tmp_path / "docs"
    root.mkdir()
    (root / "notes.md").write_bytes(data)
    with build(root, tmp_path) as index:
        index.update()
        assert locations(index, "radix") == [f"notes.md:{1_000_000 + 6}"]


def test_hostile_html_is_parsed_in_linear_time() -> None:
    import time

    from qwq_agent.docindex.extract import extract

    # CPython's HTMLParser (no CVE-2025-6069 fix in 3.11.7) rescanned to the end from every `<` that
    # cannot close: 100 KB of `<a "` took minutes. fetch_url was guarded; the index was not.
    data = b"<html><body><h1>Radix</h1><p>radix cache notes</p>" + b'<a "' * 25_000
    t0 = time.process_time()
    _, sections = extract(data, "html")
    assert time.process_time() - t0 < 10  # a bound on runaway work (ms expected), not a measurement
    assert sections[0].heading == "Radix" and "radix cache notes" in sections[0].body


def test_html_that_never_closes_is_parsed_in_linear_time_and_a_huge_page_is_cut_at_a_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from html_probe import count_failed_scans

    from qwq_agent.docindex.extract import MAX_HTML_CHARS, extract

    # Each unclosed `<!--` rescanned to the end of the page for `-->` (140 KB: seconds, 2 MB: about
    # 9 minutes), with no deadline in the indexer at all; a linear parse fails a couple of scans at most.
    failed = count_failed_scans(monkeypatch)
    data = b"<html><body><h1>Radix</h1><p>radix cache notes</p>" + b"<!--<a>" * 20_000
    _, sections = extract(data, "html")
    assert len(failed) <= 2, len(failed)
    assert sections[0].heading == "Radix" and "radix cache notes" in sections[0].body
    # Linear is still ~2 s a megabyte of dense tags and a tree of ~150 bytes a character: a page
    # past the cap is indexed up to it, with a note, like a PDF's text.
    root = tmp_path / "docs"
    root.mkdir()
    head, filler = "<h1>Start</h1>\n<p>alphaword</p>\n", "<p>" + "filler words " * 1000 + "</p>\n"
    page = head + filler * (MAX_HTML_CHARS // len(filler) + 1) + "<p>omegaword</p>\n"
    (root / "huge.html").write_text(page)
    with build(root, tmp_path) as index:
        stats = index.update()
        assert locations(index, "alphaword") == ["huge.html:2"]
        assert locations(index, "omegaword") == []
    line = 3 + (MAX_HTML_CHARS - len(head)) // len(filler)  # the filler line the cut falls in
    assert stats.errors == [
        ("huge.html", f"HTML cut at {MAX_HTML_CHARS:,} characters; indexed up to line {line}")
    ]


def test_html_that_leaves_out_end_tags_is_indexed_in_linear_time_item_by_item(tmp_path: Path) -> None:
    import time

    from qwq_agent.docindex.extract import extract

    # html.parser nested each `<li>` whose end tag is left out in the one before: BeautifulSoup's
    # tree builder went quadratic on it (the indexer's 8 MB cap: hours), and the whole list was one
    # block cited at its first line. Each item is its own block now, at its own line.
    items = 40_000
    data = (
        "<html><body><h1>List</h1>\n<ul>\n" + "".join(f"<li>Item <b>{i}</b> text\n" for i in range(items))
    ).encode()
    t0 = time.process_time()
    _, sections = extract(data, "html")
    assert sections[0].heading == "List" and "Item 39999 text" in sections[-1].body
    assert time.process_time() - t0 < 30  # a bound on runaway work (seconds expected), not a measurement
    root = tmp_path / "docs"
    root.mkdir()
    (root / "list.html").write_bytes(data)
    (root / "entities.html").write_text(
        "<html><body>\n<h1>Entities</h1>\n<p>A reference starts with &# and ends with a semicolon.</p>\n"
        "<p>Closing words.</p>\n</body></html>\n"
    )
    with build(root, tmp_path) as index:
        index.update()
        assert locations(index, '"Item 30000 text"') == [f"list.html:{3 + 30_000}"]
        assert locations(index, "semicolon") == ["entities.html:3"]
        (hit,) = index.search("closing")
        # the text after a stray `&#` was raw markup and round 1's end marker
        assert (
            hit.location == "entities.html:4"
            and "<" not in hit.snippet
            and "&#" in index.search("semicolon")[0].snippet
        )


def compressed_pdf(pages: int, lines_per_page: int) -> bytes:
    """A PDF whose pages all show one Flate-compressed content stream of many lines of text."""
    import zlib

    content = b"BT /F1 12 Tf 72 712 Td " + b"(hello world) Tj 0 -14 Td " * lines_per_page + b"ET"
    stream = zlib.compress(content, 9)
    kids = " ".join(f"{4 + i} 0 R" for i in range(pages)).encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages,
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    objects += [
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R "
        b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (4 + pages)
    ] * pages
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


# The extraction deadline (`extract.PDF_SECONDS`, 60 s) for the tests about the text cap, where it is not
# what is checked: the bomb's extraction up to the cap takes ~9 s, and on a loaded CI machine it passed
# 60 s, so the deadline cut it first (a different note, and read again by the next update).
PDF_SECONDS_UNDER_LOAD = 600.0


def test_a_pdf_whose_pages_share_one_compressed_stream_is_cut_at_the_text_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    from qwq_agent.docindex.extract import MIN_PDF_CHARS

    extract = importlib.import_module("qwq_agent.docindex.extract")  # the package exports a function so named
    monkeypatch.setattr(extract, "PDF_SECONDS", PDF_SECONDS_UNDER_LOAD)
    # 24 pages x 240,000 characters from a 5 KB file: all of it was extracted and indexed (20 s;
    # 1,000 such pages took hours and gigabytes). Now the text stops at the cap, mid-page.
    root = tmp_path / "docs"
    root.mkdir()
    (root / "bomb.pdf").write_bytes(compressed_pdf(pages=24, lines_per_page=20_000))
    with build(root, tmp_path) as index:
        stats = index.update()
        chars = index.conn.execute("SELECT sum(length(body)) FROM fts").fetchone()[0]
        assert locations(index, "hello world", limit=1) == ["bomb.pdf#page=1"]
    assert 0.9 * MIN_PDF_CHARS < chars <= MIN_PDF_CHARS
    assert stats.errors == [
        ("bomb.pdf", f"text cut at {MIN_PDF_CHARS:,} characters; indexed up to page 5 of 24")
    ]


def test_a_pdf_cut_by_the_deadline_is_extracted_again_and_one_cut_at_the_cap_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    extract = importlib.import_module("qwq_agent.docindex.extract")  # the package exports a function so named
    # A PDF cut by the extraction deadline (a loaded machine) was stored as indexed and every later
    # update counted it unchanged: its later pages stayed out of the index for good.
    root = tmp_path / "docs"
    root.mkdir()
    (root / "paper.pdf").write_bytes(make_pdf(["alphaword here", "bravoword here", "charlieword here"]))
    (root / "bomb.pdf").write_bytes(compressed_pdf(pages=8, lines_per_page=20_000))
    with build(root, tmp_path) as index:
        monkeypatch.setattr(extract, "PDF_SECONDS", 0.0)  # the first build runs out of time at once
        first = index.update()
        assert not locations(index, "charlieword")
        monkeypatch.setattr(extract, "PDF_SECONDS", PDF_SECONDS_UNDER_LOAD)  # now only the cap cuts
        second = index.update()
        assert (second.updated, second.unchanged) == (2, 0)  # both were cut by the deadline
        assert locations(index, "alphaword") == ["paper.pdf#page=1"]
        assert locations(index, "charlieword") == ["paper.pdf#page=3"]
        third = index.update()  # read whole, or cut at the cap (the same cut every time): not read again
        assert (third.updated, third.unchanged) == (0, 2)
    assert [why for _, why in first.errors] == [
        "extraction stopped after 0 s; indexed up to page 1 of 8",
        "extraction stopped after 0 s; indexed up to page 1 of 3",
    ]
    assert [path for path, _ in second.errors] == ["bomb.pdf"] and "text cut at" in second.errors[0][1]


def test_a_file_skipped_on_reindex_loses_its_old_sections(tmp_path: Path) -> None:
    import socket

    from qwq_agent.docindex.store import MAX_FILE_BYTES

    root = tmp_path / "docs"
    root.mkdir()
    log, door = root / "log.txt", root / "door.txt"
    log.write_text("the launch code is zebra42\n")
    door.write_text("the door code is okapi7\n")
    with build(root, tmp_path) as index:
        index.update()
        assert locations(index, "zebra42") == ["log.txt:1"] and locations(index, "okapi7") == ["door.txt:1"]
        log.write_text("rotated\n" + "x" * (MAX_FILE_BYTES + 10) + "\n")  # too large now
        door.unlink()
        with socket.socket(socket.AF_UNIX) as sock:  # listed and stat()ed like a file; open() fails
            sock.bind(str(door))
            stats = index.update()
        errors = dict(stats.errors)
        # They stayed searchable, cited at lines that now hold other text.
        assert locations(index, "zebra42") == [] and locations(index, "okapi7") == []
        assert errors["log.txt"] == (
            f"larger than {MAX_FILE_BYTES} bytes, skipped; its old sections were removed from the index"
        )
        assert (
            errors["door.txt"].startswith("cannot read (")
            and "old sections were removed" in errors["door.txt"]
        )
        assert index.file_count() == 0 and index.chunk_count() == 0
        # Forgotten rather than remembered as unchanged: readable again, it is indexed again.
        door.unlink()
        door.write_text("the door code is okapi8\n")
        assert index.update().added == 1 and locations(index, "okapi8") == ["door.txt:1"]


_RO_PROBE = """
import asyncio, sys
from pathlib import Path
from qwq_agent.cli.preflight import check_docs_db
from qwq_agent.protocols import ToolContext
from qwq_agent.tools.search_docs import SearchDocs, SearchDocsArgs
check_docs_db(Path(sys.argv[1]))
out = asyncio.run(SearchDocs(sys.argv[1]).run(SearchDocsArgs(query="quick fox"), ToolContext(call_id="x")))
print(out.text)
sys.exit(1 if out.is_error else 0)
"""


def _search_read_only(folder: Path, db_name: str) -> tuple[int, str]:
    """search_docs (and the CLI's preflight) on `folder` bind-mounted read-only, in a mount namespace."""
    import subprocess
    import sys

    mount = folder.parent / "ro"
    mount.mkdir(exist_ok=True)
    script = folder.parent / "probe.py"
    script.write_text(_RO_PROBE)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    shell = (
        f"mount --bind -o ro '{folder}' '{mount}' && exec '{sys.executable}' '{script}' '{mount}/{db_name}'"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", shell], capture_output=True, text=True, env=env, timeout=60
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root (unshare -m)")
async def test_an_index_on_read_only_storage_is_searched_and_searching_leaves_no_files(
    tmp_path: Path,
) -> None:
    import shutil
    import sqlite3

    # The index was left in WAL mode, and SQLite's read-only open of a WAL database must create its
    # -shm file: on a read-only mount search_docs said the intact index was "unreadable ... rebuild
    # it", and on writable storage every search left -wal and -shm files next to it.
    docs, store = tmp_path / "docs", tmp_path / "store"
    docs.mkdir()
    store.mkdir()
    (docs / "a.md").write_text("# Title\n\nThe quick brown fox jumps.\n")
    db = store / "db.sqlite3"
    with DocIndex(db, docs) as index:
        index.update()
    assert sorted(p.name for p in store.iterdir()) == ["db.sqlite3"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()
    out = await SearchDocs(db).run(SearchDocs.Args(query="quick fox"), CTX)
    assert not out.is_error and "a.md:3" in out.text
    assert sorted(p.name for p in store.iterdir()) == ["db.sqlite3"]  # the search left nothing
    rc, text = _search_read_only(store, "db.sqlite3")
    assert rc == 0 and "a.md:3" in text, text
    # An index built before (still in WAL mode, no -wal left) is read as immutable there.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(db, legacy / "db.sqlite3")
    with sqlite3.connect(legacy / "db.sqlite3") as conn:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    assert sorted(p.name for p in legacy.iterdir()) == ["db.sqlite3"]
    rc, text = _search_read_only(legacy, "db.sqlite3")
    assert rc == 0 and "a.md:3" in text, text


def test_a_file_name_that_is_not_utf8_is_skipped_and_the_rest_indexed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `qwq-agent index` ended with "unexpected error ... UnicodeEncodeError" (exit 70) and indexed
    # nothing: the walk's name held a lone surrogate, which SQLite's UTF-8 text cannot.
    root = tmp_path / "docs"
    root.mkdir()
    (root / "ok.md").write_text("# ok\n\nhello okword\n")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.md"), "wb") as f:
        f.write(b"# Cafe\n\nhello oddword\n")
    os.mkdir(os.path.join(os.fsencode(root), b"d\xe9j\xe0"))
    with open(os.path.join(os.fsencode(root), b"d\xe9j\xe0", b"inner.md"), "wb") as f:
        f.write(b"# Inner\n\nhello innerword\n")
    assert main(["index", str(root), "--db", str(tmp_path / "db.sqlite3"), "--query", "okword"]) == 0
    printed = capsys.readouterr()
    out = printed.out + printed.err
    assert "ok.md:3" in out
    assert "caf\\xe9.md: file name is not UTF-8, skipped" in out
    assert "d\\xe9j\\xe0: folder name is not UTF-8, skipped" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="drops root's capabilities with setpriv to meet a permission")
def test_a_folder_that_cannot_be_listed_is_reported_and_its_documents_are_kept(tmp_path: Path) -> None:

    # os.fwalk without `onerror` skipped a folder it could not open without a word, and the documents
    # indexed under it before were counted "removed" and dropped from the index.
    root = tmp_path / "docs"
    (root / "locked").mkdir(parents=True)
    (root / "top.md").write_text("# Top\n\nhello topword\n")
    (root / "locked" / "inner.md").write_text("# Inner\n\nhello innerword\n")
    db = tmp_path / "db.sqlite3"
    with DocIndex(db, root) as index:
        assert index.update().added == 2
    (root / "locked").chmod(0)
    # Root reads any folder; without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH it meets mode 000 too.
    try:
        done = _update_without_read_override(db, root)
    finally:
        (root / "locked").chmod(0o755)
    assert done.returncode == 0, done.stderr
    stats = IndexStats.model_validate_json(done.stdout)
    assert stats.removed == 0 and stats.unchanged == 1, stats
    assert stats.errors == [
        ("locked", "folder cannot be read (Permission denied); what was indexed under it is kept")
    ]
    with DocIndex(db, root) as index:
        assert locations(index, "innerword") == ["locked/inner.md:3"]


def test_html_with_cr_or_crlf_line_ends_is_cited_at_the_right_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    # by name: the package's own `extract` is the function
    extract_module = importlib.import_module("qwq_agent.docindex.extract")

    # html_parse counted only "\n" for source lines while the rest of the indexer (and libxml2's text)
    # counts a lone "\r" too: a page with classic-Mac line ends was cited at line 1 throughout, and
    # the note of a page cut at the cap said "indexed up to line 1".
    lines = [
        "<html><body>",
        "<h2>Intro</h2>",
        "<p>firstword para</p>",
        "",
        "<p>secondword para",
        "thirdword on the next line</p>",
        "<h2>Install</h2>",
        "<pre>make",
        "make installword</pre>",
        "<p>lastword</p>",
        "</body></html>",
    ]
    expected = {"firstword": 3, "secondword": 5, "thirdword": 6, "installword": 9, "lastword": 10}
    root = tmp_path / "docs"
    root.mkdir()
    ends = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}
    for name, end in ends.items():
        (root / f"{name}.html").write_bytes(end.join(lines).encode())
    with build(root, tmp_path) as index:
        index.update()
        for name in ends:
            for word, line in expected.items():
                assert locations(index, word, path_glob=f"{name}.html") == [f"{name}.html:{line}"], (
                    name,
                    word,
                )
    # A page cut at the cap: the note names the line the cut falls in, whatever the line ends.
    monkeypatch.setattr(extract_module, "MAX_HTML_CHARS", len("\n".join(lines[:5])) + 3)
    for end in ends.values():
        done = extract_module.extract_document(end.join(lines).encode(), "html")
        assert done.note is not None and done.note.endswith("indexed up to line 6"), (end, done.note)


def test_html_past_the_depth_cap_keeps_scripts_out_and_headings_as_sections(tmp_path: Path) -> None:
    from qwq_agent.html_parse import MAX_DEPTH

    # html_parse dropped every start tag past MAX_DEPTH open elements: behind a few hundred unclosed
    # `<font>`s a <script>'s code and a <style>'s rules were indexed as text, and no <h2> started a
    # section (the rest of the page was one block, cited at one line).
    fonts = "\n".join(f"<font size=2>line {i}<br>" for i in range(MAX_DEPTH + 44))
    page = (
        f"<html><head><title>t</title></head><body>{fonts}\n"  # lines 1..300
        "<script>var apiKey='scriptword';</script><style>.styleword{color:red}</style>\n"
        "<h2>Install</h2>\n<p>run makeword</p>\n<h2>Usage</h2>\n<p>call useword</p></body></html>"
    )
    root = tmp_path / "docs"
    root.mkdir()
    (root / "deep.html").write_text(page)
    first = MAX_DEPTH + 44 + 2  # the line of the first <h2>
    with build(root, tmp_path) as index:
        index.update()
        assert locations(index, "scriptword") == [] and locations(index, "styleword") == []
        assert locations(index, "makeword") == [f"deep.html:{first + 1}"]
        assert locations(index, "useword") == [f"deep.html:{first + 3}"]
        assert sorted(h.heading for h in index.search("makeword OR useword")) == ["Install", "Usage"]


def _as_built_by_an_older_extractor(db: Path, path: str, error: str) -> None:
    """Make `db` what an older qwq-agent left: no extractor version in its meta, and `path` stored as
    that version extracted it (an error entry, no sections), with the file's mtime and size unchanged."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DELETE FROM meta WHERE key = 'extractor'")
        (file_id,) = conn.execute("SELECT id FROM files WHERE path = ?", (path,)).fetchone()
        conn.execute("DELETE FROM fts WHERE rowid IN (SELECT id FROM chunks WHERE file_id = ?)", (file_id,))
        conn.execute("DELETE FROM chunks WHERE file_id = ?", (file_id,))
        conn.execute("UPDATE files SET error = ? WHERE id = ?", (error, file_id))


def test_an_index_built_by_an_older_extractor_is_read_again_on_update(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An index built before extraction changed (the charset and byte-order-mark fixes) kept that
    # extraction for good: every file's mtime and size were unchanged, so none was read again, and a
    # UTF-16 file stayed an error entry ("looks like a binary file"), unsearchable, with no word of it.
    root = tmp_path / "docs"
    root.mkdir()
    (root / "wide.txt").write_bytes("Notes on кэширование\n".encode("utf-16"))
    (root / "plain.md").write_text("# Plain\n\nnothing changed here\n")
    db = tmp_path / "old.sqlite3"
    assert main(["index", str(root), "--db", str(db)]) == 0
    capsys.readouterr()
    _as_built_by_an_older_extractor(db, "wide.txt", "looks like a binary file")
    with DocIndex.open_existing(db) as old:
        assert old.outdated and locations(old, "кэширование") == []  # still searchable, and says so
    assert main(["index", str(root), "--db", str(db), "--query", "кэширование"]) == 0
    out = capsys.readouterr().out
    assert "updated 2, removed 0, unchanged 0" in out
    assert "re-read 2 files: the index was built by an older extractor" in out
    assert "wide.txt:1" in out
    with DocIndex.open_existing(db) as index:
        assert not index.outdated
    # Read again once: the next update reads nothing.
    assert main(["index", str(root), "--db", str(db), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["updated"], counts["unchanged"], counts["reread"]) == (0, 2, 0)


async def test_search_docs_on_an_index_built_by_an_older_extractor_still_searches_and_says_so(
    corpus: Path, tmp_path: Path
) -> None:
    with build(corpus, tmp_path) as index:
        index.update()
        assert not index.outdated
    db = tmp_path / "index.sqlite3"
    tool = SearchDocs(db)
    fresh = await tool({"query": "counterweight Jupiter"}, CTX)
    assert "older" not in fresh.text and not fresh.metadata.get("index_outdated")
    _as_built_by_an_older_extractor(db, "notes.txt", "could not be decoded")
    before = db.read_bytes()
    out = await tool({"query": "counterweight Jupiter"}, CTX)
    assert not out.is_error and "[1] guide.md:11" in out.text
    assert out.metadata["index_outdated"] is True
    assert "built by an older qwq-agent" in out.text and "qwq-agent index" in out.text
    assert db.read_bytes() == before  # a query only reads


@pytest.mark.skipif(os.geteuid() != 0, reason="drops root's capabilities with setpriv to meet a permission")
def test_an_update_of_an_older_index_that_could_not_list_a_folder_does_not_mark_it_current(
    tmp_path: Path,
) -> None:
    # The update stamped the index with this extractor's version although the files under the folder it
    # could not list were kept as the old extractor stored them: no later update read them again.
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "wide.txt").write_bytes("Notes on кэширование\n".encode("utf-16"))
    (root / "plain.md").write_text("# Plain\n\nnothing\n")
    db = tmp_path / "old.sqlite3"
    with DocIndex(db, root) as index:
        assert index.update().added == 2
    _as_built_by_an_older_extractor(db, "sub/wide.txt", "looks like a binary file")
    (root / "sub").chmod(0)
    try:
        done = _update_without_read_override(db, root)
    finally:
        (root / "sub").chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert IndexStats.model_validate_json(done.stdout).reread == 1  # plain.md
    with DocIndex(db, root) as index:
        assert index.outdated  # sub/wide.txt still holds the old extraction
        stats = index.update()
        assert stats.reread == 2 and not index.outdated
        assert locations(index, "кэширование") == ["sub/wide.txt:1"]


def test_an_index_built_by_a_newer_extractor_is_left_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Taken for an older one, it was read again whole and stamped back to this version: two versions
    # sharing an index would re-read it back and forth for ever.
    import sqlite3

    from qwq_agent.docindex.extract import EXTRACTOR_VERSION

    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("# A\n\nalpha words\n")
    db = tmp_path / "i.sqlite3"
    assert main(["index", str(root), "--db", str(db)]) == 0
    newer = str(int(EXTRACTOR_VERSION) + 1)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'extractor'", (newer,))
    (root / "b.md").write_text("# B\n\nbeta words\n")  # a new file is not added under the newer stamp
    capsys.readouterr()
    with DocIndex.open_existing(db) as index:
        assert not index.outdated and index.newer
    assert main(["index", str(root), "--db", str(db), "--query", "alpha"]) == 0
    out = capsys.readouterr().out
    assert f"built by a newer qwq-agent (extractor {newer}, this one has {EXTRACTOR_VERSION})" in out
    assert "older" not in out and "a.md:3" in out  # still searched
    with DocIndex.open_existing(db) as index:
        assert index._meta("extractor") == newer and index.file_count() == 1


def _update_without_read_override(db: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """`DocIndex(db, root).update()` in a process without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (root
    reads any folder; without them it meets mode 000 too); its `IndexStats` as JSON on stdout."""
    update = (
        "import sys; from qwq_agent.docindex import DocIndex\n"
        "with DocIndex(sys.argv[1], sys.argv[2]) as index: print(index.update().model_dump_json())"
    )
    drop = "-dac_override,-dac_read_search"
    return subprocess.run(
        [
            "setpriv",
            f"--inh-caps={drop}",
            f"--bounding-set={drop}",
            sys.executable,
            "-c",
            update,
            str(db),
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
