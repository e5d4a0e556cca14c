"""Structured metadata filters, validated once and rendered as a Milvus expression or a Qdrant Filter.

The form is a small Mongo-like dict::

    {"source": "a.md"}                                  # equals
    {"source": {"$in": ["a.md", "b.md"]}}               # one of
    {"chunk_index": {"$gte": 1, "$lt": 5}}              # range ($gt, $gte, $lt, $lte)
    {"lang": "en", "chunk_index": 0}                    # several keys: all must hold
    {"$and": [f1, f2]}, {"$or": [f1, f2]}

Keys are the built-in fields (``source``, ``chunk_index``, ``start``, ``end``, ``content_hash``) or
user metadata keys, written ``"lang"`` or ``"metadata.lang"`` (``"metadata.a.b"`` for nested keys).
Values are never spliced into an expression unescaped, so no value can widen a filter.

Both stores hold ``chunk_index``, ``start`` and ``end`` as 64-bit integers, so a value beyond them
is answered here: an equality or a bound no stored value can meet is false, a bound every value
meets is true, and the tree is folded around those constants before it is rendered, so both
stores give the same answer. Metadata integers must lie within 64 bits (both stores compare JSON
integers as such); ``$and`` / ``$or`` nest at most ``MAX_DEPTH`` deep.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a Qdrant filter is rendered, not with this module
    from qdrant_client import models

from m3ingest.errors import ConfigError

#: Built-in fields and the value type each holds.
BUILTIN_FIELDS: dict[str, type] = {
    "source": str,
    "content_hash": str,
    "chunk_index": int,
    "start": int,
    "end": int,
}
RANGE_OPS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Deepest nesting of ``$and`` / ``$or`` a filter may have.
MAX_DEPTH = 32
_KEY_PART = re.compile(r"^[A-Za-z0-9_-]+$")

Scalar = str | int | float | bool


class FilterError(ConfigError):
    """A filter is malformed; the message names the offending key or operator."""


@dataclass(frozen=True)
class Condition:
    """One field test: ``path`` is ("source",) for a built-in field or ("metadata", "lang", ...)."""

    path: tuple[str, ...]
    op: str  # "$eq", "$in" or "range"
    value: Any  # a scalar, a tuple of scalars, or a dict of range operators -> number


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Constant:
    """A test answered without the store: ``chunk_index == 2**64`` is always false."""

    value: bool


ALWAYS = Constant(True)
NEVER = Constant(False)

Node = Condition | AllOf | AnyOf | Constant


def parse(spec: Mapping[str, Any]) -> Node | None:
    """Validate a structured filter and fold its constant parts; None when it matches everything
    (empty, or always true), ``NEVER`` when it matches nothing."""
    node = _parse(spec, 0)
    return None if node == ALWAYS else node


def _parse(spec: Mapping[str, Any], depth: int) -> Node:
    if not isinstance(spec, Mapping):
        raise FilterError(f"a filter must be a dict, got {type(spec).__name__}")
    return _all([_parse_item(key, value, depth) for key, value in spec.items()])


def _parse_item(key: str, value: Any, depth: int) -> Node:
    if not isinstance(key, str):
        raise FilterError(f"filter key {key!r} must be a string")
    if key in ("$and", "$or"):
        if not isinstance(value, (list, tuple)) or not value:
            raise FilterError(f"{key} needs a non-empty list of filters")
        if depth >= MAX_DEPTH:
            raise FilterError(f"the filter nests $and / $or more than {MAX_DEPTH} deep")
        if any(isinstance(sub, Mapping) and not sub for sub in value):
            raise FilterError(f"{key} contains an empty filter")
        parts = [_parse(sub, depth + 1) for sub in value]
        return _all(parts) if key == "$and" else _any(parts)
    if key.startswith("$"):
        raise FilterError(f"unknown filter operator {key!r} (use $and, $or, or a field name)")
    path = _field_path(key)
    if isinstance(value, Mapping):
        return _parse_ops(key, path, value)
    return _equals(path, _scalar(key, path, value))


def _all(parts: list[Node]) -> Node:
    """``parts`` joined by and: false if one is, without the ones that are always true."""
    kept: list[Node] = []
    for part in parts:
        if part == NEVER:
            return NEVER
        if part != ALWAYS:
            kept.append(part)
    return ALWAYS if not kept else kept[0] if len(kept) == 1 else AllOf(tuple(kept))


def _any(parts: list[Node]) -> Node:
    """``parts`` joined by or: true if one is, without the ones that are always false."""
    kept: list[Node] = []
    for part in parts:
        if part == ALWAYS:
            return ALWAYS
        if part != NEVER:
            kept.append(part)
    return NEVER if not kept else kept[0] if len(kept) == 1 else AnyOf(tuple(kept))


def _field_path(key: str) -> tuple[str, ...]:
    if key in BUILTIN_FIELDS:
        return (key,)
    parts = key.split(".")
    if parts[0] == "metadata":
        parts = parts[1:]
    if not parts or not all(_KEY_PART.match(p) for p in parts):
        raise FilterError(
            f"filter key {key!r} is not a built-in field ({', '.join(BUILTIN_FIELDS)}) nor a "
            "metadata key made of letters, digits, '_' and '-' (nested keys joined by '.')"
        )
    return ("metadata", *parts)


def _int64_field(path: tuple[str, ...]) -> bool:
    return len(path) == 1 and BUILTIN_FIELDS.get(path[0]) is int


def _in_int64(value: Scalar) -> bool:
    return not _is_int(value) or INT64_MIN <= value <= INT64_MAX  # type: ignore[operator]


def _scalar(key: str, path: tuple[str, ...], value: Any) -> Scalar:
    builtin = BUILTIN_FIELDS.get(path[0]) if len(path) == 1 else None
    if builtin is str and not isinstance(value, str):
        raise FilterError(f"filter key {key!r} holds text, got {value!r}")
    if builtin is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise FilterError(f"filter key {key!r} holds integers, got {value!r}")
    if not isinstance(value, (str, int, float, bool)):
        raise FilterError(f"filter value for {key!r} must be text, a number or a boolean, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise FilterError(f"filter value for {key!r} must be a finite number, got {value!r}")
    if builtin is None and not _in_int64(value):
        raise FilterError(
            f"filter value for metadata key {key!r} is {value}, beyond the 64-bit integers metadata "
            f"numbers are compared as ({INT64_MIN} to {INT64_MAX}); write it as a float to compare approximately"
        )
    return value


def _equals(path: tuple[str, ...], value: Scalar) -> Node:
    if _int64_field(path) and not _in_int64(value):
        return NEVER
    return Condition(path, "$eq", value)


def _one_of(path: tuple[str, ...], values: tuple[Scalar, ...]) -> Node:
    if _int64_field(path):
        values = tuple(v for v in values if _in_int64(v))
        if not values:
            return NEVER
    return Condition(path, "$in", values)


def _within(path: tuple[str, ...], bounds: dict[str, Scalar]) -> Node:
    """A range test; on a 64-bit field, a bound beyond the integers it holds is false or dropped."""
    if _int64_field(path):
        for op, v in list(bounds.items()):
            if _in_int64(v):
                continue
            lower = op in ("$gt", "$gte")
            if lower == (v > INT64_MAX):  # type: ignore[operator]
                return NEVER  # above every value from below, or below every value from above
            del bounds[op]  # every value meets it
        if not bounds:
            return ALWAYS
    return Condition(path, "range", bounds)


def _parse_ops(key: str, path: tuple[str, ...], ops: Mapping[str, Any]) -> Node:
    if not ops:
        raise FilterError(f"filter key {key!r} has an empty operator dict")
    conditions: list[Node] = []
    bounds: dict[str, Scalar] = {}
    for op, value in ops.items():
        if op == "$eq":
            conditions.append(_equals(path, _scalar(key, path, value)))
        elif op == "$in":
            if not isinstance(value, (list, tuple)) or not value:
                raise FilterError(f"$in on {key!r} needs a non-empty list")
            items = tuple(_scalar(key, path, v) for v in value)
            if not (all(isinstance(v, str) for v in items) or all(_is_int(v) for v in items)):
                raise FilterError(f"$in on {key!r} needs all texts or all integers, got {list(value)!r}")
            conditions.append(_one_of(path, items))
        elif op in RANGE_OPS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FilterError(f"{op} on {key!r} needs a number, got {value!r}")
            if BUILTIN_FIELDS.get(path[0]) is str and len(path) == 1:
                raise FilterError(f"{op} on {key!r}: ranges apply to numbers, {key!r} holds text")
            bounds[op] = _scalar(key, path, value)
        else:
            raise FilterError(
                f"unknown operator {op!r} on filter key {key!r} (use $eq, $in, $gt, $gte, $lt, $lte)"
            )
    if bounds:
        conditions.append(_within(path, bounds))
    return _all(conditions)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --- Milvus -------------------------------------------------------------------------------------


def milvus_string(value: str) -> str:
    """A Milvus expression string literal that denotes exactly ``value``."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _milvus_value(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return milvus_string(value)
    return repr(value)


