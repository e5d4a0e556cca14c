"""Finding the files of ingest folders: globs, default excludes, symlink loops, a deterministic order."""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .extractors import supported_suffixes

#: Folder names never entered unless ``default_excludes=False`` (besides every name starting with ".").
DEFAULT_EXCLUDED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", "node_modules"})


@dataclass(frozen=True)
class SourceFile:
    """A file to ingest: ``source_id`` is its path relative to ``root`` in POSIX form; size and mtime from one stat."""

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
) -> Iterator[SourceFile | SourceFailure]:
    """The files with a registered suffix under each root (a folder, or one file given directly), in order.

    Within a root, files come in the order of their source ids (code-point order). ``include``: if
    given, a file must match one of these globs; ``exclude``: files and folders matching any are
    skipped. By default names starting with "." and ``DEFAULT_EXCLUDED_DIRS`` are skipped too. A
    source id already produced by an earlier root is reported as a ``SourceFailure``, as are missing
    roots, unreadable folders, broken symlinks and symlink loops; the walk then carries on. A failed
    folder's ``source_id`` is its id (``"."`` for a root), so callers can keep what lies under it.
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    include, exclude = tuple(include), tuple(exclude)
    suffixes = supported_suffixes()
    seen: dict[str, Path] = {}
    for root in map(Path, roots):
        for item in _walk_root(root, include, exclude, follow_symlinks, default_excludes, suffixes):
            if isinstance(item, SourceFile):
                first = seen.setdefault(item.source_id, item.root)
                if first != item.root:
                    yield SourceFailure(
                        item.path,
                        item.source_id,
                        f"same source id as a file under {first}; ingest these folders separately or pass their common parent",
                    )
                    continue
            yield item


def _walk_root(
    root: Path, include: tuple[str, ...], exclude: tuple[str, ...], follow: bool, defaults: bool, suffixes: frozenset[str]
) -> Iterator[SourceFile | SourceFailure]:
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
        yield from _walk_dir(root, root, "", include, exclude, follow, defaults, suffixes, {_dir_key(st)})
    elif root.suffix.lower() not in suffixes:
        yield SourceFailure(root, root.name, f"unsupported file type {root.suffix or '(no suffix)'!r}; supported: {', '.join(sorted(suffixes))}")
    else:
        yield SourceFile(root, root.parent, root.name, st.st_size, st.st_mtime_ns)


def _dir_key(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _walk_dir(
    root: Path,
    folder: Path,
    prefix: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    follow: bool,
    defaults: bool,
    suffixes: frozenset[str],
    ancestors: set[tuple[int, int]],
) -> Iterator[SourceFile | SourceFailure]:
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as e:
        yield SourceFailure(folder, prefix.rstrip("/") or ".", f"cannot list folder: {e.strerror or e}")
        return
    listed = []
    for entry in entries:
        if defaults and (entry.name.startswith(".") or entry.name in DEFAULT_EXCLUDED_DIRS):
            continue
        source_id = prefix + entry.name
        path = Path(entry.path)
        try:
            if entry.is_symlink() and not follow:
                continue
            st = entry.stat(follow_symlinks=True)
        except FileNotFoundError:
            if entry.name.lower().endswith(tuple(suffixes)):
                yield SourceFailure(path, source_id, "broken symlink (its target does not exist)")
            continue
        except OSError as e:
            reason = "symlink loop" if e.errno == errno.ELOOP else f"cannot read: {e.strerror or e}"
            yield SourceFailure(path, source_id, reason)
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        listed.append((source_id + "/" if is_dir else source_id, path, st, is_dir))
    # Sorting folders as "name/" makes the depth-first order the code-point order of source ids.
    for key, path, st, is_dir in sorted(listed, key=lambda x: x[0]):
        source_id = key.rstrip("/")
        if is_dir:
            if _any(source_id, exclude) or _any(key, exclude):
                continue
            dkey = _dir_key(st)
            if dkey in ancestors:
                yield SourceFailure(path, source_id, f"symlink loop (leads back to {os.path.realpath(path)})")
                continue
            yield from _walk_dir(root, path, key, include, exclude, follow, defaults, suffixes, ancestors | {dkey})
            continue
        if path.suffix.lower() not in suffixes or _any(source_id, exclude):
            continue
        if include and not _any(source_id, include):
            continue
        if not stat.S_ISREG(st.st_mode):
            yield SourceFailure(path, source_id, "not a regular file (a FIFO, socket or device)")
            continue
        yield SourceFile(path, root, source_id, st.st_size, st.st_mtime_ns)
