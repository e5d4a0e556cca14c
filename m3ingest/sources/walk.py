"""Finding the files of ingest folders: globs, default excludes, links, unreadable entries, a deterministic order.

Source ids are paths relative to the ingest root in POSIX form, always valid UTF-8 (the records,
the stores and JSON output need it). A name that is valid UTF-8 is its own id. In a name that is
not, each byte that is not part of a valid UTF-8 sequence is written ``\\xNN`` (two lowercase hex
digits): the file ``m<0xff>name.md`` has the id ``m\\xffname.md``, a folder ``d<0xe9>`` gives
``d\\xe9/...``. ``SourceFile.path`` stays the real path that opens the file. Two names can then
share an id (``m<0xff>name.md`` and a file really named ``m\\xffname.md``); the walk reads one of
them, always the same, and reports the other as a ``SourceFailure``.

Links are followed (``follow_symlinks``) while their target lies inside the ingest root; a link
(to a file or a folder) whose target resolves outside it is reported, not followed, unless
``outside_root`` is set. Every entry that exists but cannot be read (a FIFO, socket or device, a
broken link, a link loop, an entry or folder that cannot be stated or listed) is reported with its
own source id, so that callers keep what they hold for it; files only when their name has a
registered suffix and passes the globs, folders unless excluded.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..printable import printable
from .extractors import supported_suffixes

#: Folder names never entered unless ``default_excludes=False`` (besides every name starting with ".").
DEFAULT_EXCLUDED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", "node_modules"})


#: What ``stat`` says an entry is, for those that are not regular files or folders.
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


@dataclass(frozen=True)
class SourceFile:
    """A file to ingest: ``source_id`` is its path relative to ``root`` in POSIX form (bytes that are not
    UTF-8 written ``\\xNN``), ``path`` the real one; size and mtime from one stat."""

    path: Path
    root: Path
    source_id: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class SourceFailure:
    """Something under an ingest root that could not be walked (unreadable folder, symlink loop, ...)."""

    path: Path
    source_id: str
    reason: str


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay within one path segment, ``**`` spans segments, ``**/`` also matches no folder."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (close := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : close]
            out.append("[" + ("^" + body[1:] if body[0] == "!" else body).replace("\\", "\\\\") + "]")
            i = close + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_match(source_id: str, pattern: str) -> bool:
    """Whether a POSIX ``source_id`` matches ``pattern``.

    A pattern with a ``/`` is matched against the whole id (``docs/**/*.md``); one without is matched
    against the file name at any depth (``*.md``), as in ``.gitignore``.
    """
    pattern = pattern.strip().removeprefix("./").rstrip("/")
    target = source_id if "/" in pattern else source_id.rpartition("/")[2]
    return _glob_regex(pattern).fullmatch(target) is not None


def _any(source_id: str, patterns: Iterable[str]) -> bool:
    return any(glob_match(source_id, p) for p in patterns)


def walk(
    roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    follow_symlinks: bool = True,
    *,
    default_excludes: bool = True,
    outside_root: bool = False,
) -> Iterator[SourceFile | SourceFailure]:
    """The files with a registered suffix under each root (a folder, or one file given directly), in order.

    Within a root, files come in the order of their source ids (code-point order). ``include``: if
    given, a file must match one of these globs; ``exclude``: files and folders matching any are
    skipped. By default names starting with "." and ``DEFAULT_EXCLUDED_DIRS`` are skipped too.
    ``follow_symlinks=False`` skips every link; otherwise links are followed unless their target is
    outside the root, which ``outside_root=True`` allows (a root given as a file is read whatever it
    is). A source id already produced by another file is reported as a ``SourceFailure``, as are
    missing roots, links leading outside the root, and entries that cannot be read; the walk then
    carries on. A failed folder's ``source_id`` is its id (``"."`` for a root), so callers can keep
    what lies under it.
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    include, exclude = tuple(include), tuple(exclude)
    suffixes = supported_suffixes()
    seen: dict[str, SourceFile] = {}
    for root in map(Path, roots):
        rules = _Rules(root, include, exclude, follow_symlinks, default_excludes, outside_root, suffixes)
        for item in _walk_root(rules):
            if isinstance(item, SourceFile):
                first = seen.setdefault(item.source_id, item)
                if first is not item and first.path != item.path:
                    yield SourceFailure(item.path, item.source_id, _same_id(first, item))
                    continue
            yield item


def _same_id(first: SourceFile, second: SourceFile) -> str:
    if first.root != second.root:
        return (
            f"same source id as a file under {printable(str(first.root))}; "
            "ingest these folders separately or pass their common parent"
        )
    return (
        f"same source id as {printable(str(first.path))} (bytes that are not UTF-8 are written \\xNN); "
        "rename one of them"
    )


def _id_name(name: str) -> str:
    """A file or folder name as it appears in source ids: valid UTF-8, other bytes as ``\\xNN``."""
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    return name


