"""The patch of what an agent changed in /workspace, computed inside the sandbox with git.

`record_baseline` snapshots /workspace right after the upload as a git tree, in a git directory of its
own under the sandbox user's home (so the workspace's own `.git`, if any, gets no new refs or index
changes, and a folder that is not a repository needs none). For a repository, that directory borrows
the repository's objects (`objects/info/alternates`) and its `info/exclude`; its `.gitignore` files
apply either way. `workspace_patch` snapshots the tree again and returns `git diff` between the two:
changed, new and deleted files, binary ones in git's binary format; git's bytes, those that are not
UTF-8 held as lone surrogates (`patch_bytes` gives them back; JSON shows them as `\\xNN`). Apply it
with `git apply`, which checks the whole text first and applies all of it or nothing; a text-only
patch (one that passed the host's check) also applies with GNU `patch -p1`, but that is not atomic: it
skips a hunk that does not apply and writes the rest, the patch half done. Ignored files
(`.gitignore`) are in neither snapshot.

Symlinks the run created or changed that are absolute or resolve out of the repository (followed through
the other links of the end snapshot, as the host's checkout will hold them once the patch is applied, see
`link_judge`) are left out of the patch and named (`WorkspacePatch.left_out`):
`git apply` would plant them in the user's checkout, aiming a path of the repository at any file of the
host; copy-back leaves the same links out (`sandbox.archive_extract`). Links inside the repository stay.
The text that comes back is judged again on the host (`patch_text`), against the folders and links the
baseline recorded before the agent ran: everything in the sandbox after that (the snapshot's objects,
the patch file) is the agent's to rewrite, even between the judgement there and the diff. The host also
leaves out (and names) the files git would run commands from in a folder the patch makes look like a
git directory (its `config`, hooks: `git status` there would run them), as copy-back does, and links into
a `.git`; it refuses a text with a path through a link (one the checkout holds or the text makes), which
`git apply` refuses too but `patch -p1` would follow, and leaves out (and names) an entry whose path runs
through one only on a disk that ignores case or trailing dots (`docs/x` beside a link `Docs`), or whose
name ends in a blank (`patch -p1` would write it without).

`workspace_changes` runs whole under one deadline (`PATCH_TIMEOUT_S`): the sandbox's git, its files and
the reading back are the agent's to slow down, and a run's end waits on them. It reads back at most
`MAX_PATCH_BYTES` of patch and `MAX_LEFT_OUT_BYTES` of the list of links left out, whose size the agent
controls too (a sparse file grown to a gigabyte); past that, the links not named are said to be so.

Against the snapshot rather than the repository's HEAD: edits the user had not committed before the
run are theirs, not the agent's, and stay out of the patch (for a clean tree the two are the same).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import io
import secrets
import shlex
import tarfile
from typing import Any

from pydantic import BaseModel

from qwq_agent.agent import link_judge, patch_text
from qwq_agent.agent.per_sandbox import PerSandbox
from qwq_agent.deadline import Deadline
from qwq_agent.surrogates import escape_surrogates

BASELINE_DIR = "$HOME/.qwq-agent/baseline.git"
# Where the end snapshot is taken when the home has no room for it (`_changes`).
FALLBACK_DIR = "/tmp"
WORKSPACE = "/workspace"
GIT_TIMEOUT_S = 120.0
# Read back in pieces that stay under the shell's 32 KiB head of output once base64-encoded.
CHUNK_BYTES = 24 * 1024
MAX_PATCH_BYTES = 32 * 1024 * 1024
# The list of links left out of the patch (path, target, why; NUL-separated): a list past this, thousands
# of links, is named in part. The agent can make the file any size; it only names, the patch is cut anyway.
MAX_LEFT_OUT_BYTES = 1024 * 1024
# All of `workspace_changes`: snapshot, diff and up to MAX_PATCH_BYTES read back (about 1,400 shell calls:
# 3.5 minutes on a loaded 2-core machine); past this, a sandbox stalls them (a clean filter that sleeps).
PATCH_TIMEOUT_S = 600.0
# What a sandbox that ignores its calls' deadline gets past it before the collection is cancelled.
_BACKSTOP_S = 30.0

_GIT = 'git -c safe.directory="*" -c core.bare=false -c core.quotepath=false'
_ENV = f'export GIT_DIR="{BASELINE_DIR}" GIT_WORK_TREE={WORKSPACE}'


class PatchError(RuntimeError):
    """The workspace could not be snapshotted or diffed; the message has git's own words."""


