"""The sidecar format: defined once, in convert/schemas/checkpoint.schema.json, used by writer and loader."""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import MalformedCheckpoint

SIDECAR_NAME = "checkpoint.json"
FORMAT_NAME = "ckpt-convert"
FORMAT_VERSION = 1
EXTRA_FILE = "tensors.safetensors"
BARE_FILE = "model.safetensors"
MAX_SIDECAR_BYTES = 1 << 30

# Tags of the typed JSON encoding (see the schema's "value" definition for their payloads).
TAGS = ("$tuple", "$dict", "$odict", "$set", "$frozenset", "$int", "$float", "$complex", "$bytes",
        "$bytearray", "$tensor", "$ndarray", "$npscalar", "$npdtype", "$dtype", "$size", "$device",
        "$object", "$global", "$module")


def _schema_path() -> Path:
    # package data next to this module: the same path in a checkout, an editable install and a wheel
    return Path(str(resources.files("convert") / "schemas" / "checkpoint.schema.json"))


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
    from .schema_compiled import UnsupportedSchema, compile_schema

    try:
        return compile_schema(schema())
    except UnsupportedSchema:
        return None


def validate(sidecar: Any, where: str) -> None:
    """Raise MalformedCheckpoint with the first schema violation, located by JSON path."""
    fast = _compiled()
    if fast is not None and fast(sidecar):  # says yes only where jsonschema would; a no is re-checked below
        return
    error = next(iter(_validator().iter_errors(sidecar)), None)
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "<root>"
        raise MalformedCheckpoint(f"{where}: sidecar does not match the schema at {path}: {error.message[:200]}")
