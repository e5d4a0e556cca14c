"""LangChain's standard retriever tests, on Milvus Lite and on Qdrant local mode."""

from __future__ import annotations

from typing import ClassVar

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests

from m3ingest.connectors import open_store
from m3ingest.encoder import M3Encoder
from m3ingest.retrievers import M3Retriever, M3Searcher

from retrievers_corpus import QUERIES, TINY_M3, build


class _Standard(RetrieversIntegrationTests):
    # The standard suite has one async test: run it on pytest-asyncio. The mark is harmless on the
    # synchronous ones, so their warning about it is silenced.
    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [
        pytest.mark.asyncio,
        pytest.mark.filterwarnings("ignore:.*marked with '@pytest.mark.asyncio' but it is not an async"),
    ]
    backend = ""
    searcher: M3Searcher

    @pytest.fixture(autouse=True, scope="class")
    def _collection(self, request, tmp_path_factory):
        folder = tmp_path_factory.mktemp(self.backend)
        uri = str(folder / ("m3.db" if self.backend == "milvus" else "qdrant"))
        store = open_store(self.backend, uri)
        encoder = M3Encoder(TINY_M3, device="cpu", dtype="float32")
        build(store, encoder, "standard")
        request.cls.searcher = M3Searcher(store, encoder, "standard", mode="hybrid")
        yield
        store.close()

    @property
    def retriever_constructor(self) -> type[M3Retriever]:
        return M3Retriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"searcher": self.searcher, "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return QUERIES[0]


class TestMilvusLiteRetriever(_Standard):
    backend = "milvus"


class TestQdrantLocalRetriever(_Standard):
    backend = "qdrant"
