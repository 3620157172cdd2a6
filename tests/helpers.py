"""Shared helpers for the ckpt-convert test suite.

Import as ``from tests.helpers import ...``.  Nothing here depends on the implementation's
internals: only the public API exported by ``convert``.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F  # noqa: N812 - the tutorial's spelling

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "convert" / "schemas" / "checkpoint.schema.json"

TORCH_FORMATS = ("zip", "legacy")
PICKLE_FORMATS = tuple(f"pickle{n}" for n in range(6))
ALL_FORMATS = TORCH_FORMATS + PICKLE_FORMATS

SIDECAR = "checkpoint.json"

# torch.load itself cannot read these back from the legacy (non-zip) format.
LEGACY_UNSUPPORTED_DTYPES = {torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32, torch.uint64}


# --------------------------------------------------------------------------------------- reference

def torch_reference(obj, _memo=None):
    """What ``load_checkpoint`` must return for a ``torch.load(weights_only=False)`` result.

    The container structure is copied (exact container types kept, ``OrderedDict`` attributes
    such as ``_metadata`` kept) and every ``nn.Module`` is replaced by ``module.state_dict()``.
    Tensors, numpy values and anything else are kept as the very same objects, so tensor
    aliasing is preserved.
    """
    memo = {} if _memo is None else _memo
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, nn.Module):
        result = obj.state_dict()
        memo[key] = result
        return result
    if isinstance(obj, torch.Tensor):
        return obj
    t = type(obj)
    if t is dict or t is collections.OrderedDict:
        result = t()
        memo[key] = result
        for k, v in obj.items():
            result[k] = torch_reference(v, memo)
        for attr, value in vars(obj).items() if t is collections.OrderedDict else ():
            setattr(result, attr, copy.deepcopy(value))
        return result
    if t is list:
        result = []
        memo[key] = result
        result.extend(torch_reference(v, memo) for v in obj)
        return result
    if t is tuple:
        result = tuple(torch_reference(v, memo) for v in obj)
        if key in memo:  # built while its items were copied (a cycle through it): that copy, as pickle does
            return memo[key]
        memo[key] = result
        return result
    return obj


# --------------------------------------------------------------------------------------- saving

def save(obj, path, fmt: str) -> Path:
    """Write ``obj`` to ``path`` in one of ALL_FORMATS."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "zip":
            torch.save(obj, path)
        elif fmt == "legacy":
            torch.save(obj, path, _use_new_zipfile_serialization=False)
        elif fmt in PICKLE_FORMATS:
            with open(path, "wb") as f:
                pickle.dump(obj, f, protocol=int(fmt[len("pickle"):]))
        else:
            raise ValueError(fmt)
    return path


