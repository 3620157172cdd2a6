"""Correctness of the fast paths: kernel-copy writer, background source hash, compiled schema check,
full (non-mmap) CPU loading and the CUDA staging loader (skipped without CUDA).

Speed is measured by benchmarks/perf, not here; these tests pin that every fast path gives
exactly what the simple path gives.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os

import jsonschema
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convert import compare_trees, convert_checkpoint, load_checkpoint
from convert.errors import ConvertError
from convert.load import cuda as cuda_mod
from convert.load import materialize
from convert.primitives.hashing import BackgroundSha256, OutputDigest, sha256_fd
from convert.sidecar.schema import schema, validate
from convert.sidecar.schema_compiled import UnsupportedSchema, compile_schema
from convert.write import safetensors_io
from tests.helpers import assert_equivalent, comparable_snapshot, load_reference, numpy_payload, save


@pytest.fixture
def rich_checkpoint():
    """Tied weights, a strided view, a non-contiguous storage user, numpy arrays, several dtypes."""
    torch.manual_seed(0)
    base = torch.randn(64, 48)
    return {
        "model_state_dict": {"w": base, "tied": base, "half": torch.randn(33, 7).half(), "i": torch.arange(10)},
        "transposed": base.t(),
        "slice": base[5:9, 3:40],
        "big": torch.randn(3000, 100),  # spans several read chunks below
        "bf16": torch.randn(17).bfloat16(),
        "numpy": numpy_payload(),
        "empty": torch.empty(0, 5),
        "step": 7,
    }


@pytest.fixture(params=["zip", "legacy"])
def converted(request, tmp_path, rich_checkpoint):
    src = save(rich_checkpoint, tmp_path / "src.pt", request.param)
    dst = tmp_path / "out"
    convert_checkpoint(src, dst)
    return src, dst, request.param


def _folder_bytes(folder) -> dict[str, bytes]:
    """The folder's files, but for the random folder id each conversion draws (and the digests covering it)."""
    return comparable_snapshot(folder)


# ------------------------------------------------------------------------------------------ writer

def test_copy_in_small_chunks_writes_identical_bytes(tmp_path, rich_checkpoint, monkeypatch):
    src = save(rich_checkpoint, tmp_path / "src.pt", "zip")
    convert_checkpoint(src, tmp_path / "reference")
    copies = []
    real_copy = safetensors_io._Copier.copy

    def counting(self, *args):
        copies.append(args)
        return real_copy(self, *args)

    monkeypatch.setattr(safetensors_io._Copier, "copy", counting)
    monkeypatch.setattr(safetensors_io, "COPY_CHUNK", 4096)  # many reads per tensor, a last one shorter
    convert_checkpoint(src, tmp_path / "fast")
    assert any(nbytes > 4096 for _, _, nbytes, _ in copies)  # the copy path was really taken, in several reads
    assert _folder_bytes(tmp_path / "fast") == _folder_bytes(tmp_path / "reference")


def test_copy_from_an_input_that_shrank_is_refused(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10_000)
    with open(path, "rb") as src, open(tmp_path / "out", "wb") as out, pytest.raises(ConvertError, match="shrank"):
        safetensors_io._Copier(out.fileno(), None).copy(src.fileno(), 5_000, 6_000, 0)


