"""Where a store lives, read once from its URI: in memory, an embedded engine's file or folder, or a server."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: ``scheme://`` then the authority up to its last ``@``: the user information a URI may carry.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


@dataclass(frozen=True)
class StoreLocation:
    """A store URI taken apart.

    ``kind``: ``"memory"`` (Qdrant's ``:memory:``), ``"embedded"`` (a Milvus Lite file or a Qdrant
    local folder, opened in this process) or ``"server"`` (``scheme://...``). ``path`` is the
    expanded file or folder of an embedded engine. ``display`` is the URI as it may be printed:
    any ``user:password@`` is removed.
    """

    kind: Literal["memory", "embedded", "server"]
    uri: str
    path: Path | None
    display: str

    def exists(self) -> bool:
        """Whether there is something to open: the embedded engine's file or folder exists (memory
        and servers always answer True)."""
        return self.path is None or self.path.exists()


def parse_location(uri: str) -> StoreLocation:
    """The location a store URI names."""
    if uri == ":memory:":
        return StoreLocation("memory", uri, None, uri)
    if "://" in uri:
        return StoreLocation("server", uri, None, _USERINFO.sub(r"\g<scheme>", uri))
    return StoreLocation("embedded", uri, Path(uri).expanduser(), uri)
