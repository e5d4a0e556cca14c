"""M3 embedding adapters, alone and inside langchain-milvus / langchain-qdrant stores."""

from __future__ import annotations

import numpy as np
import pytest

from m3ingest.encoder import M3Encoder
from m3ingest.retrievers import M3Embeddings

from retrievers_corpus import CHUNKS, TINY_M3

TEXTS = [text for _, text, _ in CHUNKS]


class _CountingEncoder(M3Encoder):
    """The real encoder, counting its forward passes."""

    calls = 0

    def encode(self, texts, *args, **kwargs):
        self.calls += 1
        return super().encode(texts, *args, **kwargs)


@pytest.fixture(scope="module")
def encoder():
    return _CountingEncoder(TINY_M3, device="cpu", dtype="float32")


@pytest.fixture
def embeddings(encoder):
    return M3Embeddings(encoder)


def test_dense_vectors_equal_the_encoders(embeddings, encoder):
    out = encoder.encode(TEXTS[:4])
    assert np.allclose(embeddings.embed_documents(TEXTS[:4]), out.dense, atol=1e-6)
    assert np.allclose(embeddings.embed_query(TEXTS[0]), out.dense[0], atol=1e-6)
    assert embeddings.embed_documents([]) == []


def test_milvus_sparse_adapter_shares_one_forward_pass(embeddings, encoder):
    pytest.importorskip("langchain_milvus")
    from langchain_milvus.utils.sparse import BaseSparseEmbedding

    sparse = embeddings.milvus_sparse()
    assert isinstance(sparse, BaseSparseEmbedding)
    before = encoder.calls
    dense = embeddings.embed_documents(TEXTS)
    weights = sparse.embed_documents(TEXTS)
    assert encoder.calls == before + 1
    out = encoder.encode(TEXTS)
    assert np.allclose(dense, out.dense, atol=1e-6)
    assert weights == [pytest.approx(w) for w in out.sparse]
    assert sparse.embed_query(TEXTS[0]) == pytest.approx(out.sparse[0])


def test_qdrant_sparse_adapter_gives_sparse_vectors(embeddings, encoder):
    pytest.importorskip("langchain_qdrant")
    from langchain_qdrant.sparse_embeddings import SparseEmbeddings

    sparse = embeddings.qdrant_sparse()
    assert isinstance(sparse, SparseEmbeddings)
    before = encoder.calls
    embeddings.embed_documents(TEXTS)
    vectors = sparse.embed_documents(TEXTS)
    assert encoder.calls == before + 1
    for vector, weights in zip(vectors, encoder.encode(TEXTS).sparse, strict=True):
        assert dict(zip(vector.indices, vector.values, strict=True)) == pytest.approx(weights)
        assert vector.indices == sorted(vector.indices)


def test_langchain_milvus_hybrid_store(embeddings, tmp_path):
    pytest.importorskip("langchain_milvus")
    from langchain_milvus import Milvus

    store = Milvus(
        embedding_function=[embeddings, embeddings.milvus_sparse()],
        vector_field=["dense", "sparse"],
        index_params=[
            {"index_type": "FLAT", "metric_type": "IP"},
            {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "IP"},
        ],
        # langchain-milvus' default sparse search parameters are refused by Milvus Lite.
        search_params=[{"metric_type": "IP", "params": {}}, {"metric_type": "IP", "params": {}}],
        connection_args={"uri": str(tmp_path / "lc.db")},
        collection_name="lc",
        auto_id=True,
    )
    store.add_texts(TEXTS)
    docs = store.similarity_search(TEXTS[6], k=3, ranker_type="rrf", ranker_params={"k": 60})
    assert docs[0].page_content == TEXTS[6]


def test_langchain_qdrant_hybrid_store(embeddings):
    pytest.importorskip("langchain_qdrant")
    from langchain_qdrant import QdrantVectorStore, RetrievalMode

    store = QdrantVectorStore.from_texts(
        TEXTS,
        embedding=embeddings,
        sparse_embedding=embeddings.qdrant_sparse(),
        retrieval_mode=RetrievalMode.HYBRID,
        location=":memory:",
        collection_name="lc",
    )
    docs = store.similarity_search(TEXTS[6], k=3)
    assert docs[0].page_content == TEXTS[6]
    assert len(docs) == 3