def test_writer_without_registered_input_matches_kernel_copy(tmp_path, rich_checkpoint):
    """Outside convert_checkpoint (no fd registered) the writer streams from the mapping: same bytes."""
    from convert.ops.pipeline import provenance
    from convert.sidecar.integrity import FILE_NAME_KEY
    from convert.sources.file import FileSource
    from convert.write.folder import PT_METADATA
    from convert.write.plan import make_plan

    src = save(rich_checkpoint, tmp_path / "src.pt", "zip")
    convert_checkpoint(src, tmp_path / "ref")
    folder_id = json.loads((tmp_path / "ref" / "checkpoint.json").read_text())["folder_id"]
    with FileSource(src) as source:
        plan = make_plan(source.root, provenance(source.provenance()))
        for name, entries in plan.files.items():
            assert any(e.source is not None for e in entries)
            with open(tmp_path / name, "wb") as out:
                safetensors_io.write_safetensors(out, entries, {**PT_METADATA, "folder_id": folder_id,
                                                                FILE_NAME_KEY: name})
            assert (tmp_path / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
        del plan


@pytest.mark.parametrize("step,mapped", [(1, 4096 * 8), (5000, 65536 * 2), (1 << 30, 1 << 26)])
def test_output_digest_follows_the_writer(tmp_path, monkeypatch, step, mapped):
    """Hashed range by range while the file grows (unaligned ends, ranges spanning several mappings,
    or all at the end): the digest is the finished file's."""
    monkeypatch.setattr(OutputDigest, "STEP", step)
    monkeypatch.setattr(OutputDigest, "MAP", mapped)
    rng = np.random.default_rng(0)
    written = bytearray()
    with open(tmp_path / "f", "wb+") as out:
        digest = OutputDigest(out.fileno())
        for size in rng.integers(0, 150_000, 40):
            piece = rng.bytes(int(size))
            os.write(out.fileno(), piece)
            written += piece
            digest.written(len(written))
        os.write(out.fileno(), b"tail not reported")  # finish() hashes up to the file's end
        written += b"tail not reported"
        assert digest.finish() == hashlib.sha256(written).hexdigest()
        cancelled = OutputDigest(out.fileno())
        cancelled.written(len(written))
        cancelled.cancel()  # returns, the thread gone


def test_converted_digests_hashed_while_writing_match_the_files(tmp_path, rich_checkpoint, monkeypatch):
    monkeypatch.setattr(OutputDigest, "STEP", 1)  # the helper thread hashes after every entry and slice
    monkeypatch.setattr(safetensors_io, "COPY_CHUNK", 4096)
    src = save(rich_checkpoint, tmp_path / "src.pt", "zip")
    convert_checkpoint(src, tmp_path / "out")
    files = json.loads((tmp_path / "out" / "checkpoint.json").read_text())["files"]
    for name, info in files.items():
        assert info["sha256"] == hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest()


def test_sidecar_sha256_is_the_source_files(converted):
    src, dst, _ = converted
    sidecar = json.loads((dst / "checkpoint.json").read_text())
    assert sidecar["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_sha256_fd_matches_hashlib(tmp_path):
    data = os.urandom(3 * 4096 + 17)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert sha256_fd(fd, len(data)) == hashlib.sha256(data).hexdigest()
        with BackgroundSha256(fd, len(data)) as h:
            assert h.hexdigest() == hashlib.sha256(data).hexdigest()
        with pytest.raises(OSError), BackgroundSha256(fd, len(data) + 1) as h:  # file shorter than claimed
            h.hexdigest()
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------- schema check

def test_compiled_schema_accepts_real_sidecars(converted):
    _, dst, _ = converted
    sidecar = json.loads((dst / "checkpoint.json").read_text())
    assert compile_schema(schema())(sidecar)


def _mutations(doc):
    """Paths to every node, for single-point mutations."""
    out = [[]]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += [[k, *p] for p in _mutations(v)]
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += [[i, *p] for p in _mutations(v)]
    return out


_ODD_VALUES = [None, True, False, 0, 1, -1, 1.0, 2.5, -(2**63) - 1, 2**63, 2**62 + 1, "", "x", "t1", "s0", "$",
               "a.safetensors", "float32", "0" * 64, [], [1], [-1], {}, {"$tensor": "t0"}, {"$x": 1}, {"$int": "0x1"},
               [1, 2], "<f4", "zz" * 40]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_compiled_schema_never_accepts_what_jsonschema_rejects(data, tmp_path_factory):
    doc = _base_sidecar(tmp_path_factory)
    paths = _mutations(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        doc = copy.deepcopy(doc)
        parent, last = doc, None
        for p in path[:-1]:
            parent = parent[p]
        if not path:
            doc = data.draw(st.sampled_from(_ODD_VALUES))
            break
        last = path[-1]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.sampled_from(["extra", "$tuple", "conj", "shards", "t9", "s9"]))] = \
                data.draw(st.sampled_from(_ODD_VALUES))
        else:
            parent[last] = data.draw(st.sampled_from(_ODD_VALUES))
        paths = _mutations(doc)
    fast = compile_schema(schema())(doc)
    slow = jsonschema.Draft202012Validator(schema()).is_valid(doc)
    assert fast == slow


_BASE: dict = {}


def _base_sidecar(tmp_path_factory) -> dict:
    if not _BASE:
        folder = tmp_path_factory.mktemp("base")
        obj = {"model": {"w": torch.ones(2, 3), "b": torch.zeros(3)}, "opt": {"state": {0: {"step": torch.tensor(1.0)}},
               "param_groups": [{"lr": 0.1, "params": [0]}]}, "t": (1, 2.5, None), "big": 2**70,
               "arr": np.arange(3, dtype=">i4"), "s": {1, 2}, "f": float("nan"), "view": torch.arange(6.0)[1::2]}
        src = save(obj, folder / "src.pt", "zip")
        convert_checkpoint(src, folder / "out")
        _BASE.update(json.loads((folder / "out" / "checkpoint.json").read_text()))
    return copy.deepcopy(_BASE)


def test_validate_still_reports_the_jsonschema_error():
    bad = {"format": "ckpt-convert"}
    with pytest.raises(Exception, match="does not match the schema"):
        validate(bad, "x")


def test_unknown_keywords_are_not_compiled():
    with pytest.raises(UnsupportedSchema):
        compile_schema({"type": "object", "dependentSchemas": {}})
    with pytest.raises(UnsupportedSchema):
        compile_schema({"$ref": "https://example.com/other"})


def test_compiled_schema_keyword_semantics_match_jsonschema():
    cases = [
        ({"type": "integer"}, [1, 1.0, 1.5, True, "1", None]),
        ({"const": 1}, [1, 1.0, True, "1"]),
        ({"enum": ["a", "b"]}, ["a", "c", 1]),
        ({"type": "string", "pattern": "^s[0-9]+$"}, ["s1", "s1\n", "xs1", "s"]),
        ({"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}, "maxItems": 3},
         [["a", 1], [1, 1], ["a", "b"], ["a", 1, 2, 3], []]),
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False, "required": ["a"]},
         [{"a": 1}, {"a": 1, "b": 2}, {}, {"a": "x"}]),
        ({"propertyNames": {"pattern": "^(?!\\$)"}, "additionalProperties": {"type": "number"}},
         [{"a": 1}, {"$a": 1}, {"a": "x"}, 5]),
        ({"anyOf": [{"type": "null"}, {"minimum": 3}]}, [None, 2, 3, "x"]),
    ]
    for sch, values in cases:
        fast = compile_schema(sch)
        for v in values:
            assert fast(v) == jsonschema.Draft202012Validator(sch).is_valid(v), (sch, v)