class _Rules:
    """What one root's walk takes and skips."""

    def __init__(
        self,
        root: Path,
        include: tuple[str, ...],
        exclude: tuple[str, ...],
        follow: bool,
        defaults: bool,
        outside_root: bool,
        suffixes: frozenset[str],
    ) -> None:
        self.root = root
        self.include, self.exclude = include, exclude
        self.follow, self.defaults, self.outside_root = follow, defaults, outside_root
        self.suffixes = suffixes
        self._inside = os.path.join(os.path.realpath(root), "")

    def skips(self, name: str) -> bool:
        return self.defaults and (name.startswith(".") or name in DEFAULT_EXCLUDED_DIRS)

    def wants_file(self, source_id: str, name: str) -> bool:
        if os.path.splitext(name)[1].lower() not in self.suffixes or _any(source_id, self.exclude):
            return False
        return not self.include or _any(source_id, self.include)

    def wants_folder(self, source_id: str) -> bool:
        return not (_any(source_id, self.exclude) or _any(source_id + "/", self.exclude))

    def leaves_root(self, link: Path) -> str | None:
        """Where ``link`` leads when that is outside the root and that is not allowed, else None."""
        if self.outside_root:
            return None
        target = os.path.realpath(link)
        return None if os.path.join(target, "").startswith(self._inside) else target


def _walk_root(rules: _Rules) -> Iterator[SourceFile | SourceFailure]:
    root = rules.root
    # A root that cannot be read reports source id ".": everything recorded under it is kept.
    try:
        st = root.stat()
    except FileNotFoundError:
        yield SourceFailure(root, ".", "does not exist" if not root.is_symlink() else "broken symlink")
        return
    except OSError as e:
        yield SourceFailure(root, ".", f"cannot read: {e.strerror or e}")
        return
    if stat.S_ISDIR(st.st_mode):
        yield from _walk_dir(rules, root, "", {_dir_key(st)})
        return
    source_id = _id_name(root.name)
    if root.suffix.lower() not in rules.suffixes:
        supported = ", ".join(sorted(rules.suffixes))
        yield SourceFailure(
            root, source_id, f"unsupported file type {root.suffix or '(no suffix)'!r}; supported: {supported}"
        )
    elif not stat.S_ISREG(st.st_mode):
        yield SourceFailure(root, source_id, _not_regular(st))
    else:
        yield SourceFile(root, root.parent, source_id, st.st_size, st.st_mtime_ns)


def _dir_key(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _not_regular(st: os.stat_result) -> str:
    kind = _KINDS.get(stat.S_IFMT(st.st_mode))
    return f"not a regular file ({kind})" if kind else "not a regular file"


def _unreadable(error: OSError, is_link: bool) -> str | None:
    """Why an entry that was listed cannot be stated; None when it has vanished since."""
    if isinstance(error, FileNotFoundError):
        return "broken symlink (its target does not exist)" if is_link else None
    if error.errno == errno.ELOOP:
        return "symlink loop"
    return f"cannot read: {error.strerror or error}"


def _listed_as_folder(entry: os.DirEntry[str]) -> bool:
    """Whether the listing says ``entry`` is a folder (no stat needed on most file systems)."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _walk_dir(
    rules: _Rules, folder: Path, prefix: str, ancestors: set[tuple[int, int]]
) -> Iterator[SourceFile | SourceFailure]:
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as e:
        yield SourceFailure(folder, prefix.rstrip("/") or ".", f"cannot list folder: {e.strerror or e}")
        return
    listed = []
    for entry in entries:
        if rules.skips(entry.name):
            continue
        is_link = False
        st: os.stat_result | OSError
        try:
            is_link = entry.is_symlink()
            if is_link and not rules.follow:
                continue
            st = entry.stat(follow_symlinks=True)
            is_dir = stat.S_ISDIR(st.st_mode)
        except OSError as e:
            st = e
            is_dir = not is_link and _listed_as_folder(entry)
        source_id = prefix + _id_name(entry.name)
        # Sorting folders as "name/" makes the depth-first order the code-point order of source ids;
        # the names themselves order two that share an id.
        listed.append((source_id + "/" if is_dir else source_id, entry.name, st, is_link, is_dir))
    for key, name, st, is_link, is_dir in sorted(listed, key=lambda x: x[:2]):
        source_id = key[:-1] if is_dir else key
        path = folder / name
        if not (rules.wants_folder(source_id) if is_dir else rules.wants_file(source_id, name)):
            continue
        if isinstance(st, OSError):
            reason = _unreadable(st, is_link)
            if reason is not None:
                yield SourceFailure(path, source_id, reason)
            continue
        if is_link and (target := rules.leaves_root(path)) is not None:
            yield SourceFailure(
                path,
                source_id,
                f"link to {printable(target)}, outside the ingest root; "
                "set sources.follow_links_outside_root = true to ingest it",
            )
            continue
        if is_dir:
            dkey = _dir_key(st)
            if dkey in ancestors:
                yield SourceFailure(
                    path, source_id, f"symlink loop (leads back to {printable(os.path.realpath(path))})"
                )
                continue
            yield from _walk_dir(rules, path, key, ancestors | {dkey})
        elif not stat.S_ISREG(st.st_mode):
            yield SourceFailure(path, source_id, _not_regular(st))
        else:
            yield SourceFile(path, rules.root, source_id, st.st_size, st.st_mtime_ns)