class WorkspacePatch(BaseModel):
    """The patch, and what was left out of it: symlinks as `path -> target (why)`, files git would run
    commands from as `path (why)`. `text` is git's bytes, those that are not UTF-8 as lone surrogates
    (`patch_bytes` gives them back); in `left_out` they show as `\\xNN`."""

    text: str
    left_out: list[str] = []


class Baseline(BaseModel):
    """The tree /workspace held when the run began, whether it was a git repository, and the tree's
    folders and links (path to target): the host judges the patch's links against them."""

    tree: str
    repository: bool
    dirs: set[str] = set()
    links: dict[str, str] = {}


# Per sandbox, so that `Agent` finds the baseline of a sandbox `open_sandbox` prepared.
_baselines: PerSandbox[Baseline] = PerSandbox()


def baseline_of(sandbox: Any) -> Baseline | None:
    """The baseline recorded for `sandbox`, or None when none was."""
    return _baselines.get(sandbox)


def inherit_baseline(sandbox: Any, parent: Any) -> None:
    """Give `sandbox` the baseline of `parent`: it holds a snapshot of `parent`'s workspace and home,
    and with it the baseline's git directory, so its patch is against the same start."""
    _baselines.inherit(sandbox, parent)


class _Overdue(PatchError):
    """The deadline of `workspace_changes` passed."""


async def _sh(sandbox: Any, script: str, what: str, deadline: Deadline | None = None) -> str:
    left = deadline.left() if deadline is not None else None
    if left == 0:
        raise _Overdue(f"{what}: out of time")
    result = await sandbox.shell(f"set -e\n{script}", timeout=GIT_TIMEOUT_S, cwd=WORKSPACE, deadline=deadline)
    # Cut short by the deadline (its limit was shortened to end before it): the exit status says no more.
    cut_short = result.timed_out and left is not None and left < GIT_TIMEOUT_S
    if cut_short or (deadline is not None and deadline.expired):
        raise _Overdue(f"{what}: out of time")
    if result.exit_code != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise PatchError(f"{what} failed (exit {result.exit_code}): {detail}")
    return result.stdout


def _snapshot(index: str) -> str:
    """Shell lines that stage /workspace in the index file `index` (a path, expanded in double quotes)
    and print the tree's id."""
    return f'{_ENV} GIT_INDEX_FILE="{index}"\n{_GIT} add -A\n{_GIT} write-tree'


_JUDGE = "python3 -I -S -c " + shlex.quote(inspect.getsource(link_judge))


async def record_baseline(sandbox: Any) -> Baseline:
    """Snapshot /workspace as it is now; `workspace_patch` later diffs against it, and the host judges the
    patch's links against the snapshot's folders and links (kept in the `Baseline`)."""
    entries = f"{BASELINE_DIR}/entries"
    script = f"""
rm -rf "{BASELINE_DIR}"
mkdir -p "{BASELINE_DIR}"
git init -q --bare "{BASELINE_DIR}"
repo=no
if [ -d {WORKSPACE}/.git/objects ]; then
  repo=yes
  echo {WORKSPACE}/.git/objects > "{BASELINE_DIR}/objects/info/alternates"
  cp {WORKSPACE}/.git/info/exclude "{BASELINE_DIR}/info/exclude" 2>/dev/null || true
fi
echo "$repo"
tree=$({_snapshot(f"{BASELINE_DIR}/index")})
echo "$tree"
{_ENV}
{_JUDGE} --entries "$tree" > "{entries}"
wc -c < "{entries}"
"""
    # Read back now, before the agent runs: later, the git directory is the agent's to rewrite.
    lines = (await _sh(sandbox, script, "snapshotting /workspace with git")).split()
    dirs, links = link_judge.read_entries(await _read(sandbox, entries, int(lines[-1])))
    baseline = Baseline(tree=lines[-2], repository=lines[0] == "yes", dirs=dirs, links=links)
    _baselines.set(sandbox, baseline)
    return baseline