# ------------------------------------------------------------------------------------------ loading

def test_full_cpu_load_matches_lazy_and_torch_load(converted, monkeypatch):
    src, dst, fmt = converted
    monkeypatch.setattr(materialize, "CHUNK", 4096)  # big storages split across threads
    lazy = load_checkpoint(dst)
    full = load_checkpoint(dst, mmap=False)
    assert_equivalent(full, lazy)
    assert_equivalent(full, load_reference(src, fmt))


def test_full_cpu_load_owns_its_memory(converted):
    _, dst, _ = converted
    full = load_checkpoint(dst, mmap=False)
    expected = full["big"].clone()
    for f in dst.glob("*.safetensors"):  # overwrite the files in place: a mapping would see this
        with open(f, "r+b") as h:
            h.seek(4096)
            h.write(b"\xff" * 8192)
    assert torch.equal(full["big"], expected)
    sd = full["model_state_dict"]
    assert sd["w"].untyped_storage().data_ptr() == sd["tied"].untyped_storage().data_ptr()
    full["big"].add_(1)  # ordinary writable memory
    assert isinstance(full["numpy"]["arr_f32"], np.ndarray) and full["numpy"]["arr_f32"].flags.owndata


def test_full_load_refuses_a_file_that_changed_size(converted):
    _, dst, _ = converted
    loader_files = []
    real = materialize.open_checked

    def grow_then_open(file):
        loader_files.append(file)
        with open(file.path, "ab") as h:
            h.write(b"\0" * 8)
        return real(file)

    from convert.errors import MalformedCheckpoint

    materialize.open_checked, saved = grow_then_open, materialize.open_checked
    try:
        with pytest.raises(MalformedCheckpoint, match="changed size"):
            load_checkpoint(dst, mmap=False)
    finally:
        materialize.open_checked = saved
    assert loader_files


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
def test_cuda_load_matches_cpu(converted, monkeypatch):
    _, dst, _ = converted
    cuda_mod._stagers.clear()
    monkeypatch.setattr(cuda_mod, "SLOT", 4096)  # many slots per storage: the pipeline wraps around
    monkeypatch.setattr(cuda_mod, "SLOTS", 3)
    on_gpu = load_checkpoint(dst, map_location="cuda")
    on_cpu = load_checkpoint(dst)
    assert on_gpu["big"].device.type == "cuda"
    back = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in on_gpu.items()}
    assert compare_trees(back["big"], on_cpu["big"]) == []
    assert torch.equal(on_gpu["slice"].cpu(), on_cpu["slice"])
    assert on_gpu["model_state_dict"]["w"].data_ptr() == on_gpu["model_state_dict"]["tied"].data_ptr()
    cuda_mod._stagers.clear()


