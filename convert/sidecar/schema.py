"""The sidecar format: defined once, in convert/schemas/checkpoint.schema.json, used by writer and loader."""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConvertError, CorruptFolder, MalformedCheckpoint
from ..model.limits import LIMITS
from .deep import json_depth
from .integrity import check_sidecar
from .jsonio import strict_json
from .names import SIDECAR_NAME  # the name every layer imports from here
from .schema_compiled import UnsupportedSchema, compile_schema

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # a version-1 folder is a version-2 folder without graph references
EXTRA_FILE = "tensors.safetensors"
BARE_FILE = "model.safetensors"
# Load-path limits on checkpoint.json (a converted folder is untrusted input). Its size is capped in proportion
# to the data it describes: real sidecars measure 5-6.5 bytes per byte of the safetensors headers (440-600
# bytes per tensor), plus the non-tensor tree. Checked on the sidecar's size before it is parsed; the writer
# checks the same cap, so convert never writes a folder that load refuses.
SIDECAR_BASE_BYTES = 32 << 20  # the non-tensor tree (hyper-parameters, histories, ...) and tensors sharing entries
SIDECAR_BYTES_PER_HEADER_BYTE = 16  # ~3x what real sidecars use
MAX_SIDECAR_BYTES = LIMITS.sidecar_bytes
MAX_SIDECAR_DEPTH = LIMITS.sidecar_json_depth

def _schema_path() -> Path:
    # package data next to this module: the same path in a checkout, an editable install and a wheel
    return Path(str(resources.files("convert") / "schemas" / "checkpoint.schema.json"))


@functools.cache
def schema() -> dict[str, Any]:
    return json.loads(_schema_path().read_text(encoding="utf-8"))


@functools.cache
def _compiled() -> Any:
    """The same schema compiled to closures (seconds → milliseconds on big sidecars); None if it cannot be."""
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
        MAX_SIDECAR_BYTES. Only each file's 8-byte header length is read, and only of regular files
        in the folder itself (a symlink is not followed: the loader refuses one that leads outside).
    """
    header_bytes = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            # regular files only, not through a symlink (never read outside the folder), never blocking on a FIFO
            if not entry.name.endswith(".safetensors") or not entry.is_file(follow_symlinks=False):
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue  # reported when the loader opens it
            try:
                header_bytes += int.from_bytes(os.pread(fd, 8, 0), "little")
            except OSError:
                continue
            finally:
                os.close(fd)
            if header_bytes > MAX_SIDECAR_BYTES:
                break
    return min(MAX_SIDECAR_BYTES, SIDECAR_BASE_BYTES + SIDECAR_BYTES_PER_HEADER_BYTE * header_bytes)


def check_sidecar_size(folder: Path, nbytes: int, where: str, error: type[ConvertError] = MalformedCheckpoint) -> None:
    """Raise `error` if a sidecar of `nbytes` is more than `folder`'s data files allow (see sidecar_allowance)."""
    allowance = sidecar_allowance(folder)
    if nbytes > allowance:
        raise error(f"{where}: {nbytes} bytes, more than the {allowance} bytes its safetensors files "
                                  f"allow ({SIDECAR_BASE_BYTES} plus {SIDECAR_BYTES_PER_HEADER_BYTE} per header byte, "
                                  f"at most {MAX_SIDECAR_BYTES}); refusing")


def bounded_depth(sidecar: Any, where: str) -> int:
    """The JSON nesting depth of `sidecar`, measured iteratively; MalformedCheckpoint beyond MAX_SIDECAR_DEPTH."""
    depth = json_depth(sidecar, MAX_SIDECAR_DEPTH)
    if depth > MAX_SIDECAR_DEPTH:
        raise MalformedCheckpoint(f"{where}: nests deeper than {MAX_SIDECAR_DEPTH} levels; refusing")
    return depth


# jsonschema evaluates every branch of an `anyOf` in full and words an error (a repr of the value) for each
# failing one, so locating the error in a deep or wide hostile sidecar can take time exponential in its depth.
# It only words the message: after this many seconds the error is reported without its location.
LOCATE_SECONDS = 3.0
JSONSCHEMA_DEPTH = 40  # jsonschema recurses up to ~16 frames per level: deeper input has its error located by
# the compiled validator (schema_compiled.Validator.locate), within the interpreter's default recursion limit
_deadline = threading.local()


class _OutOfTime(Exception):
    pass


_UNWORDED = object()  # jsonschema ran out of time (or room) wording the error


