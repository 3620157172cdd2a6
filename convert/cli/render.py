"""Text rendering of a sidecar tree for `inspect`: keys, dtypes, shapes, sizes and values.

Every tagged value is described by its tag in convert/sidecar/codec.py; shared values show `(#N)` where
they are defined and "→ the same object as #N" where they are referenced again.
"""

from __future__ import annotations

from typing import Any

from ..model.dtypes import DTYPE_NAME_BY_CODE, ITEMSIZE_BY_CODE
from ..model.sizes import human_bytes
from ..model.torch_types import DTYPES_BY_NAME
from ..sidecar.codec import tag_of


class TreeRenderer:
    def __init__(self, sidecar: dict, max_items: int = 50, plain: dict[str, tuple[str, list]] | None = None) -> None:
        self.sidecar = sidecar
        self.plain = plain or {}  # plain tensor/array id → (safetensors dtype code, shape) from the headers
        self.max_items = max_items
        self.lines: list[str] = []
        self.storage_users: dict[str, int] = {}
        for info in sidecar["tensors"].values():
            self.storage_users[info["storage"]] = self.storage_users.get(info["storage"], 0) + 1

    def render(self) -> str:
        sc = self.sidecar
        src = sc["source"]
        if src["format"] == "live":  # written by save_checkpoint: no source file
            self.lines.append(f"source: live objects saved with save_checkpoint (torch {src.get('torch', '?')})")
        else:
            self.lines.append(f"source: {src['name']} ({src['format']}, pickle protocol {src['pickle_protocol']}, "
                              f"{human_bytes(src['size'])}, sha256 {src['sha256'][:16]}…)")
            if src.get("salvaged"):
                self.lines.append(f"salvaged: {src.get('neutralised_count', '?')} call(s) that would have run code "
                                  "kept as inert records (scan still calls the source unsafe)")
        if sc.get("converter"):  # None when inspecting a checkpoint file: nothing was converted
            self.lines.append(f"converted by {sc['converter']['name']} {sc['converter']['version']}")
        self.lines.append("files:" if sc.get("converter") else "files (as convert would write them):")
        for name, info in sc["files"].items():
            self.lines.append(f"  {name}: {info['tensors']} tensors, {human_bytes(info['bytes'])}")
        for module in sc["modules"]:
            where = ".".join(module["path"]) or "<root>"
            self.lines.append(f"module at {where}: {module['class']} (given back as its state_dict)")
        self.lines.append("tree:")
        self.node("<root>", sc["root"], 1)
        return "\n".join(self.lines)

    def plain_line(self, kind: str, id_: str) -> str:
        code, shape = self.plain.get(id_, ("?", []))
        numel = 1
        for s in shape:
            numel *= s
        if kind == "ndarray":
            return f"ndarray {code} {list(shape)}"
        name = DTYPE_NAME_BY_CODE.get(code, code)
        return f"{kind} {name} {list(shape)} {human_bytes(numel * ITEMSIZE_BY_CODE.get(code, 0))}"

    def tensor_line(self, tid: str) -> str:
        if tid not in self.sidecar["tensors"]:
            return self.plain_line("tensor", tid)
        t = self.sidecar["tensors"][tid]
        numel = 1
        for s in t["shape"]:
            numel *= s
        size = numel * DTYPES_BY_NAME[t["dtype"]].itemsize
        extras = []
        if t["parameter"]:
            extras.append("Parameter")
        if t["requires_grad"]:
            extras.append("requires_grad")
        if self.storage_users.get(t["storage"], 0) > 1:
            extras.append(f"shares storage {t['storage']}")
        tail = f" ({', '.join(extras)})" if extras else ""
        return f"tensor {t['dtype']} {t['shape']} {human_bytes(size)}{tail}"

    def node(self, label: str, v: Any, depth: int) -> None:
        """Lines for `v` and everything below it, depth first, with an explicit stack: a sidecar may nest
        as deep as the loader accepts (LIMITS.sidecar_json_depth), far beyond the interpreter's recursion limit."""
        stack: list[tuple[str, Any, int] | str] = [(label, v, depth)]  # a node to describe, or a finished line
        while stack:
            task = stack.pop()
            if isinstance(task, str):
                self.lines.append(task)
                continue
            stack.extend(reversed(self._describe(*task)))

    def _describe(self, label: str, v: Any, depth: int) -> list:
        """Add `v`'s own line; return what comes below it, in order (nodes and lines)."""
        pad = "  " * depth
        if isinstance(v, list):
            return self.container(label, "list", list(enumerate(v)), depth)
        if not isinstance(v, dict):
            self.lines.append(f"{pad}{label}: {v!r:.100}")
            return []
        tag = tag_of(v)
        if tag is None:
            return self.container(label, "dict", list(v.items()), depth)
        if "$id" in v:
            label = f"{label} (#{v['$id']})"
        payload = v[tag.name]
        items = tag.items(payload)
        if tag.name == "$ref" and v.get("$with"):  # a cycle through a tuple: the definitions sit inside
            return self.container(f"{label} {tag.describe(payload, self)}, defined inside", "items",
                                  list(enumerate(v["$with"])), depth)
        if tag.name == "$module":
            return [(f"{label} [{tag.describe(payload, self)}]", payload["state_dict"], depth)]
        if items is not None:
            kind = {"$odict": "OrderedDict", "$list": "list"}.get(tag.name, tag.name[1:])
            return self.container(label, kind, items, depth)
        self.lines.append(f"{pad}{label}: {tag.describe(payload, self)}")
        return []

    def container(self, label: str, kind: str, items: list, depth: int) -> list:
        self.lines.append(f"{'  ' * depth}{label}: {kind} ({len(items)} item{'' if len(items) == 1 else 's'})")
        below: list = [(str(key), value, depth + 1) for key, value in items[:self.max_items]]
        if len(items) > self.max_items:
            below.append(f"{'  ' * (depth + 1)}… {len(items) - self.max_items} more")
        return below


def render_tree(sidecar: dict, max_items: int = 50, plain: dict[str, tuple[str, list]] | None = None) -> str:
    """The tree as text; `plain` gives (dtype code, shape) of the tensors and arrays listed in `entries`."""
    return TreeRenderer(sidecar, max_items, plain).render()


def plain_shapes(sidecar: dict, headers: dict[str, dict[str, tuple[str, list]]]) -> dict[str, tuple[str, list]]:
    """id → (dtype code, shape) of every plain tensor/array, from file → {key: (code, shape)}."""
    return {id_: headers.get(name, {}).get(key, ("?", []))
            for name, ids in sidecar.get("entries", {}).items() for id_, key in ids.items()}
