"""Structured filters: validation messages and the exact Milvus / Qdrant forms they become."""

import pytest
from qdrant_client import models

from m3ingest.connectors.filters import FilterError, milvus_string, to_milvus, to_qdrant


def test_milvus_expressions():
    assert to_milvus(None) == "" and to_milvus({}) == ""
    assert to_milvus({"source": "a.md"}) == '(source == "a.md")'
    assert to_milvus({"source": {"$in": ["a", "b"]}}) == '(source in ["a", "b"])'
    assert to_milvus({"chunk_index": {"$gte": 1, "$lt": 5}}) == "(chunk_index >= 1 and chunk_index < 5)"
    assert to_milvus({"lang": "en"}) == '(metadata["lang"] == "en")'
    assert to_milvus({"metadata.a.b": True}) == '(metadata["a"]["b"] == true)'
    assert to_milvus({"lang": {"$in": ["en", "de"]}}) == '(metadata["lang"] == "en" or metadata["lang"] == "de")'
    assert to_milvus({"$or": [{"source": "a"}, {"end": {"$gt": 3}}]}) == '((source == "a") or (end > 3))'
    assert to_milvus({"source": "a", "start": 0}) == '((source == "a") and (start == 0))'


@pytest.mark.parametrize("value", ['x" or source != "', "back\\slash\\", 'tab\tnew\nline\r', "it's", "\\\""])
def test_milvus_strings_cannot_be_escaped_from(value):
    literal = milvus_string(value)
    assert literal.startswith('"') and literal.endswith('"')
    body = literal[1:-1]
    unescaped, i = [], 0
    while i < len(body):  # a reader of Milvus' grammar: every quote inside is escaped
        if body[i] == "\\":
            unescaped.append({"n": "\n", "r": "\r", "t": "\t"}.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            assert body[i] not in '"\n\r'
            unescaped.append(body[i])
            i += 1
    assert "".join(unescaped) == value


def test_qdrant_filters():
    assert to_qdrant(None) is None
    assert to_qdrant({"source": "a.md"}) == models.Filter(
        must=[models.FieldCondition(key="source", match=models.MatchValue(value="a.md"))]
    )
    f = to_qdrant({"$or": [{"lang": {"$in": ["en", "de"]}}, {"chunk_index": {"$gt": 2, "$lte": 4}}]})
    assert f == models.Filter(should=[
        models.FieldCondition(key="metadata.lang", match=models.MatchAny(any=["en", "de"])),
        models.FieldCondition(key="chunk_index", range=models.Range(gt=2, lte=4)),
    ])
    assert to_qdrant({"score": 0.5}).must[0].range == models.Range(gte=0.5, lte=0.5)


@pytest.mark.parametrize(
    "spec,named",
    [
        ({"source": {"$regex": "a"}}, "'\\$regex'.*'source'"),
        ({"$not": {"source": "a"}}, "\\$not"),
        ({"bad key": 1}, "'bad key'"),
        ({'lang"]': 1}, "lang"),
        ({"chunk_index": "3"}, "'chunk_index' holds integers"),
        ({"source": 3}, "'source' holds text"),
        ({"source": {"$gt": "a"}}, "\\$gt on 'source' needs a number"),
        ({"source": {"$gt": 1}}, "ranges apply to numbers"),
        ({"lang": {"$in": []}}, "\\$in on 'lang'"),
        ({"lang": {"$in": ["a", 1]}}, "all texts or all integers"),
        ({"lang": [1, 2]}, "'lang'"),
        ({"stars": float("nan")}, "finite"),
        ({"$or": []}, "\\$or needs"),
        ({"$and": [{}]}, "empty filter"),
        ({"lang": {}}, "empty operator"),
    ],
)
def test_invalid_filters_name_the_problem(spec, named):
    with pytest.raises(FilterError, match=named):
        to_milvus(spec)
    with pytest.raises(FilterError, match=named):
        to_qdrant(spec)
