"""An upload's plan while it is staged: every entry written under a temporary name beside its real place,
renamed into place only once all are written, so a failure part-way changes nothing."""

import contextlib
import os
import secrets
import stat

from .files import _stem
from .framing import RequestError
from .settings import WORKSPACE

_MAX_HOPS = 40  # the kernel's own limit on links followed in one path (ELOOP)
_BACK = object()  # on the walk's stack: the end of a link's target, which must be a folder that exists


class Staged:
    """An upload's files, links and folders while it is written: each file and link under a temporary name
    beside its place (`commit` renames them into place once all are written), each folder it made.

    A failure (a full workspace, the user's file size limit) part-way must change nothing: a file it
    replaced unlinked first and written in place was gone, its new version cut, and the files before it
    in the archive were in. So `undo` removes the temporary files and the folders the upload made, and
    the old files were never touched.

    Every path is found as the archive extracted in order would find it (`folder`): through the links
    already on disk and those the archive placed before (`placed`), never onto what one of its own files
    will be. So conflicts between entries (a file `a` and a file `a/b`) are refused while staging, before
    anything is renamed; a commit that still fails found the workspace changed meanwhile by someone else.
    Temporaries and places are real paths (no link in them), so the commit's renames and the clean-up
    reach the very files staging wrote, whatever links the commit put in place before them."""

    def __init__(self, shown):
        self.shown = shown
        self.moves = []  # (temporary name, place), in the archive's order: a later entry wins
        self.placed = {}  # place -> the link's target for a link staged there, None for a file
        self.made = []  # folders this upload made, parents first
        self.folders = []  # (folder, the host's mode) to narrow once all is in place
        self.entry = None  # the entry being written, for the error

    def folder(self, path, *, make=True):
        """The real path of the folder `path` (absolute, `..`-free) names once the archive is in place,
        made where missing when `make`; refused if it is, or will be, a file or leaves the workspace."""
        root = os.path.realpath(WORKSPACE)
        todo = path.split("/")[::-1]  # a stack: the next component last
        cur, hops, through = "/", 0, 0  # `through`: link targets being walked (nothing is made in them)
        while todo:
            part = todo.pop()
            if part is _BACK:
                through -= 1
                if not os.path.isdir(cur):
                    raise self._refuse(f"{path} leads through a link to {cur}, which is not a folder")
                continue
            if part in ("", "."):
                continue
            if part == "..":
                cur = os.path.dirname(cur)
                continue
            step = os.path.join(cur, part)
            if step in self.placed:
                target = self.placed[step]
                if target is None:
                    raise self._refuse(f"{step} is a file in this archive and is needed as a folder too")
            else:
                try:
                    st = os.lstat(step)
                except FileNotFoundError:
                    if not _inside(cur, root):
                        raise self._outside() from None
                    if through or not make:
                        raise self._refuse(f"{step} does not exist (in {path})") from None
                    os.mkdir(step)
                    self.made.append(step)
                    cur = step
                    continue
                if not stat.S_ISLNK(st.st_mode):
                    if not stat.S_ISDIR(st.st_mode):
                        raise self._refuse(f"{step} exists and is not a folder")
                    cur = step
                    continue
                target = os.readlink(step)
            hops += 1
            if hops > _MAX_HOPS:
                raise self._refuse(f"{path}: too many levels of links")
            if target.startswith("/"):
                cur = "/"
            through += 1
            todo.append(_BACK)
            todo.extend(target.split("/")[::-1])
        if not _inside(cur, root):
            raise self._outside()
        return cur

    def place(self, dest, name, *, make=True):
        """The real place of the archive's `name` under `dest`: its folder found (and made) by `folder`,
        its last component as it is (a link there is replaced, not followed)."""
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if not parts:
            return self.folder(dest, make=make)
        return os.path.join(self.folder("/".join([dest, *parts[:-1]]), make=make), parts[-1])

    def temporary(self, place, target=None):
        """A temporary name beside `place` for what will be put there: a link to `target`, or a file."""
        if os.path.isdir(place) and not os.path.islink(place) and place not in self.placed:
            raise self._refuse(f"{place} is a folder, not a file")
        directory, name = os.path.split(place)
        tmp = os.path.join(directory, f".{_stem(name)}.{secrets.token_hex(6)}.qwq-tmp")
        self.moves.append((tmp, place))
        self.placed[place] = target
        return tmp

    def staged_as(self, place):
        """The temporary name of the last file staged for `place` (a hard link's target), else `place`."""
        for tmp, target in reversed(self.moves):
            if target == place:
                return tmp
        return place

    def undo(self):
        for tmp, _ in self.moves:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for folder in reversed(self.made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)

    def failure(self, exc):
        why = str(exc) if isinstance(exc, RequestError) else (exc.strerror or str(exc))
        where = f" writing {self.entry}" if self.entry else ""
        return RequestError(
            exc.kind if isinstance(exc, RequestError) else "ToolError",
            f"Uploading to {self.shown} failed{where}: {why}; nothing was changed (what the upload had "
            "written is removed)",
        )

    def commit(self):
        for i, (tmp, place) in enumerate(self.moves):
            try:
                os.rename(tmp, place)
            except OSError as exc:  # the place changed since it was checked (made a folder meanwhile)
                for rest, _ in self.moves[i:]:
                    with contextlib.suppress(OSError):
                        os.unlink(rest)
                for folder in reversed(self.made):  # those the entries before it did not fill
                    with contextlib.suppress(OSError):
                        os.rmdir(folder)
                raise RequestError(
                    "ToolError",
                    f"Uploading to {self.shown} failed putting {place} in place: {exc.strerror or exc} "
                    f"(it was changed in the sandbox meanwhile). The {i} entries before it were written, "
                    "it and those after it were not.",
                ) from None
        for folder, mode in self.folders:
            _narrow_folder(folder, mode)

    def _outside(self):
        return RequestError(
            "UnsafeArchive", f"entry {self.entry!r} would be written outside the workspace through a link"
        )

    @staticmethod
    def _refuse(why):
        return RequestError("ToolError", why)