def _milvus_field(path: tuple[str, ...]) -> str:
    if len(path) == 1:
        return path[0]
    return path[0] + "".join(f"[{milvus_string(p)}]" for p in path[1:])


def _milvus(node: Node) -> str:
    if isinstance(node, Constant):
        return "true" if node.value else "false"
    if isinstance(node, AllOf):
        return "(" + " and ".join(_milvus(p) for p in node.parts) + ")"
    if isinstance(node, AnyOf):
        return "(" + " or ".join(_milvus(p) for p in node.parts) + ")"
    field = _milvus_field(node.path)
    if node.op == "$eq":
        return f"({field} == {_milvus_value(node.value)})"
    if node.op == "$in":
        if len(node.path) > 1:  # Milvus Lite accepts `in` on plain fields only; equalities work everywhere
            return "(" + " or ".join(f"{field} == {_milvus_value(v)}" for v in node.value) + ")"
        return f"({field} in [{', '.join(_milvus_value(v) for v in node.value)}])"
    return "(" + " and ".join(f"{field} {RANGE_OPS[op]} {v!r}" for op, v in node.value.items()) + ")"


def to_milvus(spec: Mapping[str, Any] | None) -> str:
    """The Milvus boolean expression for a structured filter ("" matches everything)."""
    node = parse(spec) if spec else None
    return _milvus(node) if node is not None else ""


