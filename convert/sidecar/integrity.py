"""A converted folder's integrity record: what ties checkpoint.json to its data files, and the check.

Each conversion draws a random folder id. It is written into every safetensors file's
`__metadata__` (as `folder_id`, beside `"format": "pt"`) and into the sidecar (top-level
`folder_id`), together with each data file's sha256 (`files[NAME]["sha256"]`, over the whole
file, header included). checkpoint.json is the last file written, so a complete folder always
carries a record of its own data files. SHA-256 because it is the common choice users can check
with `sha256sum`, and with the SHA extensions of current CPUs it hashes faster than the disk
writes (see benchmarks/durability.py).

Checks, cheapest first:
- `check_header` (every load, no extra I/O): the file's folder id equals the sidecar's, the name it
  was written as (`file_name`, in the same metadata) is its name, and its data area has the size the
  sidecar records. A file from another conversion is refused.
- `primitives.hashing.sha256_path` / `verify_folder` (`load_checkpoint(verify=True)`, `ckpt-convert verify FOLDER`):
  every byte of every data file against its digest.

Folders written before this record existed (no `folder_id` in the sidecar) load without these
checks; a data file that carries a folder id under a sidecar without one is refused (mixed).

The sidecar itself is sealed (`integrity`, its last key, written last): `copied` holds the
sha256 of each file copied in as it is (an HF config.json), and `sidecar_sha256` the sha256 of the
file's own bytes with that one value set to "". The file must also be exactly the compact
serialization (`sidecar_bytes`) of what it parses to, so any edit of checkpoint.json (an epoch,
a stride, a digest, even a space) is detected by `check_sidecar`; the data files are tied to it by
their digests in it. This detects accidents and tampering that does not recompute the seal; it is
not a signature. Folders without `integrity` (earlier releases) load without this check.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets

from ..model.limits import LIMITS

FOLDER_ID_KEY = "folder_id"
FILE_NAME_KEY = "file_name"  # the name a data file was written as: two files of one folder swapped are refused
SEAL_KEY = "integrity"
MAX_HEADER = LIMITS.safetensors_header_bytes


def sidecar_bytes(sidecar: dict) -> bytes:
    """checkpoint.json's bytes: compact, key order kept, UTF-8 (the one serialization the seal accepts).

    A source name that is not UTF-8 (kept by surrogateescape) is written with ASCII `\\udcXX` escapes instead."""
    text = json.dumps(sidecar, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(sidecar, separators=(",", ":"), ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


_UNSEALED_TAIL = b'"sidecar_sha256":""}}\n'  # how a sidecar ends with its seal (the last key) still blank


def _sealed_tail(digest: str) -> bytes:
    return f'"sidecar_sha256":"{digest}"}}}}\n'.encode()


def seal(sidecar: dict, copied: dict[str, str]) -> bytes:
    """Add the seal (copied files' digests, the sidecar's own digest) to `sidecar`; returns its final bytes."""
    sidecar.pop(SEAL_KEY, None)
    sidecar[SEAL_KEY] = {"copied": dict(copied), "sidecar_sha256": ""}  # last: its value ends the file
    data = sidecar_bytes(sidecar)
    if not data.endswith(_UNSEALED_TAIL):  # cannot happen: the seal is the last key
        raise AssertionError("the seal is not the sidecar's last key")
    digest = hashlib.sha256(data).hexdigest()
    sidecar[SEAL_KEY]["sidecar_sha256"] = digest
    return data[:-len(_UNSEALED_TAIL)] + _sealed_tail(digest)  # = sidecar_bytes(sidecar), serialized once


def check_sidecar(sidecar: dict, raw: bytes) -> str | None:
    """The problem if checkpoint.json (`raw`, parsed as `sidecar`) is not exactly as sealed, else None."""
    if not isinstance(sidecar, dict) or SEAL_KEY not in sidecar:
        return None  # written before sealed sidecars (or not a sidecar: the schema check says so)
    seal = sidecar[SEAL_KEY]
    digest = seal.get("sidecar_sha256") if isinstance(seal, dict) else None
    tail = _sealed_tail(digest) if isinstance(digest, str) else None
    if (tail is None or list(sidecar)[-1] != SEAL_KEY or list(seal)[-1] != "sidecar_sha256"
            or not raw.endswith(tail)
            or hashlib.sha256(raw[:-len(tail)] + _UNSEALED_TAIL).hexdigest() != digest
            or sidecar_bytes(sidecar) != raw):  # last: the costly one (any other serialization is an edit)
        return "checkpoint.json was changed after it was written (its seal does not match)"
    return None


def copied_names(sidecar: dict) -> list[str]:
    """The files the conversion copied into the folder as they are (recorded by sealed sidecars only)."""
    return list(sidecar.get(SEAL_KEY, {}).get("copied", {}))


def header_identity(path: str | os.PathLike) -> tuple[dict | None, int] | None:
    """(`__metadata__`, data-area size) of a safetensors file, without torch; None if it is not one."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header_len = int.from_bytes(f.read(8), "little")
            if size < 8 or header_len > MAX_HEADER or 8 + header_len > size:
                return None
            header = json.loads(f.read(header_len))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    metadata = header.get("__metadata__")
    return (metadata if isinstance(metadata, dict) else None), size - 8 - header_len


