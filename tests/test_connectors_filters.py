"""Structured filters: validation messages and the exact Milvus / Qdrant forms they become."""

import pytest
from qdrant_client import models

from m3ingest.connectors.filters import MAX_DEPTH, FilterError, milvus_string, to_milvus, to_qdrant


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


# --- integers beyond int64 and deep nesting -----------------------------------------------------

NOTHING = models.Filter(must=[models.HasIdCondition(has_id=[])])
BIG = 2**63


@pytest.mark.parametrize(
    "spec,milvus",
    [
        ({"chunk_index": BIG}, "false"),
        ({"chunk_index": -BIG - 1}, "false"),
        ({"chunk_index": {"$eq": 2**64}}, "false"),
        ({"start": {"$gt": BIG}}, "false"),
        ({"start": {"$gte": 2**80}}, "false"),
        ({"end": {"$lt": -BIG - 1}}, "false"),
        ({"end": {"$lte": -(2**70)}}, "false"),
        ({"chunk_index": {"$in": [2**64, -(2**64)]}}, "false"),
        ({"$and": [{"source": "a"}, {"chunk_index": 2**64}]}, "false"),
        ({"$or": [{"chunk_index": 2**64}, {"end": {"$lt": -(2**64)}}]}, "false"),
        ({"chunk_index": {"$lt": 2**80}}, ""),
        ({"start": {"$gte": -(2**70)}}, ""),
        ({"$or": [{"source": "a"}, {"end": {"$lte": BIG}}]}, ""),
        ({"chunk_index": {"$in": [2**64, 1, -(2**64)]}}, "(chunk_index in [1])"),
        ({"chunk_index": {"$gt": 1, "$lt": 2**64}}, "(chunk_index > 1)"),
        ({"$or": [{"chunk_index": 2**64}, {"source": "a"}]}, '(source == "a")'),
        ({"source": "a", "start": {"$gt": -(2**64), "$lte": BIG - 1}}, f'((source == "a") and (start <= {BIG - 1}))'),
    ],
)
def test_bounds_beyond_int64_fold_into_the_filter(spec, milvus):
    assert to_milvus(spec) == milvus
    qdrant = to_qdrant(spec)
    if milvus == "false":
        assert qdrant == NOTHING
    elif milvus == "":
        assert qdrant is None
    else:
        assert qdrant is not None and qdrant != NOTHING


@pytest.mark.parametrize(
    "spec", [{"stars": 2**63}, {"stars": {"$lt": -(2**63) - 1}}, {"metadata.n": {"$in": [1, 2**64]}}]
)
def test_metadata_integers_beyond_int64_are_refused(spec):
    for render in (to_milvus, to_qdrant):
        with pytest.raises(FilterError, match="beyond the 64-bit integers"):
            render(spec)
    assert to_milvus({"stars": float(2**70)}) == f"(metadata[\"stars\"] == {float(2**70)!r})"


def _nested(depth, op="$and"):
    spec = {"source": "a"}
    for i in range(depth):
        spec = {("$and", "$or")[i % 2] if op == "mixed" else op: [spec, {"chunk_index": i}]}
    return spec


def test_nesting_up_to_the_limit_renders_and_deeper_is_refused():
    assert to_milvus(_nested(MAX_DEPTH, "mixed")).count("(") > MAX_DEPTH
    assert to_qdrant(_nested(MAX_DEPTH)) is not None
    for depth in (MAX_DEPTH + 1, 200, 100_000):  # the check itself recurses no deeper than the limit
        for render in (to_milvus, to_qdrant):
            with pytest.raises(FilterError, match=f"nests \\$and / \\$or more than {MAX_DEPTH} deep"):
                render(_nested(depth))