@functools.cache
def _timed_validator() -> Any:
    """Draft 2020-12 jsonschema whose type checks (its most frequent step) stop at the thread's deadline."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER

    def timed(name: str) -> Any:
        def is_type(_checker: Any, instance: Any) -> bool:
            if time.monotonic() > _deadline.at:
                raise _OutOfTime
            return checker.is_type(instance, name)
        return is_type
    types = ("null", "boolean", "string", "integer", "number", "array", "object")
    timing = checker.redefine_many({name: timed(name) for name in types})
    return jsonschema.validators.extend(base, type_checker=timing)(schema())


def _first_error(sidecar: Any) -> Any:
    """jsonschema's first error (None if valid); raises _OutOfTime after LOCATE_SECONDS."""
    _deadline.at = time.monotonic() + LOCATE_SECONDS
    return next(iter(_timed_validator().iter_errors(sidecar)), None)


def schema_tags() -> set[str]:
    """The tags the schema's `value` definition allows (the codec's registry must list the same)."""
    return {name for alt in schema()["$defs"]["value"]["anyOf"] for name in alt.get("required", ())
            if name.startswith("$")}


def validate(sidecar: Any, where: str) -> None:
    """Raise MalformedCheckpoint with the first schema violation, located by JSON path.

    Depth-safe without changing any interpreter setting: the compiled validator is iterative in depth;
    an invalid sidecar nesting deeper than MAX_SIDECAR_DEPTH is refused as such, and one deeper than
    JSONSCHEMA_DEPTH has its error located by the compiled validator instead of jsonschema (which
    recurses several frames per level). Never a RecursionError or MemoryError.
    """
    if not isinstance(sidecar, dict):  # before jsonschema, whose message would repr the whole value
        raise MalformedCheckpoint(f"{where}: sidecar is a JSON {type(sidecar).__name__}, not an object")
    fast = _compiled()
    if fast is not None and fast(sidecar):  # exactly jsonschema's verdict: a no is only worded below
        return
    depth = bounded_depth(sidecar, where)
    if depth <= JSONSCHEMA_DEPTH:
        try:
            error = _first_error(sidecar)
        except (_OutOfTime, RecursionError, MemoryError):
            error = _UNWORDED
        if error is None:  # valid (reached only without a compiled validator)
            return
        if error is not _UNWORDED:
            path = "/".join(str(p) for p in error.absolute_path) or "<root>"
            raise MalformedCheckpoint(f"{where}: sidecar does not match the schema at {path}: {error.message[:200]}")
    if fast is None:
        raise MalformedCheckpoint(f"{where}: sidecar does not match the schema, or is too large or too deeply nested "
                                  "to check against it; refusing")
    path, says = fast.locate(sidecar, LOCATE_SECONDS)
    raise MalformedCheckpoint(f"{where}: sidecar does not match the schema at {path[:200]}: {says[:200]}")


def read_sidecar(folder: Path, *, check_seal: bool = False) -> dict:
    """The folder's checkpoint.json, parsed strictly and validated against the schema.

    With `check_seal`, CorruptFolder unless the file is exactly as its writer sealed it (folders
    written before sealed sidecars pass: they have no seal).
    """
    path = folder / SIDECAR_NAME
    if not folder.is_dir():
        if folder.exists():  # the commonest mix-up: the source file given where its converted folder goes
            raise ConvertError(f"{folder} is a file, not a converted folder: read a checkpoint file with "
                               f"read_checkpoint({str(folder)!r}), or convert it first (ckpt-convert convert "
                               f"{folder} OUT) and load OUT")
        raise ConvertError(f"{folder}: no such folder")
    if not path.is_file():
        raise MalformedCheckpoint(f"{folder}: no {SIDECAR_NAME}; not a converted checkpoint folder")
    inside_folder(folder, path)
    check_sidecar_size(folder, path.stat().st_size, str(path))  # before reading it: proportionate to the data
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConvertError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        sidecar = strict_json(raw, SIDECAR_NAME, MAX_SIDECAR_DEPTH)  # any depth: an explicit stack where deep
    except MemoryError:
        raise MalformedCheckpoint(f"{path}: does not fit in memory once parsed; refusing") from None
    problem = check_sidecar(sidecar, raw) if check_seal else None
    del raw
    validate(sidecar, SIDECAR_NAME)
    if problem is not None:
        raise CorruptFolder(f"{folder}: {problem}")
    return sidecar


def inside_folder(folder: Path, path: Path) -> Path:
    """`path` resolved, refused unless it lies inside `folder` (no `..`, no symlink out)."""
    real_folder, real = os.path.realpath(folder), os.path.realpath(path)
    if os.path.commonpath([real_folder, real]) != real_folder:
        raise MalformedCheckpoint(f"{path.name} resolves outside the checkpoint folder; refusing")
    return Path(real)
