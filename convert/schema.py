"""The sidecar format: defined once, in schemas/checkpoint.schema.json, used by writer and loader."""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import MalformedCheckpoint

SIDECAR_NAME = "checkpoint.json"
FORMAT_NAME = "ckpt-convert"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # a version-1 folder is a version-2 folder without graph references
EXTRA_FILE = "tensors.safetensors"
BARE_FILE = "model.safetensors"
MAX_SIDECAR_BYTES = 1 << 30

def _schema_path() -> Path:
    here = Path(__file__).resolve().parent.parent / "schemas" / "checkpoint.schema.json"
    if here.is_file():  # source checkout / editable install
        return here
    return Path(str(resources.files("convert") / "schemas" / "checkpoint.schema.json"))  # installed wheel


@functools.cache
def schema() -> dict[str, Any]:
    return json.loads(_schema_path().read_text(encoding="utf-8"))


@functools.cache
def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(schema())


@functools.cache
def _compiled() -> Any:
    """The same schema compiled to closures (seconds → milliseconds on big sidecars); None if it cannot be."""
    from .load.schema_compiled import UnsupportedSchema, compile_schema

    try:
        return compile_schema(schema())
    except UnsupportedSchema:
        return None


def schema_tags() -> set[str]:
    """The tags the schema's `value` definition allows (the codec's registry must list the same)."""
    return {name for alt in schema()["$defs"]["value"]["anyOf"] for name in alt.get("required", ())
            if name.startswith("$")}


def validate(sidecar: Any, where: str) -> None:
    """Raise MalformedCheckpoint with the first schema violation, located by JSON path."""
    fast = _compiled()
    if fast is not None and fast(sidecar):  # says yes only where jsonschema would; a no is re-checked below
        return
    error = next(iter(_validator().iter_errors(sidecar)), None)
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "<root>"
        raise MalformedCheckpoint(f"{where}: sidecar does not match the schema at {path}: {error.message[:200]}")
