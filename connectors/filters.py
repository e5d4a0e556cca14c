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
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from qdrant_client import models

#: Built-in fields and the value type each holds.
BUILTIN_FIELDS: dict[str, type] = {
    "source": str,
    "content_hash": str,
    "chunk_index": int,
    "start": int,
    "end": int,
}
RANGE_OPS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_KEY_PART = re.compile(r"^[A-Za-z0-9_-]+$")

Scalar = Union[str, int, float, bool]


class FilterError(ValueError):
    """A filter is malformed; the message names the offending key or operator."""


@dataclass(frozen=True)
class Condition:
    """One field test: ``path`` is ("source",) for a built-in field or ("metadata", "lang", ...)."""

    path: tuple[str, ...]
    op: str  # "$eq", "$in" or "range"
    value: Any  # a scalar, a tuple of scalars, or a dict of range operators -> number


@dataclass(frozen=True)
class AllOf:
    parts: tuple["Node", ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple["Node", ...]


Node = Union[Condition, AllOf, AnyOf]


def parse(spec: Mapping[str, Any]) -> Node | None:
    """Validate a structured filter; None when it is empty (matches everything)."""
    if not isinstance(spec, Mapping):
        raise FilterError(f"a filter must be a dict, got {type(spec).__name__}")
    parts = [_parse_item(key, value) for key, value in spec.items()]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def _parse_item(key: str, value: Any) -> Node:
    if not isinstance(key, str):
        raise FilterError(f"filter key {key!r} must be a string")
    if key in ("$and", "$or"):
        if not isinstance(value, (list, tuple)) or not value:
            raise FilterError(f"{key} needs a non-empty list of filters")
        parts = []
        for sub in value:
            node = parse(sub)
            if node is None:
                raise FilterError(f"{key} contains an empty filter")
            parts.append(node)
        return AllOf(tuple(parts)) if key == "$and" else AnyOf(tuple(parts))
    if key.startswith("$"):
        raise FilterError(f"unknown filter operator {key!r} (use $and, $or, or a field name)")
    path = _field_path(key)
    if isinstance(value, Mapping):
        return _parse_ops(key, path, value)
    return Condition(path, "$eq", _scalar(key, path, value))


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
    return value


def _parse_ops(key: str, path: tuple[str, ...], ops: Mapping[str, Any]) -> Node:
    if not ops:
        raise FilterError(f"filter key {key!r} has an empty operator dict")
    conditions: list[Node] = []
    bounds: dict[str, float] = {}
    for op, value in ops.items():
        if op == "$eq":
            conditions.append(Condition(path, "$eq", _scalar(key, path, value)))
        elif op == "$in":
            if not isinstance(value, (list, tuple)) or not value:
                raise FilterError(f"$in on {key!r} needs a non-empty list")
            items = tuple(_scalar(key, path, v) for v in value)
            if not (all(isinstance(v, str) for v in items) or all(_is_int(v) for v in items)):
                raise FilterError(f"$in on {key!r} needs all texts or all integers, got {list(value)!r}")
            conditions.append(Condition(path, "$in", items))
        elif op in RANGE_OPS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FilterError(f"{op} on {key!r} needs a number, got {value!r}")
            if BUILTIN_FIELDS.get(path[0]) is str and len(path) == 1:
                raise FilterError(f"{op} on {key!r}: ranges apply to numbers, {key!r} holds text")
            bounds[op] = _scalar(key, path, value)  # type: ignore[assignment]
        else:
            raise FilterError(
                f"unknown operator {op!r} on filter key {key!r} (use $eq, $in, $gt, $gte, $lt, $lte)"
            )
    if bounds:
        conditions.append(Condition(path, "range", bounds))
    return conditions[0] if len(conditions) == 1 else AllOf(tuple(conditions))


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
    condition = _qdrant_condition(node)
    return condition if isinstance(condition, models.Filter) else models.Filter(must=[condition])