# Each symlink the run added or changed that leads out of the repository, judged from the end snapshot's
# own blobs and tree (`link_judge`, never the live /workspace, which ignored paths, the dropped links and a
# process still running in the sandbox can steer), goes back to its baseline entry (or out) in the end
# snapshot and is listed as NUL-separated path, target, why. Judged again until a round drops none: a kept
# link may have led through one that is now dropped. Literal pathspecs: a path holding `*` names only itself.
# The objects stay the agent's to rewrite after this judgement: the text is judged again on the host.
_OUTWARD_LINKS = f"""
: > "$scratch/left-out"
export GIT_LITERAL_PATHSPECS=1
while :; do
  dropped=no
  # Straight from the judge through a pipe: a file in the sandbox user's home could be rewritten meanwhile.
  while IFS= read -r -d '' path && IFS= read -r -d '' target && IFS= read -r -d '' why; do
    dropped=yes
    printf '%s\\0%s\\0%s\\0' "$path" "$target" "$why" >> "$scratch/left-out"
    entry=$({_GIT} ls-tree "$base" -- "$path" | cut -c1-6)
    if [ -n "$entry" ] && [ "$entry" != 040000 ]; then
      {_GIT} ls-tree -z "$base" -- "$path" | {_GIT} update-index -z --index-info
    else
      {_GIT} update-index --force-remove -- "$path"
    fi
  done < <({_JUDGE} "$base" "$now")
  wait $!  # the judge's own exit status: a judge that failed must fail the patch, not keep every link
  [ "$dropped" = yes ] || break
  now=$({_GIT} write-tree)
done
"""


# git's own form whatever the sandbox user's git config says (diff.noprefix, a textconv driver, an
# external diff): `patch_text` refuses any other.
_DIFF_OPTIONS = "--binary --no-color --no-ext-diff --no-textconv --no-renames --src-prefix=a/ --dst-prefix=b/"


async def workspace_patch(sandbox: Any, baseline: Baseline | None = None) -> str:
    """`git diff` of /workspace from `baseline` (default: the one recorded for `sandbox`) to now, without
    the symlinks that lead out of it (`workspace_changes` also names those)."""
    return (await workspace_changes(sandbox, baseline)).text


async def workspace_changes(
    sandbox: Any, baseline: Baseline | None = None, *, timeout: float = PATCH_TIMEOUT_S
) -> WorkspacePatch:
    """The patch of /workspace from `baseline` (default: the one recorded for `sandbox`) to now, and the
    symlinks left out of it because they are absolute or lead out of /workspace (and the files git would
    run commands from, `patch_text`). All of it within `timeout` seconds, else `PatchError` saying so."""
    baseline = baseline or baseline_of(sandbox)
    if baseline is None:
        raise PatchError("no baseline was recorded for this sandbox: call record_baseline after the upload")
    deadline = Deadline.after(timeout)
    try:
        async with asyncio.timeout(timeout + _BACKSTOP_S):
            return await _changes(sandbox, baseline, deadline)
    except (_Overdue, TimeoutError):
        raise PatchError(
            f"collecting the workspace patch took more than {timeout:g} s (the sandbox's git, or reading "
            "back what it wrote, was that slow); no patch was kept"
        ) from None


async def _changes(sandbox: Any, baseline: Baseline, deadline: Deadline) -> WorkspacePatch:
    """`workspace_changes`'s work, each call to the sandbox within `deadline`.

    The end snapshot's index, objects and the patch file go in the baseline's git directory. That is in
    the sandbox user's home, which the agent can fill (a pip cache, a dataset in ~); when the diff fails
    there, it is taken once more with those files (the new objects too, the baseline's borrowed) in a
    new folder of /tmp, removed once read back. The error then says both attempts.
    """
    try:
        listed, size = await _diff(sandbox, baseline, BASELINE_DIR, deadline)
    except _Overdue:
        raise
    except PatchError as exc:
        first = str(exc)
    else:
        return await _read_changes(sandbox, baseline, BASELINE_DIR, listed, size, deadline)
    scratch = f"{FALLBACK_DIR}/qwq-agent-patch-{secrets.token_hex(8)}"
    try:
        try:
            listed, size = await _diff(sandbox, baseline, scratch, deadline)
        except _Overdue:
            raise
        except PatchError as again:
            raise PatchError(f"{first}; again in {FALLBACK_DIR}: {again}") from None
        changes = await _read_changes(sandbox, baseline, scratch, listed, size, deadline)
    except Exception:
        await _remove(sandbox, scratch, deadline)
        raise
    await _remove(sandbox, scratch, deadline)
    return changes


