"""Text rendering of a sidecar tree for `inspect`: keys, dtypes, shapes, sizes and values."""

from __future__ import annotations

from typing import Any

from ..read.torch_types import DTYPES_BY_NAME


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class TreeRenderer:
    def __init__(self, sidecar: dict, max_items: int = 50) -> None:
        self.sidecar = sidecar
        self.max_items = max_items
        self.lines: list[str] = []
        self.backing = {(s["file"], s["key"]): sid for sid, s in sidecar["storages"].items()}
        self.storage_users: dict[str, int] = {}
        for info in sidecar["tensors"].values():
            self.storage_users[info["storage"]] = self.storage_users.get(info["storage"], 0) + 1

    def render(self) -> str:
        sc = self.sidecar
        src = sc["source"]
        self.lines += [f"source: {src['name']} ({src['format']}, pickle protocol {src['pickle_protocol']}, "
                       f"{human_bytes(src['size'])}, sha256 {src['sha256'][:16]}…)",
                       f"converted by {sc['converter']['name']} {sc['converter']['version']}", "files:"]
        for name, info in sc["files"].items():
            self.lines.append(f"  {name}: {info['tensors']} tensors, {human_bytes(info['bytes'])}")
        for module in sc["modules"]:
            where = ".".join(module["path"]) or "<root>"
            self.lines.append(f"module at {where}: {module['class']} (given back as its state_dict)")
        self.lines.append("tree:")
        self.node("<root>", sc["root"], 1)
        return "\n".join(self.lines)

    def tensor_line(self, tid: str) -> str:
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
        pad = "  " * depth
        if isinstance(v, list):
            self.container(label, "list", [(i, x) for i, x in enumerate(v)], depth)
            return
        if not isinstance(v, dict):
            self.lines.append(f"{pad}{label}: {v!r:.100}")
            return
        tag = next((k for k in v if k.startswith("$")), None)
        p = v.get(tag) if tag else None
        if tag is None:
            self.container(label, "dict", list(v.items()), depth)
        elif tag in ("$dict", "$odict"):
            kind = "OrderedDict" if tag == "$odict" else "dict"
            self.container(label, kind, [(self.short(k), x) for k, x in p], depth)
        elif tag in ("$tuple", "$set", "$frozenset"):
            self.container(label, tag[1:], list(enumerate(p)), depth)
        elif tag == "$tensor":
            self.lines.append(f"{pad}{label}: {self.tensor_line(p)}")
        elif tag == "$ndarray":
            a = self.sidecar["arrays"][p]
            self.lines.append(f"{pad}{label}: ndarray {a['dtype']} {a['shape']}")
        elif tag == "$module":
            cls = self.sidecar["modules"][p["index"]]["class"]
            self.node(f"{label} [module {cls} → state_dict]", p["state_dict"], depth)
        elif tag == "$object":
            self.lines.append(f"{pad}{label}: inert record of {p['class']}")
        else:
            self.lines.append(f"{pad}{label}: {self.short(v)}")

    def container(self, label: str, kind: str, items: list, depth: int) -> None:
        self.lines.append(f"{'  ' * depth}{label}: {kind} ({len(items)} items)")
        for key, value in items[:self.max_items]:
            self.node(str(key), value, depth + 1)
        if len(items) > self.max_items:
            self.lines.append(f"{'  ' * (depth + 1)}… {len(items) - self.max_items} more")

    def short(self, v: Any) -> str:
        if isinstance(v, dict) and len(v) == 1:
            tag, p = next(iter(v.items()))
            if tag == "$int":
                return str(int(p, 16))
            if tag == "$float":
                import struct
                return repr(struct.unpack(">d", bytes.fromhex(p))[0])
            if tag in ("$dtype", "$device", "$global", "$npdtype"):
                return f"{tag[1:]} {p}"
            if tag == "$size":
                return f"torch.Size({p})"
            if tag in ("$bytes", "$bytearray"):
                return f"{tag[1:]} ({len(p) * 3 // 4} bytes)"
            if tag == "$npscalar":
                return f"numpy scalar {p['dtype']} 0x{p['hex']}"
        return repr(v)[:100]


def render_tree(sidecar: dict, max_items: int = 50) -> str:
    return TreeRenderer(sidecar, max_items).render()
