"""A compiled validator for the sidecar's JSON Schema: ~100× faster than jsonschema, and iterative in depth.

jsonschema interprets the schema node by node and builds error objects for every failed `anyOf`
branch; on a GPT-2 training checkpoint's sidecar that takes seconds. This module turns the same
schema (convert/schemas/checkpoint.schema.json, still the single definition) into nested closures once.

It answers "valid?" exactly as jsonschema would: every keyword is implemented with jsonschema's
Draft 2020-12 semantics (its type checker, `re.search` for patterns, its bool-aware equality for
const/enum), and a keyword it does not implement makes compilation fail with UnsupportedSchema, so
the caller falls back to jsonschema. `Validator.locate` words a one-line error (a JSON path and what
fails there) without jsonschema, for input too deep to hand to it.

Depth. The closures recurse a few Python frames per nesting level of the instance, but never more
than `WINDOW` levels at a time: a check that would descend further is not run there but recorded
(the check, the child value) and taken as valid for now. The driver (`Validator._valid`) keeps an
explicit stack of such (check, value) pairs: it runs the deepest first and remembers each result,
then runs again the pairs that had assumed one; a run that assumed nothing is exact. Each pair is
run a small number of times (its result is remembered), so the work stays polynomial even where
jsonschema's `anyOf` is exponential, and no interpreter setting (recursion limit, stack) is changed.
"""

from __future__ import annotations

import numbers
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Check = Callable[[Any, "_Run"], bool]

WINDOW = 48  # instance levels one pass descends (about 5 frames each, ~250 in all) before putting checks off

# Annotations: no effect on validity (jsonschema applies no format checker by default).
_ANNOTATIONS = {"$schema", "$id", "$comment", "$defs", "title", "description", "examples", "default",
                "deprecated", "readOnly", "writeOnly", "format"}


class UnsupportedSchema(Exception):
    """The schema uses a keyword this compiler does not implement."""


class _Run:
    """One validation's state: the current pass's depth and window, the pairs it put off, the results known."""

    __slots__ = ("depth", "memo", "pending", "window")

    def __init__(self) -> None:
        self.depth = 0
        self.window = WINDOW
        self.pending: list[tuple[Check, Any]] = []
        self.memo: dict[tuple[int, int], bool] = {}  # (id(check), id(value)) → valid; both live as long as the run


def _descend(c: Check, child: Any, run: _Run) -> bool:
    """`c` on a child value, one level down; past the pass's window, its known result or (put off) valid for now.

    The hot loops (items, properties, additionalProperties) inline this, with `_later` for the window's edge."""
    if run.depth >= run.window:
        return _later(c, child, run)
    run.depth += 1
    ok = c(child, run)
    run.depth -= 1
    return ok


def _later(c: Check, child: Any, run: _Run) -> bool:
    """At the window's edge: the known result of `c` on `child`, or valid for now (put off to the driver)."""
    found = run.memo.get((id(c), id(child)))
    if found is None:
        run.pending.append((c, child))
        return True
    return found


def _mark(check: Check, says: str | Callable[[Any], str] = "", **facts: Any) -> Check:
    """Attach what `Validator.locate` needs: the failure's wording and how the check is built."""
    check.says = says  # type: ignore[attr-defined]
    for name, fact in facts.items():
        setattr(check, name, fact)
    return check


def _is_integer(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    return isinstance(x, int) or (isinstance(x, float) and x.is_integer())


def _is_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, numbers.Number)


_TYPES: dict[str, Callable[[Any], bool]] = {
    "null": lambda x: x is None,
    "boolean": lambda x: isinstance(x, bool),
    "string": lambda x: isinstance(x, str),
    "integer": _is_integer,
    "number": _is_number,
    "array": lambda x: isinstance(x, list),
    "object": lambda x: isinstance(x, dict),
}


_TYPE_CHECKS: dict[str, Check] = {  # the same as checks (one call less on the hot path)
    "null": lambda x, run: x is None,
    "boolean": lambda x, run: isinstance(x, bool),
    "string": lambda x, run: isinstance(x, str),
    "integer": lambda x, run: _is_integer(x),
    "number": lambda x, run: _is_number(x),
    "array": lambda x, run: isinstance(x, list),
    "object": lambda x, run: isinstance(x, dict),
}
for _name, _check in _TYPE_CHECKS.items():
    _mark(_check, f"is not of type {_name}", leaf=True)


def _equal(one: Any, two: Any) -> bool:
    """jsonschema._utils.equal: JSON equality where True is not 1 and False is not 0 (recurses as deep as the
    schema's own constant, never deeper)."""
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


