"""A compiled yes/no validator for the sidecar's JSON Schema, ~100× faster than jsonschema on big sidecars.

jsonschema interprets the schema node by node and builds error objects for every failed `anyOf`
branch; on a GPT-2 training checkpoint's sidecar that takes seconds. This module turns the same
schema (convert/schemas/checkpoint.schema.json, still the single definition) into nested closures once.

It only answers "valid?", and only ever says yes when jsonschema would: every keyword is
implemented with jsonschema's Draft 2020-12 semantics (its type checker, `re.search` for patterns,
its bool-aware equality for const/enum), and a keyword it does not implement makes compilation fail
with UnsupportedSchema, so the caller falls back to jsonschema. A "no" is always re-checked by
jsonschema, which stays the authority for the error message. A RecursionError propagates:
schema.validate bounds the depth and runs both again with room to recurse (convert/sidecar/deep.py).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Check = Callable[[Any], bool]

# Annotations: no effect on validity (jsonschema applies no format checker by default).
_ANNOTATIONS = {"$schema", "$id", "$comment", "$defs", "title", "description", "examples", "default",
                "deprecated", "readOnly", "writeOnly", "format"}


class UnsupportedSchema(Exception):
    """The schema uses a keyword this compiler does not implement."""


def _is_integer(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    return isinstance(x, int) or (isinstance(x, float) and x.is_integer())


def _is_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, numbers.Number)


_TYPES: dict[str, Check] = {
    "null": lambda x: x is None,
    "boolean": lambda x: isinstance(x, bool),
    "string": lambda x: isinstance(x, str),
    "integer": _is_integer,
    "number": _is_number,
    "array": lambda x: isinstance(x, list),
    "object": lambda x: isinstance(x, dict),
}


def _equal(one: Any, two: Any) -> bool:
    """jsonschema._utils.equal: JSON equality where True is not 1 and False is not 0."""
    if one is two:
        return True
    if isinstance(one, str) or isinstance(two, str):
        return one == two
    if isinstance(one, Sequence) and isinstance(two, Sequence):
        return len(one) == len(two) and all(_equal(a, b) for a, b in zip(one, two))
    if isinstance(one, Mapping) and isinstance(two, Mapping):
        return one.keys() == two.keys() and all(_equal(one[k], two[k]) for k in one)
    if isinstance(one, bool) or isinstance(two, bool):
        return isinstance(one, bool) and isinstance(two, bool) and one == two
    return one == two


class _Compiler:
    def __init__(self, root: dict) -> None:
        self.root = root
        self.refs: dict[str, Check] = {}

    def ref(self, ref: str) -> Check:
        if not ref.startswith("#/$defs/") or "/" in ref[len("#/$defs/"):] or "~" in ref:
            raise UnsupportedSchema(f"$ref {ref!r}")
        if ref not in self.refs:
            target = self.root.get("$defs", {}).get(ref[len("#/$defs/"):])
            if target is None:
                raise UnsupportedSchema(f"dangling $ref {ref!r}")
            slot: list[Check] = []
            self.refs[ref] = lambda x: slot[0](x)  # recursion: resolved once compiled
            slot.append(self.compile(target))
        return self.refs[ref]

    def compile(self, node: Any) -> Check:
        if node is True or node == {}:
            return lambda x: True
        if node is False:
            return lambda x: False
        if not isinstance(node, dict):
            raise UnsupportedSchema(f"schema node {node!r:.60}")
        checks: list[Check] = []
        # Cheap, discriminating checks first: an anyOf branch usually fails on its type or required key.
        for keyword in ("type", "const", "enum", "required"):
            if keyword in node:
                checks.append(getattr(self, "k_" + keyword)(node[keyword], node))
        for keyword, value in node.items():
            if keyword in _ANNOTATIONS or keyword in ("type", "const", "enum", "required"):
                continue
            if keyword == "additionalProperties" or keyword == "items":
                continue  # compiled with their siblings (properties, prefixItems) below
            name = "k_ref" if keyword == "$ref" else "k_" + keyword
            handler = None if keyword.startswith("$") and keyword != "$ref" else getattr(self, name, None)
            if handler is None:
                raise UnsupportedSchema(f"keyword {keyword!r}")
            checks.append(handler(value, node))
        if "additionalProperties" in node:
            checks.append(self.additional(node))
        if "items" in node:
            checks.append(self.items(node))
        if len(checks) == 1:
            return checks[0]

        def check(x: Any) -> bool:
            for c in checks:  # noqa: SIM110 - a plain loop: no generator frame on the hot path
                if not c(x):
                    return False
            return True
        return check

    # ---------------------------------------------------------------- keywords
    def k_type(self, value: Any, node: dict) -> Check:
        names = [value] if isinstance(value, str) else list(value)
        if any(n not in _TYPES for n in names):
            raise UnsupportedSchema(f"type {value!r}")
        tests = [_TYPES[n] for n in names]
        if len(tests) == 1:
            return tests[0]
        return lambda x: any(t(x) for t in tests)

    def k_const(self, value: Any, node: dict) -> Check:
        return lambda x: _equal(x, value)

    def k_enum(self, value: Any, node: dict) -> Check:
        if all(isinstance(v, str) for v in value):
            allowed = frozenset(value)
            return lambda x: isinstance(x, str) and x in allowed
        return lambda x: any(_equal(v, x) for v in value)

    def k_required(self, value: Any, node: dict) -> Check:
        keys = tuple(value)
        return lambda x: not isinstance(x, dict) or all(k in x for k in keys)

    def k_ref(self, value: Any, node: dict) -> Check:
        return self.ref(value)

    def k_properties(self, value: Any, node: dict) -> Check:
        props = [(k, self.compile(v)) for k, v in value.items()]

        def check(x: Any) -> bool:
            if not isinstance(x, dict):
                return True
            for k, c in props:  # noqa: SIM110 - a plain loop: no generator frame on the hot path
                if k in x and not c(x[k]):
                    return False
            return True
        return check

    def k_patternProperties(self, value: Any, node: dict) -> Check:  # noqa: N802 - the JSON Schema keyword
        pats = [(re.compile(p), self.compile(s)) for p, s in value.items()]
        return lambda x: not isinstance(x, dict) or all(c(v) for p, c in pats for k, v in x.items() if p.search(k))

    def additional(self, node: dict) -> Check:
        known = frozenset(node.get("properties", {}))
        patterns = "|".join(node.get("patternProperties", {}))
        pat = re.compile(patterns) if patterns else None
        sub = node["additionalProperties"]

        def extras(x: dict) -> list:
            return [k for k in x if k not in known and not (pat is not None and pat.search(k))]
        if sub is False:
            return lambda x: not isinstance(x, dict) or not extras(x)
        c = self.compile(sub)
        if not known and pat is None:
            return lambda x: not isinstance(x, dict) or all(c(v) for v in x.values())
        return lambda x: not isinstance(x, dict) or all(c(x[k]) for k in extras(x))

    def k_propertyNames(self, value: Any, node: dict) -> Check:  # noqa: N802
        c = self.compile(value)
        return lambda x: not isinstance(x, dict) or all(c(k) for k in x)

    def k_pattern(self, value: Any, node: dict) -> Check:
        search = re.compile(value).search
        return lambda x: not isinstance(x, str) or search(x) is not None

    def k_minimum(self, value: Any, node: dict) -> Check:
        return lambda x: not _is_number(x) or x >= value

    def k_maximum(self, value: Any, node: dict) -> Check:
        return lambda x: not _is_number(x) or x <= value

    def k_exclusiveMinimum(self, value: Any, node: dict) -> Check:  # noqa: N802
        return lambda x: not _is_number(x) or x > value

    def k_exclusiveMaximum(self, value: Any, node: dict) -> Check:  # noqa: N802
        return lambda x: not _is_number(x) or x < value

    def k_minLength(self, value: Any, node: dict) -> Check:  # noqa: N802
        return lambda x: not isinstance(x, str) or len(x) >= value

    def k_maxLength(self, value: Any, node: dict) -> Check:  # noqa: N802
        return lambda x: not isinstance(x, str) or len(x) <= value

    def k_minItems(self, value: Any, node: dict) -> Check:  # noqa: N802
        return lambda x: not isinstance(x, list) or len(x) >= value

    def k_maxItems(self, value: Any, node: dict) -> Check:  # noqa: N802
        return lambda x: not isinstance(x, list) or len(x) <= value

    def k_minProperties(self, value: Any, node: dict) -> Check:  # noqa: N802
        return lambda x: not isinstance(x, dict) or len(x) >= value

    def k_maxProperties(self, value: Any, node: dict) -> Check:  # noqa: N802
        return lambda x: not isinstance(x, dict) or len(x) <= value

    def k_prefixItems(self, value: Any, node: dict) -> Check:  # noqa: N802
        subs = [self.compile(s) for s in value]
        return lambda x: not isinstance(x, list) or all(c(v) for c, v in zip(subs, x))

    def items(self, node: dict) -> Check:
        start = len(node.get("prefixItems", []))
        sub = node["items"]
        if sub is False:
            return lambda x: not isinstance(x, list) or len(x) <= start
        c = self.compile(sub)

        def check(x: Any) -> bool:
            if not isinstance(x, list):
                return True
            for i in range(start, len(x)):  # noqa: SIM110 - a plain loop: no generator frame on the hot path
                if not c(x[i]):
                    return False
            return True
        return check

    def k_anyOf(self, value: Any, node: dict) -> Check:  # noqa: N802
        branches = [self.compile(s) for s in value]
        # Tagged-object branches ({"type": "object", "required": [TAG]}) can only match a dict holding
        # TAG: dispatch on the instance's keys instead of trying each of the sidecar's ~20 value tags.
        tagged: dict[str, list[Check]] = {}
        others: list[Check] = []
        for sub, c in zip(value, branches):
            req = sub.get("required") if isinstance(sub, dict) else None
            if isinstance(sub, dict) and sub.get("type") == "object" and isinstance(req, list) and len(req) == 1:
                tagged.setdefault(req[0], []).append(c)
            else:
                others.append(c)
        if len(tagged) >= 4:
            def dispatch(x: Any) -> bool:
                if isinstance(x, dict):
                    for k in (x if len(x) < len(tagged) else tagged):
                        if k in tagged and k in x:
                            for c in tagged[k]:
                                if c(x):
                                    return True
                for c in others:  # noqa: SIM110 - a plain loop: no generator frame on the hot path
                    if c(x):
                        return True
                return False
            return dispatch

        def check(x: Any) -> bool:
            for c in branches:  # noqa: SIM110 - a plain loop: no generator frame on the hot path
                if c(x):
                    return True
            return False
        return check

    def k_allOf(self, value: Any, node: dict) -> Check:  # noqa: N802
        branches = [self.compile(s) for s in value]
        return lambda x: all(c(x) for c in branches)

    def k_oneOf(self, value: Any, node: dict) -> Check:  # noqa: N802
        branches = [self.compile(s) for s in value]
        return lambda x: sum(1 for c in branches if c(x)) == 1

    def k_not(self, value: Any, node: dict) -> Check:
        c = self.compile(value)
        return lambda x: not c(x)


def compile_schema(schema: dict) -> Check:
    """A function `is_valid(instance) -> bool`; True only where jsonschema (Draft 2020-12) finds no error.

    It recurses a few frames per nesting level of the instance: deep instances raise RecursionError,
    and the caller (schema.validate) bounds the depth and reruns it with room (convert/sidecar/deep.py).
    Raises UnsupportedSchema if the schema uses a keyword not implemented here.
    """
    root = _Compiler(schema).compile(schema)

    return root
