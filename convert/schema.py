"""The sidecar format: defined once, in schemas/checkpoint.schema.json, used by writer and loader."""

from __future__ import annotations

import functools
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from .deep import json_depth, run_deep
from .errors import MalformedCheckpoint

SIDECAR_NAME = "checkpoint.json"
FORMAT_NAME = "ckpt-convert"
FORMAT_VERSION = 1
EXTRA_FILE = "tensors.safetensors"
BARE_FILE = "model.safetensors"
# Load-path limits on checkpoint.json (a converted folder is untrusted input). Its size is capped in proportion
# to the data it describes: real sidecars measure 5-6.5 bytes per byte of the safetensors headers (440-600
# bytes per tensor), plus the non-tensor tree. Checked on the sidecar's size before it is parsed; the writer
# checks the same cap, so convert never writes a folder that load refuses.
SIDECAR_BASE_BYTES = 32 << 20  # the non-tensor tree (hyper-parameters, histories, ...) and tensors sharing entries
SIDECAR_BYTES_PER_HEADER_BYTE = 16  # ~3x what real sidecars use
MAX_SIDECAR_BYTES = 1 << 30  # whatever the headers say
MAX_SIDECAR_DEPTH = 1000  # JSON nesting; the reader's 200 container levels encode to at most ~4 JSON levels each

# Tags of the typed JSON encoding (see the schema's "value" definition for their payloads).
TAGS = ("$tuple", "$dict", "$odict", "$set", "$frozenset", "$int", "$float", "$complex", "$bytes",
        "$bytearray", "$tensor", "$ndarray", "$npscalar", "$npdtype", "$dtype", "$size", "$device",
        "$object", "$global", "$module")


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


def sidecar_allowance(folder: Path) -> int:
    """The largest checkpoint.json accepted beside the safetensors files now in `folder`.

    Args:
        folder: a converted folder (or the writer's temp folder, once its data files are written).
    Returns:
        SIDECAR_BASE_BYTES + SIDECAR_BYTES_PER_HEADER_BYTE x (the sizes of their headers), at most
        MAX_SIDECAR_BYTES. Only each file's 8-byte header length is read.
    """
    header_bytes = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.endswith(".safetensors") or not entry.is_file():
                continue
            try:
                with open(entry.path, "rb") as f:
                    header_bytes += int.from_bytes(f.read(8), "little")
            except OSError:
                continue  # reported when the loader opens it
            if header_bytes > MAX_SIDECAR_BYTES:
                break
    return min(MAX_SIDECAR_BYTES, SIDECAR_BASE_BYTES + SIDECAR_BYTES_PER_HEADER_BYTE * header_bytes)


def check_sidecar_size(folder: Path, nbytes: int, where: str) -> None:
    """Raise MalformedCheckpoint if a sidecar of `nbytes` is more than `folder`'s data files allow."""
    allowance = sidecar_allowance(folder)
    if nbytes > allowance:
        raise MalformedCheckpoint(f"{where}: {nbytes} bytes, more than the {allowance} bytes its safetensors files "
                                  f"allow ({SIDECAR_BASE_BYTES} plus {SIDECAR_BYTES_PER_HEADER_BYTE} per header byte, "
                                  f"at most {MAX_SIDECAR_BYTES}); refusing")


def bounded_depth(sidecar: Any, where: str) -> int:
    """The JSON nesting depth of `sidecar`, measured iteratively; MalformedCheckpoint beyond MAX_SIDECAR_DEPTH."""
    depth = json_depth(sidecar, MAX_SIDECAR_DEPTH)
    if depth > MAX_SIDECAR_DEPTH:
        raise MalformedCheckpoint(f"{where}: nests deeper than {MAX_SIDECAR_DEPTH} levels; refusing")
    return depth


def _first_error(sidecar: Any) -> Any:
    return next(iter(_validator().iter_errors(sidecar)), None)


def validate(sidecar: Any, where: str) -> None:
    """Raise MalformedCheckpoint with the first schema violation, located by JSON path.

    Depth-safe: nesting up to MAX_SIDECAR_DEPTH is validated (on a big-stack thread when deep), deeper
    is refused before any recursive check; never a RecursionError or MemoryError.
    """
    if not isinstance(sidecar, dict):  # before jsonschema, whose message would repr the whole value
        raise MalformedCheckpoint(f"{where}: sidecar is a JSON {type(sidecar).__name__}, not an object")
    fast = _compiled()
    depth = None
    if fast is not None:
        try:  # inline first: no depth scan, no thread for the usual shallow sidecar
            if fast(sidecar):  # says yes only where jsonschema would; a no is re-checked below
                return
        except RecursionError:
            depth = bounded_depth(sidecar, where)
            if run_deep(fast, sidecar, depth=depth):
                return
    if depth is None:
        depth = bounded_depth(sidecar, where)
    try:
        error = run_deep(_first_error, sidecar, depth=depth)
    except (RecursionError, MemoryError) as exc:
        raise MalformedCheckpoint(f"{where}: sidecar does not match the schema ({type(exc).__name__} while "
                                  "locating the error)") from None
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "<root>"
        raise MalformedCheckpoint(f"{where}: sidecar does not match the schema at {path}: {error.message[:200]}")