class Validator:
    """`validator(instance) -> bool`, exactly jsonschema's verdict; `locate` words the first failure found."""

    def __init__(self, root: Check) -> None:
        self.root = root

    def __call__(self, instance: Any) -> bool:
        return _valid(self.root, instance, _Run())

    def locate(self, instance: Any, seconds: float) -> tuple[str, str]:
        """Where an invalid `instance` fails, as ("a/0/b", "what fails there"), iteratively.

        Follows failing keywords down into the child values that fail; stops at an `anyOf` unless exactly
        one of its branches fits the value's type and required keys, and after `seconds` (the path so far).
        """
        deadline = time.monotonic() + seconds
        run = _Run()
        _valid(self.root, instance, run)  # remembers results at every window edge: each step below reuses them
        path: list[str] = []
        c, x = self.root, instance
        while time.monotonic() < deadline:
            while hasattr(c, "target"):
                c = c.target[0]
            parts = getattr(c, "parts", None)
            if parts is not None:
                bad = next((p for p in parts if not _valid(p, x, run, len(path))), None)
                if bad is None:
                    break
                c = bad
                continue
            children = getattr(c, "children", None)
            if children is not None:
                found = next(((k, sub, child) for k, sub, child in children(x)
                              if not _valid(sub, child, run, len(path) + 1)), None)
                if found is None:
                    break
                path.append(str(found[0]))
                c, x = found[1], found[2]
                continue
            branches = getattr(c, "branches", None)
            if branches is not None:
                fits = [b for b in branches if all(leaf(x, run) for leaf in _leaves(b))]
                if len(fits) == 1:
                    c = fits[0]
                    continue
            break
        says = getattr(c, "says", "")
        says = says(x) if callable(says) else says
        return "/".join(path) or "<root>", says or "does not match"


def _valid(check: Check, instance: Any, run: _Run, depth: int = 0) -> bool:
    """`check(instance)` exactly, with an explicit stack of the checks put off at each pass's window edge.

    Values are put off at the same depths below the root whatever the pass (one past each multiple of the
    window; `depth` is the instance's depth under the root), so the results remembered there serve every
    later call on the same run (`Validator.locate` walks down one level at a time)."""
    memo, work = run.memo, [(check, instance, (depth - 1) % run.window + 1 if depth else 0)]
    while work:
        c, x, start = work[-1]
        key = (id(c), id(x))
        if key in memo:
            work.pop()
            continue
        run.depth, run.pending = start, []
        try:
            ok = c(x, run)
        except RecursionError:  # the caller's own stack was already deep: narrower passes
            if run.window <= 1:
                raise
            run.window //= 2
            continue
        if run.pending:  # it assumed some: run those first (they are deeper), then this one again
            work.extend((pc, px, 1) for pc, px in run.pending)  # 1: one past an edge
            continue
        memo[key] = ok
        work.pop()
    return memo[(id(check), id(instance))]


