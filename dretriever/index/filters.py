"""Metadata filters: which passages a search may return, as an SQL condition on the doc store.

Keys are declared when a datastore is built (``--filter_keys year:int,source``; the type is ``int``,
``float`` or ``str``, ``str`` when omitted) and stored as typed, indexed columns (``docstore.finalize_docstore``).
A filter is a JSON object whose keys are AND-ed::

    {"source": "pubmed"}                          equality
    {"year": {"in": [2019, 2020]}}                one of
    {"year": {"gte": 2000, "lt": 2010}}           range (int and float keys)
    {"source": {"prefix": "pub"}}                 prefix (str keys)
    {"doc_id": {"prefix": "PMC12"}}               the source document's id (always available)

Every mistake names its place (``filter.year: expected int, got str``), so the HTTP API can answer 4xx with
the field. ``compile_filter`` turns a checked filter into ``(where, params)`` for ``DocStore.positions_where``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import DretrieverError

TYPES = ("int", "float", "str")
DOC_ID = "doc_id"
OPS = ("eq", "in", "gt", "gte", "lt", "lte", "prefix")
RANGE_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def parse_filter_keys(spec: str | None) -> dict[str, str]:
    """``"year:int,source"`` -> ``{"year": "int", "source": "str"}``."""
    keys: dict[str, str] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, _, kind = part.partition(":")
        name, kind = name.strip(), (kind.strip() or "str")
        if not _KEY.match(name) or name in (DOC_ID, "chunk"):
            raise DretrieverError(f"filter_keys: {name!r} is not a usable key name (letters, digits, _; "
                                  f"not {DOC_ID!r} or 'chunk')")
        if kind not in TYPES:
            raise DretrieverError(f"filter_keys: {name}: type must be one of {TYPES}, got {kind!r}")
        if name in keys:
            raise DretrieverError(f"filter_keys: {name!r} is declared twice")
        keys[name] = kind
    return keys


def check_value(key: str, kind: str, value, where: str):
    """``value`` as the key's type; a bool is not a number and an int is a float."""
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, str)}[kind]
    if not ok:
        raise DretrieverError(f"{where}: expected {kind}, got {type(value).__name__} {value!r}")
    return float(value) if kind == "float" else value


@dataclass
class Filter:
    """A checked filter: ``(key, op, value)`` conditions, all of which must hold."""

    conditions: list[tuple[str, str, object]]

    def __bool__(self) -> bool:
        return bool(self.conditions)


def parse_filter(spec: dict | None, keys: dict[str, str]) -> Filter | None:
    """Check ``spec`` against the declared ``keys``; ``None`` or ``{}`` is no filter."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise DretrieverError(f"filter: expected an object of key: condition, got {type(spec).__name__}")
    conditions = []
    for key, cond in spec.items():
        where = f"filter.{key}"
        if key == DOC_ID:
            kind = "str"
        elif key in keys:
            kind = keys[key]
        else:
            declared = ", ".join([DOC_ID, *keys]) if keys else DOC_ID
            raise DretrieverError(f"{where}: unknown key; this datastore filters on: {declared} "
                                  "(declare keys at build time with --filter_keys)")
        ops = cond if isinstance(cond, dict) else {"eq": cond}
        if not ops:
            raise DretrieverError(f"{where}: empty condition; use one of {OPS}")
        for op, value in ops.items():
            at = f"{where}.{op}" if isinstance(cond, dict) else where
            if op not in OPS:
                raise DretrieverError(f"{at}: unknown operator; use one of {OPS}")
            if op == "in":
                if not isinstance(value, list) or not value:
                    raise DretrieverError(f"{at}: expected a non-empty list")
                value = [check_value(key, kind, v, f"{at}[{i}]") for i, v in enumerate(value)]
            elif op in RANGE_OPS:
                if kind == "str":
                    raise DretrieverError(f"{at}: ranges need a numeric key; {key} is str")
                value = check_value(key, kind, value, at)
            elif op == "prefix":
                if kind != "str":
                    raise DretrieverError(f"{at}: prefix needs a str key; {key} is {kind}")
                value = check_value(key, kind, value, at)
            else:
                value = check_value(key, kind, value, at)
            conditions.append((key, op, value))
    return Filter(conditions) if conditions else None


def compile_filter(flt: Filter, doc_id_expr: str = DOC_ID) -> tuple[str, list]:
    """``(where, params)``: the SQL condition over the doc store's columns."""
    parts, params = [], []
    for key, op, value in flt.conditions:
        col = doc_id_expr if key == DOC_ID else f'"f_{key}"'
        if op == "eq":
            parts.append(f"{col} = ?")
            params.append(value)
        elif op == "in":
            parts.append(f"{col} IN ({','.join('?' * len(value))})")
            params.extend(value)
        elif op == "prefix":  # a range on the index, not LIKE (which would read % and _ as wildcards)
            parts.append(f"({col} >= ? AND substr({col}, 1, ?) = ?)")
            params.extend([value, len(value), value])
        else:
            parts.append(f"{col} {RANGE_OPS[op]} ?")
            params.append(value)
    return " AND ".join(parts), params