async def _diff(sandbox: Any, baseline: Baseline, scratch: str, deadline: Deadline) -> tuple[int, int]:
    """Snapshot /workspace again and write the patch and the links left out into `scratch` (the baseline's
    git directory, or a new folder whose objects borrow the baseline's); their sizes."""
    if scratch == BASELINE_DIR:
        setup = f'scratch="{BASELINE_DIR}"'
    else:
        # A new folder of our own (mkdir fails on one the agent made); git's new objects go there too.
        setup = (
            f"scratch={shlex.quote(scratch)}\n"
            'mkdir -m 700 "$scratch" "$scratch/objects"\n'
            'export GIT_OBJECT_DIRECTORY="$scratch/objects"\n'
            f'export GIT_ALTERNATE_OBJECT_DIRECTORIES="{BASELINE_DIR}/objects"'
        )
    script = f"""
{setup}
cp -p "{BASELINE_DIR}/index" "$scratch/index-end"
now=$({_snapshot("$scratch/index-end")})
base={shlex.quote(baseline.tree)}
{_ENV} GIT_INDEX_FILE="$scratch/index-end"
{_OUTWARD_LINKS}
{_GIT} diff {_DIFF_OPTIONS} "$base" "$now" > "$scratch/run.patch"
wc -c < "$scratch/left-out"
wc -c < "$scratch/run.patch"
"""
    sizes = (await _sh(sandbox, script, "diffing /workspace with git", deadline)).split()
    return int(sizes[-2]), int(sizes[-1])


async def _remove(sandbox: Any, scratch: str, deadline: Deadline) -> None:
    """Remove the fallback's folder, if the sandbox still answers in time (it goes with the sandbox)."""
    with contextlib.suppress(Exception):
        await _sh(sandbox, f"rm -rf {shlex.quote(scratch)}", "removing the patch's scratch folder", deadline)


async def _read_changes(
    sandbox: Any, baseline: Baseline, scratch: str, listed: int, size: int, deadline: Deadline
) -> WorkspacePatch:
    """The patch and the links left out, as `_diff` wrote them into `scratch`, read back and judged."""
    if size > MAX_PATCH_BYTES:
        raise PatchError(f"the patch is {size} bytes, over the {MAX_PATCH_BYTES}-byte limit")
    listing = await _read(sandbox, f"{scratch}/left-out", min(listed, MAX_LEFT_OUT_BYTES), deadline)
    fields = listing.split(b"\0")[:-1]  # whole fields only: a list read in part ends inside one
    # The judge writes no empty field; a file of zeros (a sparse one) would name a million blank links.
    left_out = [
        "{} -> {} ({})".format(*(_shown(f.decode("utf-8", "surrogateescape")) for f in fields[i : i + 3]))
        for i in range(0, len(fields) - 2, 3)
        if all(fields[i : i + 3])
    ]
    if listed > MAX_LEFT_OUT_BYTES:
        left_out.append(
            f"more links, not named: the list of those left out is {listed} bytes, past the "
            f"{MAX_LEFT_OUT_BYTES} read back (they are out of the patch all the same)"
        )
    # Bytes that are not UTF-8 (a Latin-1 source file, such a name) are kept as lone surrogates, so the
    # text is git's, byte for byte (`patch_bytes`): U+FFFD would corrupt a new file and break a hunk.
    text = (await _read(sandbox, f"{scratch}/run.patch", size, deadline)).decode("utf-8", "surrogateescape")
    try:
        # Up to MAX_PATCH_BYTES of the sandbox's text: seconds of work at worst, so not on the event loop.
        text, cut = await asyncio.to_thread(patch_text.cut_outward_links, text, baseline.dirs, baseline.links)
    except patch_text.PatchTextError as exc:
        raise PatchError(f"the patch read back from the sandbox was refused: {_shown(str(exc))}") from exc
    return WorkspacePatch(text=text, left_out=left_out + [c for c in map(_shown, cut) if c not in left_out])