def stage(archive, kept, dest, staged):
    """Write every entry of `kept` under its temporary name (`Staged`); the bytes of file contents."""
    staged.folder(dest)
    written = 0
    for member in kept:
        staged.entry = member.name
        if member.isdir():
            place = staged.place(dest, member.name)
            staged.folder(place)  # a link there is followed: its folder is the one meant
            staged.folders.append((place, member.mode))
            continue
        place = staged.place(dest, member.name)
        if member.issym():
            os.symlink(member.linkname, staged.temporary(place, member.linkname))
        elif member.islnk():
            source = staged.staged_as(staged.place(dest, member.linkname, make=False))
            os.link(source, staged.temporary(place), follow_symlinks=False)
        else:
            source = archive.extractfile(member)
            if source is None:  # check_member let only regular files get here
                raise RequestError("UnsafeArchive", f"entry {member.name!r} is not a regular file")
            fd = os.open(
                staged.temporary(place),
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                (member.mode & 0o755) | 0o600,
            )
            with os.fdopen(fd, "wb") as out, source as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            written += member.size
    staged.entry = None
    return written


def _inside(path, root):
    return path == root or path.startswith(root + "/")


def _narrow_folder(path, mode):
    """Take from the folder at `path` the permission bits the host's folder did not have (`mode`): the
    operator's 0700 `secrets/` stays 0700, not mkdir's 0755. Bits are only taken away, the owner keeps
    read, write and search. A link (the agent's, at a later upload's folder) or a folder the user does not
    own is left as it is: only a narrowing is lost, not the upload."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & ((mode & 0o777) | 0o700 | 0o7000))
    finally:
        os.close(fd)