def load_reference(path, fmt: str):
    """The original loader's view of a file written by ``save``, modules replaced by state dicts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt in TORCH_FORMATS:
            obj = torch.load(path, weights_only=False, map_location="cpu")
        else:
            with open(path, "rb") as f:
                obj = pickle.load(f)
    return torch_reference(obj)


def roundtrip(obj, tmp_path, fmt: str, name: str = "ckpt.pt"):
    """Save ``obj`` as ``fmt``, convert it, load the folder back.

    Returns ``(loaded, reference)``; reference is ``torch_reference(torch.load(...))`` (or
    ``pickle.load`` for the pickle formats).
    """
    from convert import convert_checkpoint, load_checkpoint

    tmp_path = Path(tmp_path)
    src = save(obj, tmp_path / f"src_{fmt}" / name, fmt)
    dst = tmp_path / f"out_{fmt}_{Path(name).name.replace('.', '_')}"
    convert_checkpoint(src, dst)
    loaded = load_checkpoint(dst)
    return loaded, load_reference(src, fmt)


def assert_equivalent(a, b):
    from convert import compare_trees

    diffs = compare_trees(a, b)
    assert diffs == [], "\n".join(map(str, diffs))


# --------------------------------------------------------------------------------------- checks

def bits(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor's elements in logical (row-major) order."""
    t = t.detach().cpu().contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def float_bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def float_from_bits(b: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", b))[0]


NAN_WITH_PAYLOAD = float_from_bits(0x7FF8_0000_0000_1234)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sidecar(folder) -> dict:
    with open(Path(folder) / SIDECAR, encoding="utf-8") as f:
        return json.load(f)


def validate_sidecar(doc: dict) -> None:
    import jsonschema

    with open(SCHEMA_PATH, encoding="utf-8") as f:
        schema = json.load(f)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    cls(schema).validate(doc)


def folder_snapshot(folder) -> dict:
    """{relative path: bytes} of every file under ``folder``."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def comparable_snapshot(folder) -> dict:
    """`folder_snapshot` without what differs by design between two conversions of the same source:
    the random folder id (replaced by zeros wherever it occurs) and the file and sidecar digests that cover it.
    Works for one converted folder and for a tree of them (a migrate destination)."""
    snap = folder_snapshot(folder)
    for name in [n for n in snap if n == "checkpoint.json" or n.endswith("/checkpoint.json")]:
        prefix = name[: -len("checkpoint.json")]
        sidecar = json.loads(snap[name])
        folder_id = sidecar.pop("folder_id", None)
        for info in sidecar.get("files", {}).values():
            info.pop("sha256", None)
        if "integrity" in sidecar:
            sidecar["integrity"]["sidecar_sha256"] = ""
        snap[name] = json.dumps(sidecar).encode()
        if folder_id:
            for other in snap:
                if other.startswith(prefix) and "/" not in other[len(prefix):]:
                    snap[other] = snap[other].replace(folder_id.encode(), b"0" * len(folder_id))
    return snap


def run_cli(*args, cwd=None, env_extra=None, timeout=120) -> subprocess.CompletedProcess:
    """``python -m convert ARGS`` with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "convert", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_python(script: str, *args, cwd=None, pythonpath=None, timeout=120) -> subprocess.CompletedProcess:
    """Run ``script`` (source text) in a fresh interpreter as ``__main__``."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert err, "expected an error message on stderr"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{proc.stderr}"


# --------------------------------------------------------------------------------------- models

class Net(nn.Module):
    """The PyTorch 'saving and loading models' tutorial CNN (optionally with a BatchNorm2d)."""

    def __init__(self, batchnorm: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        if batchnorm:
            self.bn1 = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.conv1(x)
        if hasattr(self, "bn1"):
            x = self.bn1(x)
        x = self.pool(F.relu(x))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def trained(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 2, seed: int = 0):
    """Run a few real training steps so optimizer state (momentum buffers, Adam moments) exists."""
    g = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    loss = None
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (4,), generator=g)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    return loss.detach()


def make_net(batchnorm: bool = False, seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(batchnorm=batchnorm)


def numpy_payload() -> dict:
    """Plain data + numpy values, picklable with every protocol (no torch tensors)."""
    return {
        "arr_f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "arr_f64_fortran": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4) / 7),
        "arr_be_f4": (np.arange(5) - 2.5).astype(">f4"),
        "arr_be_i8": np.array([1, -2, 2**40], dtype=">i8"),
        "arr_i64": np.array([-(2**63), 2**63 - 1, 0], dtype=np.int64),
        "arr_u8": np.array([0, 255, 7], dtype=np.uint8),
        "arr_bool": np.array([True, False, True]),
        "arr_c64": np.array([1 + 2j, -0.0 - 1j], dtype=np.complex64),
        "arr_f16": np.array([0.5, -0.0, np.inf], dtype=np.float16),
        "arr_empty": np.zeros((0, 3), dtype=np.float32),
        "arr_0d": np.array(3.25, dtype=np.float64),
        "np_f32": np.float32(1.5),
        "np_f64": np.float64(-0.0),
        "np_i64": np.int64(-7),
        "np_u16": np.uint16(65535),
        "np_bool": np.bool_(True),
        "int": 3,
        "neg": -12345678901,
        "big": 2**100,
        "neg_big": -(2**200),
        "float": 0.1,
        "negzero": -0.0,
        "inf": float("inf"),
        "ninf": float("-inf"),
        "nan": float("nan"),
        "nan_payload": NAN_WITH_PAYLOAD,
        "str": "héllo wörld 😀",
        "bytes": bytes(range(256)),
        "none": None,
        "true": True,
        "false": False,
        "tuple": (1, 2.0, "three"),
        "list": [1, [2, 3], (4,)],
        "empty_list": [],
        "empty_tuple": (),
        "empty_dict": {},
        "int_keys": {0: "zero", 1: "one", -5: "minus five"},
        "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
        "nested": {"a": {"b": {"c": [1.5, None]}}},
        "set": {1, 2, 3},
        7: "int key at top level",
    }


# --------------------------------------------------------------------------------------- hostile pickles

class EvilSystem:
    """Unpickling this runs ``os.system("touch CANARY")`` (pickled as ``posix.system`` on Linux)."""

    def __init__(self, canary):
        self.canary = str(canary)

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


class EvilEval:
    def __init__(self, canary):
        self.canary = str(canary)

    def __reduce__(self):
        return (eval, (f"__import__('os').system('touch {self.canary}')",))


class EvilPopen:
    def __init__(self, canary):
        self.canary = str(canary)

    def __reduce__(self):
        return (subprocess.Popen, (["touch", self.canary],))


def pickled_name(fn) -> str:
    """The ``module.name`` pickle writes for a function or class."""
    return f"{pickle.whichmodule(fn, fn.__name__)}.{fn.__qualname__}"


def handmade_os_system_pickle(canary) -> bytes:
    """A protocol-0 pickle that literally names ``os.system`` (as a malicious file would)."""
    return b"cos\nsystem\n(S'touch " + str(canary).encode() + b"'\ntR."


def stale_temporaries(root) -> list[Path]:
    """Every marked-temporary-looking folder under `root` (what a killed conversion leaves)."""
    from convert.primitives.temp import is_temporary

    return [p for p in Path(root).rglob(".*") if is_temporary(p)]


def rerun_until_no_temporaries(root, rerun, seconds: float = 300.0) -> None:
    """A killed run's workers may still be exiting when the next run starts; their temp folders are then
    not yet stale (the owner lives) and a later run removes them. Wait until every such owner is gone
    (however slowly a loaded machine lets them exit), then re-run once: nothing may be left."""
    import time

    from convert.primitives.temp import _NAME, _read_marker, owner_is_gone, pid_is_gone

    def gone(path: Path) -> bool:
        marker = _read_marker(path)
        if marker is not None:
            return owner_is_gone(marker)
        return pid_is_gone(int(_NAME.fullmatch(path.name)["pid"]))  # killed before its marker was whole

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(gone(p) for p in stale_temporaries(root)):
            break
        time.sleep(0.5)
    if stale_temporaries(root):
        rerun()
    assert not stale_temporaries(root), stale_temporaries(root)


# A child Python with torch blocked (the lean install), for tests of the torch-free paths.
BLOCK_TORCH = r"""
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name="torch")
        return None
sys.meta_path.insert(0, NoTorch())  # module level: pool workers re-run it as __mp_main__ and are blocked too
"""

# The CLI with torch blocked: exit 99 if torch was imported anyway (argv: the command's arguments).
NO_TORCH = BLOCK_TORCH + r"""
from convert.cli import main
rc = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
if leaked:
    print("torch was imported:", leaked[:5], file=sys.stderr)
    sys.exit(99)
sys.exit(rc)
"""


def key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A fresh ECDSA P-256 key pair written as `name.pem` (private, PKCS8) and `name.pub` under `folder`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public