# --- Qdrant -------------------------------------------------------------------------------------


def _qdrant_condition(node: Node) -> models.Condition:
    from qdrant_client import models

    if isinstance(node, Constant):  # an empty filter matches every point; an empty id list none
        return models.Filter() if node.value else models.Filter(must=[models.HasIdCondition(has_id=[])])
    if isinstance(node, AllOf):
        return models.Filter(must=[_qdrant_condition(p) for p in node.parts])
    if isinstance(node, AnyOf):
        return models.Filter(should=[_qdrant_condition(p) for p in node.parts])
    key = ".".join(node.path)
    if node.op == "$eq":
        if isinstance(node.value, float):  # Qdrant matches text, integers and booleans only
            return models.FieldCondition(key=key, range=models.Range(gte=node.value, lte=node.value))
        return models.FieldCondition(key=key, match=models.MatchValue(value=node.value))
    if node.op == "$in":
        return models.FieldCondition(key=key, match=models.MatchAny(any=list(node.value)))
    bounds = {op[1:]: v for op, v in node.value.items()}
    return models.FieldCondition(key=key, range=models.Range(**bounds))


def to_qdrant(spec: Mapping[str, Any] | None) -> models.Filter | None:
    """The Qdrant ``Filter`` for a structured filter (None matches everything)."""
    node = parse(spec) if spec else None
    if node is None:
        return None
    from qdrant_client import models

    condition = _qdrant_condition(node)
    return condition if isinstance(condition, models.Filter) else models.Filter(must=[condition])