def _shown(text: str) -> str:
    """A name for a message: bytes that are not UTF-8 as `\\xNN` (a message goes to JSON and the trace)."""
    return escape_surrogates(text)


def patch_bytes(text: str) -> bytes:
    """The bytes of a patch text (`WorkspacePatch.text`, `RunResult.patch`), exactly as git wrote them:
    write these to a file for `git apply`. (Bytes that are not UTF-8 are held in the text as lone
    surrogates, `surrogateescape`; `text.encode()` alone refuses them.)"""
    return text.encode("utf-8", "surrogateescape")


async def apply_patch(
    sandbox: Any, patch: str, baseline: Baseline | None = None, *, clean: bool = False
) -> None:
    """Make /workspace `baseline`'s tree (default: the one recorded for `sandbox`) with `patch` applied:
    what the user's checkout holds once a run's patch (`workspace_patch`) is applied to it.

    For a sandbox restored from a snapshot of the run's start: that start may already differ from the
    baseline (the parent's own changes), and the patch, being against the baseline, holds those too; so
    the files the baseline tracks are first put back as they were in it. Ignored files (`.gitignore`)
    are left as they are, unless `clean`: then every file the baseline's tree does not hold, ignored
    or not, is removed first (`git clean -ffdx`), and the git directory's own settings (its `config`,
    `info/attributes`: the start state's to rewrite) are reset to a new one's. git never reads the
    sandbox's global or system settings here. Raises `PatchError` (with git's words) when the patch
    does not apply.
    """
    baseline = baseline or baseline_of(sandbox)
    if baseline is None:
        raise PatchError("no baseline was recorded for this sandbox: call record_baseline after the upload")
    # File calls only reach /workspace: the patch lands there under a name of its own, and is moved
    # into the baseline's git directory before anything looks at the tree.
    name = f".qwq-agent-apply-{secrets.token_hex(8)}.patch"
    data = patch_bytes(patch)

    def pack() -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    await sandbox.upload_archive(await asyncio.to_thread(pack), WORKSPACE)
    kept = f"{BASELINE_DIR}/apply.patch"
    # `clean`: no filter, fsmonitor or attribute the start state's run set up may act on the tree (a clean
    # filter runs a command; `eol`/`working-tree-encoding` rewrite the files checked out): the settings
    # `git init --bare` writes.
    config = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"
    fresh = f"""printf %s {shlex.quote(config)} > "{BASELINE_DIR}/config"
rm -f "{BASELINE_DIR}/info/attributes"
"""
    wipe = f"{_GIT} clean -ffdxq\n"
    script = f"""
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
mv -f {WORKSPACE}/{name} "{kept}"
{fresh if clean else ""}cp -p "{BASELINE_DIR}/index" "{BASELINE_DIR}/index-apply"
{_ENV} GIT_INDEX_FILE="{BASELINE_DIR}/index-apply"
{_GIT} add -A
{_GIT} read-tree -u --reset {shlex.quote(baseline.tree)}
{wipe if clean else ""}if [ -s "{kept}" ]; then {_GIT} apply --whitespace=nowarn "{kept}"; fi
rm -f "{kept}"
"""
    await _sh(sandbox, script, "applying the patch to /workspace")


async def _read(sandbox: Any, path: str, size: int, deadline: Deadline | None = None) -> bytes:
    """The first `size` bytes of `path` in the sandbox, in pieces the shell's output limit lets through."""
    data = bytearray()
    while len(data) < size:
        piece = await _sh(
            sandbox,
            f'tail -c +{len(data) + 1} "{path}" | head -c {min(CHUNK_BYTES, size - len(data))} | base64 -w0',
            "reading the patch",
            deadline,
        )
        chunk = base64.b64decode(piece.strip())
        if not chunk:
            raise PatchError(f"{path} ended after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)
