"""``M3Retriever``: the searcher as a LangChain ``BaseRetriever`` (sync and async)."""

from __future__ import annotations

import os
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, model_validator

from m3ingest.config import Config
from m3ingest.retrievers.searcher import M3Searcher, Mode, SearchResult, combine_filters


def to_document(result: SearchResult) -> Document:
    """A LangChain ``Document`` of one result: chunk text, id, metadata plus ``score``/``scores``."""
    metadata = {**result.metadata, "score": result.score, "scores": dict(result.scores)}
    return Document(page_content=result.text, metadata=metadata, id=result.id)


#: Keyword arguments that build the retriever's searcher instead of passing one.
_SEARCHER_ARGS = {"config", "store", "encoder", "collection", "fusion", "candidates", "m3_weights"}


class M3Retriever(BaseRetriever):
    """Retrieves chunks of an m3ingest collection for a query, as LangChain ``Document``s.

    Build it from a searcher, ``M3Retriever(searcher=M3Searcher(...), k=4)``; from the same
    configuration the ingest job uses, ``M3Retriever(config="m3ingest.toml", mode="m3")``
    (optionally with ``encoder=`` / ``store=`` to reuse open ones); or from the searcher's own
    arguments, ``M3Retriever(store=store, encoder=encoder, collection="docs", candidates=50)``.
    ``fusion``, ``candidates`` and ``m3_weights`` override the configuration's. ``k``, ``mode`` and ``filter``
    left unset take the searcher's defaults; each can also be given per call:
    ``retriever.invoke("query", k=3, mode="m3", filter={"source": "a.md"})``. A per-call filter
    narrows the retriever's own filter.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    searcher: M3Searcher
    k: int | None = Field(default=None, ge=1)
    mode: Mode | None = None
    filter: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _build_searcher(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not _SEARCHER_ARGS & data.keys():
            return data
        data = dict(data)
        if "searcher" in data:
            raise ValueError(
                "give M3Retriever either searcher= or the arguments to build one "
                f"({', '.join(sorted(_SEARCHER_ARGS))}), not both"
            )
        args = {name: data.pop(name) for name in _SEARCHER_ARGS & data.keys()}
        if "config" in args:
            searcher = M3Searcher.from_config(args.pop("config"), **args)
        else:
            missing = {"store", "encoder", "collection"} - args.keys()
            if missing:
                raise ValueError(
                    f"M3Retriever needs config= (a TOML file or Config), or store=, encoder= and "
                    f"collection=; missing: {', '.join(sorted(missing))}"
                )
            searcher = M3Searcher(**args)
        data["searcher"] = searcher
        return data

    @classmethod
    def from_config(
        cls, config: Config | str | os.PathLike[str] | None = None, **overrides: Any
    ) -> M3Retriever:
        """A retriever set up by a ``Config`` or TOML file; ``overrides`` set fields (``k=4``)."""
        return cls(config=config, **overrides)

    def _settings(self, k: int | None, mode: Mode | None, filter: Any) -> dict[str, Any]:
        return {
            "k": k if k is not None else self.k,
            "mode": mode if mode is not None else self.mode,
            "filter": combine_filters(self.filter, filter),
        }

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        mode: Mode | None = None,
        filter: dict[str, Any] | None = None,
    ) -> list[Document]:
        results = self.searcher.search(query, **self._settings(k, mode, filter))
        return [to_document(r) for r in results]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        mode: Mode | None = None,
        filter: dict[str, Any] | None = None,
    ) -> list[Document]:
        results = await self.searcher.asearch(query, **self._settings(k, mode, filter))
        return [to_document(r) for r in results]