@needs_cuda
def test_cuda_stager_is_reused(converted):
    _, dst, _ = converted
    load_checkpoint(dst, map_location="cuda")
    first = cuda_mod.stager(torch.device("cuda"))
    load_checkpoint(dst, map_location="cuda:0")
    assert cuda_mod.stager(torch.device("cuda:0")) is first


# ------------------------------------------------------------------------------------------ reader

@pytest.mark.parametrize("info,message", [
    ({"dtype": "F32", "shape": [2]}, "must have exactly dtype, shape and data_offsets"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}, "must have exactly"),
    ({"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}, "unknown dtype"),
    ({"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}, "unknown dtype"),  # unhashable: no TypeError
    ({"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}, "invalid shape"),
    ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "invalid shape"),
    ({"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}, "invalid shape"),
    ({"dtype": "F32", "shape": {"a": 2}, "data_offsets": [0, 8]}, "invalid shape"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 9]}, "outside the 8-byte data area"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [False, 8]}, "outside"),
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "needs 12 bytes, data_offsets give 8"),
])
def test_hostile_safetensors_entries_are_refused_with_one_line(tmp_path, info, message):
    from convert.errors import MalformedCheckpoint
    from convert.load.safetensors_reader import SafetensorsFile

    header = json.dumps({"w": info}).encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(MalformedCheckpoint, match=message):
        SafetensorsFile(path)


@pytest.mark.parametrize("window", [1, 2, 5])
def test_compiled_schema_in_narrow_windows_agrees_with_jsonschema(tmp_path_factory, monkeypatch, window):
    """Narrow windows put off nearly every check to the explicit stack (and re-run the parents): each single
    mutation of a real sidecar gets jsonschema's verdict all the same, and the located path is jsonschema's
    error's, or one on the way down to it."""
    from convert.sidecar import schema_compiled

    monkeypatch.setattr(schema_compiled, "WINDOW", window)
    fast, slow = compile_schema(schema()), jsonschema.Draft202012Validator(schema())
    base = _base_sidecar(tmp_path_factory)
    assert fast(base)
    for n, path in enumerate(_mutations(base)[1:]):
        doc = copy.deepcopy(base)
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        parent[path[-1]] = _ODD_VALUES[n % len(_ODD_VALUES)]
        verdict = slow.is_valid(doc)
        assert fast(doc) == verdict, path
        if not verdict:
            where, says = fast.locate(doc, 5.0)
            assert says
            error = "/".join(str(p) for p in next(iter(slow.iter_errors(doc))).absolute_path)
            assert where == "<root>" or error.startswith(where) or where.startswith(error), (where, error)