def _leaves(c: Check) -> list[Check]:
    """The checks of `c` that look at the value itself only (its type, required keys, ...)."""
    while hasattr(c, "target"):
        c = c.target[0]
    parts = getattr(c, "parts", None)
    if parts is not None:
        return [p for p in parts if getattr(p, "leaf", False)]
    return [c] if getattr(c, "leaf", False) else []


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
            self.refs[ref] = _mark(lambda x, run: slot[0](x, run), target=slot)  # recursion: resolved once compiled
            slot.append(self.compile(target))
        return self.refs[ref]

    def compile(self, node: Any) -> Check:
        if node is True or node == {}:
            return _mark(lambda x, run: True, leaf=True)
        if node is False:
            return _mark(lambda x, run: False, "is not allowed here", leaf=True)
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

        def check(x: Any, run: _Run) -> bool:
            for c in checks:  # noqa: SIM110 - a plain loop: no generator frame on the hot path
                if not c(x, run):
                    return False
            return True
        return _mark(check, parts=checks)

    # ---------------------------------------------------------------- keywords
    def k_type(self, value: Any, node: dict) -> Check:
        names = [value] if isinstance(value, str) else list(value)
        if any(n not in _TYPES for n in names):
            raise UnsupportedSchema(f"type {value!r}")
        if len(names) == 1:
            return _TYPE_CHECKS[names[0]]
        tests = [_TYPES[n] for n in names]
        return _mark(lambda x, run: any(t(x) for t in tests), f"is not of type {' or '.join(names)}", leaf=True)

    def k_const(self, value: Any, node: dict) -> Check:
        return _mark(lambda x, run: _equal(x, value), f"is not {value!r:.40}", leaf=True)

    def k_enum(self, value: Any, node: dict) -> Check:
        says = "is not one of the allowed values"
        if all(isinstance(v, str) for v in value):
            allowed = frozenset(value)
            return _mark(lambda x, run: isinstance(x, str) and x in allowed, says, leaf=True)
        return _mark(lambda x, run: any(_equal(v, x) for v in value), says, leaf=True)

    def k_required(self, value: Any, node: dict) -> Check:
        keys = tuple(value)

        def says(x: Any) -> str:
            return f"lacks the required property {next(k for k in keys if k not in x)!r:.40}"
        return _mark(lambda x, run: not isinstance(x, dict) or all(k in x for k in keys), says, leaf=True)

    def k_ref(self, value: Any, node: dict) -> Check:
        return self.ref(value)

    def k_properties(self, value: Any, node: dict) -> Check:
        props = [(k, self.compile(v)) for k, v in value.items()]

        def check(x: Any, run: _Run) -> bool:
            if not isinstance(x, dict):
                return True
            if run.depth >= run.window:
                return all(_later(c, x[k], run) for k, c in props if k in x)
            run.depth += 1
            for k, c in props:
                if k in x and not c(x[k], run):
                    run.depth -= 1
                    return False
            run.depth -= 1
            return True
        return _mark(check, children=lambda x: [(k, c, x[k]) for k, c in props if isinstance(x, dict) and k in x])

    def k_patternProperties(self, value: Any, node: dict) -> Check:  # noqa: N802 - the JSON Schema keyword
        pats = [(re.compile(p), self.compile(s)) for p, s in value.items()]

        def children(x: Any) -> list:
            return [(k, c, v) for p, c in pats for k, v in x.items() if p.search(k)] if isinstance(x, dict) else []
        return _mark(lambda x, run: all(_descend(c, v, run) for _, c, v in children(x)), children=children)

    def additional(self, node: dict) -> Check:
        known = frozenset(node.get("properties", {}))
        patterns = "|".join(node.get("patternProperties", {}))
        pat = re.compile(patterns) if patterns else None
        sub = node["additionalProperties"]

        def extras(x: dict) -> list:
            return [k for k in x if k not in known and not (pat is not None and pat.search(k))]
        if sub is False:
            return _mark(lambda x, run: not isinstance(x, dict) or not extras(x),
                         lambda x: f"has the unexpected property {extras(x)[0]!r:.40}", leaf=True)
        c = self.compile(sub)
        if not known and pat is None:
            def every(x: Any, run: _Run) -> bool:
                if not isinstance(x, dict):
                    return True
                if run.depth >= run.window:
                    return all(_later(c, v, run) for v in x.values())
                run.depth += 1
                for v in x.values():
                    if not c(v, run):
                        run.depth -= 1
                        return False
                run.depth -= 1
                return True
            return _mark(every, children=lambda x: [(k, c, v) for k, v in x.items()] if isinstance(x, dict) else [])
        return _mark(lambda x, run: not isinstance(x, dict) or all(_descend(c, x[k], run) for k in extras(x)),
                     children=lambda x: [(k, c, x[k]) for k in extras(x)] if isinstance(x, dict) else [])

    def k_propertyNames(self, value: Any, node: dict) -> Check:  # noqa: N802
        c = self.compile(value)  # on strings: no depth

        def says(x: Any) -> str:
            return f"has the property name {next(k for k in x if not c(k, _Run()))!r:.40}, which is not allowed"
        return _mark(lambda x, run: not isinstance(x, dict) or all(c(k, run) for k in x), says, leaf=True)

    def k_pattern(self, value: Any, node: dict) -> Check:
        search = re.compile(value).search
        return _mark(lambda x, run: not isinstance(x, str) or search(x) is not None,
                     f"does not match {value!r:.40}", leaf=True)

    def k_minimum(self, value: Any, node: dict) -> Check:
        return _mark(lambda x, run: not _is_number(x) or x >= value, f"is less than {value}", leaf=True)

    def k_maximum(self, value: Any, node: dict) -> Check:
        return _mark(lambda x, run: not _is_number(x) or x <= value, f"is more than {value}", leaf=True)

    def k_exclusiveMinimum(self, value: Any, node: dict) -> Check:  # noqa: N802
        return _mark(lambda x, run: not _is_number(x) or x > value, f"is not more than {value}", leaf=True)

    def k_exclusiveMaximum(self, value: Any, node: dict) -> Check:  # noqa: N802
        return _mark(lambda x, run: not _is_number(x) or x < value, f"is not less than {value}", leaf=True)

    def k_minLength(self, value: Any, node: dict) -> Check:  # noqa: N802
        return _mark(lambda x, run: not isinstance(x, str) or len(x) >= value, f"is shorter than {value}", leaf=True)

    def k_maxLength(self, value: Any, node: dict) -> Check:  # noqa: N802
        return _mark(lambda x, run: not isinstance(x, str) or len(x) <= value, f"is longer than {value}", leaf=True)

    def k_minItems(self, value: Any, node: dict) -> Check:  # noqa: N802
        return _mark(lambda x, run: not isinstance(x, list) or len(x) >= value, f"has fewer than {value} items",
                     leaf=True)

    def k_maxItems(self, value: Any, node: dict) -> Check:  # noqa: N802
        return _mark(lambda x, run: not isinstance(x, list) or len(x) <= value, f"has more than {value} items",
                     leaf=True)

    def k_minProperties(self, value: Any, node: dict) -> Check:  # noqa: N802
        return _mark(lambda x, run: not isinstance(x, dict) or len(x) >= value,
                     f"has fewer than {value} properties", leaf=True)

    def k_maxProperties(self, value: Any, node: dict) -> Check:  # noqa: N802
        return _mark(lambda x, run: not isinstance(x, dict) or len(x) <= value,
                     f"has more than {value} properties", leaf=True)

    def k_prefixItems(self, value: Any, node: dict) -> Check:  # noqa: N802
        subs = [self.compile(s) for s in value]

        def children(x: Any) -> list:
            return [(i, c, v) for i, (c, v) in enumerate(zip(subs, x))] if isinstance(x, list) else []
        return _mark(lambda x, run: all(_descend(c, v, run) for _, c, v in children(x)), children=children)

    def items(self, node: dict) -> Check:
        start = len(node.get("prefixItems", []))
        sub = node["items"]
        if sub is False:
            return _mark(lambda x, run: not isinstance(x, list) or len(x) <= start,
                         f"has more than {start} items", leaf=True)
        c = self.compile(sub)

        def check(x: Any, run: _Run) -> bool:
            if not isinstance(x, list):
                return True
            if run.depth >= run.window:
                return all(_later(c, x[i], run) for i in range(start, len(x)))
            run.depth += 1
            for i in range(start, len(x)):
                if not c(x[i], run):
                    run.depth -= 1
                    return False
            run.depth -= 1
            return True
        return _mark(check, children=lambda x: [(i, c, x[i]) for i in range(start, len(x))] if isinstance(x, list)
                     else [])

    def k_anyOf(self, value: Any, node: dict) -> Check:  # noqa: N802
        branches = [self.compile(s) for s in value]
        says = "is none of the forms allowed here"
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
            def dispatch(x: Any, run: _Run) -> bool:
                if isinstance(x, dict):
                    for k in (x if len(x) < len(tagged) else tagged):
                        if k in tagged and k in x:
                            for c in tagged[k]:
                                if c(x, run):
                                    return True
                for c in others:  # noqa: SIM110 - a plain loop: no generator frame on the hot path
                    if c(x, run):
                        return True
                return False
            return _mark(dispatch, says, branches=branches)

        def check(x: Any, run: _Run) -> bool:
            for c in branches:  # noqa: SIM110 - a plain loop: no generator frame on the hot path
                if c(x, run):
                    return True
            return False
        return _mark(check, says, branches=branches)

    def k_allOf(self, value: Any, node: dict) -> Check:  # noqa: N802
        branches = [self.compile(s) for s in value]
        return _mark(lambda x, run: all(c(x, run) for c in branches), parts=branches)

    def k_oneOf(self, value: Any, node: dict) -> Check:  # noqa: N802
        branches = [self.compile(s) for s in value]
        return _mark(lambda x, run: sum(1 for c in branches if c(x, run)) == 1, "is not exactly one of its forms")

    def k_not(self, value: Any, node: dict) -> Check:
        c = self.compile(value)
        return _mark(lambda x, run: not c(x, run), "is a form not allowed here")


def compile_schema(schema: dict) -> Validator:
    """A `Validator`: `validator(instance)` is True exactly where jsonschema (Draft 2020-12) finds no error.

    Any depth of instance is validated without RecursionError (see the module docstring).
    Raises UnsupportedSchema if the schema uses a keyword not implemented here.
    """
    return Validator(_Compiler(schema).compile(schema))