def new_folder_id() -> str:
    """A fresh random folder id (128 bits, hex)."""
    return secrets.token_hex(16)


def record(sidecar: dict, folder_id: str, digests: dict[str, str]) -> None:
    """Add the folder id and the data files' digests to `sidecar` (in place, folder id near the top)."""
    items = list(sidecar.items())
    sidecar.clear()
    for key, value in items:
        sidecar[key] = value
        if key == "format_version":
            sidecar[FOLDER_ID_KEY] = folder_id
    sidecar.setdefault(FOLDER_ID_KEY, folder_id)
    for name, digest in digests.items():
        sidecar["files"][name]["sha256"] = digest


# The hasher lives in primitives.hashing; these names stay only for callers not yet moved to it
# (ops/verify.py): aliases, not copies. Remove once nothing imports them from here.


def check_header(sidecar: dict, name: str, metadata: dict | None, data_bytes: int) -> str | None:
    """The problem with data file `name` given its safetensors `__metadata__` and data-area size, or None."""
    expected = sidecar.get(FOLDER_ID_KEY)
    found = (metadata or {}).get(FOLDER_ID_KEY)
    if expected is None and found is None:
        return None  # a folder written before folder ids: nothing to compare
    if found != expected:
        return (f"{name} belongs to another conversion than checkpoint.json (folder id {found or 'none'}, "
                f"checkpoint.json has {expected or 'none'}); the folder mixes files of different conversions")
    written_as = (metadata or {}).get(FILE_NAME_KEY)
    if written_as is not None and written_as != name:  # absent: written before the name was recorded
        return (f"{name} was written as {written_as} (data files of the folder were renamed or swapped); "
                "rename them back or convert the source again")
    info = sidecar["files"].get(name)
    if info is not None and info["bytes"] != data_bytes:
        return f"{name} holds {data_bytes} bytes of data; checkpoint.json records {info['bytes']}"
    return None


def check_digest(sidecar: dict, name: str, actual: str) -> str | None:
    """The problem if data file `name`'s sha256 `actual` differs from the recorded one, else None."""
    expected = sidecar["files"].get(name, {}).get("sha256")
    if expected is not None and expected != actual:
        return f"{name}: sha256 {actual} differs from the {expected} recorded in checkpoint.json (the file is corrupt)"
    return None


def has_record(sidecar: dict) -> bool:
    """Whether the sidecar carries an integrity record (folder id and every data file's digest)."""
    return FOLDER_ID_KEY in sidecar and all("sha256" in info for info in sidecar["files"].values())
