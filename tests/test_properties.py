"""Property tests: the round trip is lossless over drawn checkpoints, deterministic, and verifiable.

For every drawn checkpoint (tests/strategies.py) written as a torch zip, a legacy torch file or a
plain pickle (protocols 0-5, tensor-free trees):
- `load_checkpoint(convert(x))` is equivalent (compare_trees: types, order, key types, dtypes,
  shapes, strides, offsets, bits, aliasing) to what torch.load / pickle.load give for the file,
  and so is `read_checkpoint(x)`;
- the sidecar validates against convert/schemas/checkpoint.schema.json (checked with jsonschema directly);
- converting twice gives byte-identical folders;
- `verify_checkpoint` reports exactly what compare_trees reports, also for a tampered folder;
- graphs (the same trees with containers referenced again: shared, cyclic, cycles through tuples)
  round-trip with the same sharing and cycles.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from hypothesis import given
from hypothesis import strategies as st

from convert import compare_trees, convert_checkpoint, load_checkpoint, read_checkpoint, verify_checkpoint
from convert.ops.verify import verify_folder
from tests.helpers import (
    PICKLE_FORMATS,
    TORCH_FORMATS,
    assert_equivalent,
    comparable_snapshot,
    load_reference,
    read_sidecar,
    validate_sidecar,
)
from tests.strategies import Drawn, budget, drawn_checkpoints, drawn_graphs, raw_tensor


def _convert(drawn: Drawn, tmp: Path) -> tuple[Path, Path]:
    src = drawn.save(tmp / "src" / "ckpt.pt")
    dst = tmp / "out" / "ckpt"
    convert_checkpoint(src, dst)
    return src, dst


@budget(60)
@given(drawn=drawn_checkpoints())
def test_roundtrip_is_equivalent_to_torch_load(drawn):
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = _convert(drawn, Path(tmp))
        reference = load_reference(src, drawn.fmt)
        assert_equivalent(load_checkpoint(dst), reference)
        assert_equivalent(read_checkpoint(src), reference)
        validate_sidecar(read_sidecar(dst))


@budget(40)
@given(drawn=drawn_graphs())
def test_graphs_roundtrip_with_the_same_sharing_and_cycles(drawn):
    """Shared and cyclic containers: load_checkpoint and read_checkpoint give torch.load's graph (compare_trees
    pairs every container with one on the other side, so sharing and cycles must match), written once."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = _convert(drawn, Path(tmp))
        reference = load_reference(src, drawn.fmt)
        loaded = load_checkpoint(dst)
        assert_equivalent(loaded, reference)
        assert_equivalent(read_checkpoint(src), reference)
        assert verify_checkpoint(src, dst) == []
        validate_sidecar(read_sidecar(dst))
        again = Path(tmp) / "again" / "ckpt"
        convert_checkpoint(src, again)
        assert comparable_snapshot(dst) == comparable_snapshot(again)


@budget(25)
@given(drawn=drawn_checkpoints(st.sampled_from(["zip", "legacy", "pickle0", "pickle5"])))
def test_converting_twice_is_byte_identical(drawn):
    with tempfile.TemporaryDirectory() as tmp:
        src, first = _convert(drawn, Path(tmp))
        second = Path(tmp) / "again" / "ckpt"
        convert_checkpoint(src, second)
        assert verify_folder(first) == [] and verify_folder(second) == []
        a, b = comparable_snapshot(first), comparable_snapshot(second)  # identical but for the folder id
        assert list(a) == list(b)
        for name in a:
            assert a[name] == b[name], name


def _flip_data_byte(folder: Path, which: int) -> bool:
    """Flip one byte of tensor data in one of the folder's safetensors files; False if none has data."""
    candidates = []
    for path in sorted(folder.glob("*.safetensors")):
        blob = path.read_bytes()
        start = 8 + int.from_bytes(blob[:8], "little")
        candidates += [(path, i) for i in range(start, len(blob))]
    if not candidates:
        return False
    path, at = candidates[which % len(candidates)]
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0x01 if which % 2 else 0x80
    path.write_bytes(bytes(blob))
    return True


@budget(25)
@given(drawn=drawn_checkpoints(st.sampled_from([*TORCH_FORMATS, "pickle2", "pickle5"])), which=st.integers(0, 2**16))
def test_verify_agrees_with_comparator(drawn, which):
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = _convert(drawn, Path(tmp))
        assert verify_checkpoint(src, dst) == []
        if _flip_data_byte(dst, which):
            expected = compare_trees(read_checkpoint(src), load_checkpoint(dst))
            assert verify_checkpoint(src, dst) == expected


# A few fixed cases the strategies reach only rarely, checked every run.

def _pair_sharing_one_storage():
    flat = raw_tensor(bytes(range(96)), torch.float32)
    model = {"w": flat[4:16].view(3, 4), "wt": flat[4:16].view(3, 4).t(), "all": flat}
    ema = {"w0": flat[:4], "x": flat.view(4, 6)[:, 1::2].unsqueeze(0).expand(2, 4, 3)}
    return {"model": model, "ema": ema, "n": 7}


def test_one_storage_shared_by_two_state_dicts():
    for fmt in TORCH_FORMATS:
        drawn = Drawn(_pair_sharing_one_storage(), fmt)
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = _convert(drawn, Path(tmp))
            loaded = load_checkpoint(dst)
            assert_equivalent(loaded, load_reference(src, fmt))
            ptr = loaded["model"]["all"].untyped_storage().data_ptr()
            assert loaded["ema"]["x"].untyped_storage().data_ptr() == ptr
            assert loaded["ema"]["x"].stride() == (0, 6, 2)


def test_one_element_and_empty_views_with_odd_strides():
    # found by the properties: a one-element view keeps a stride of 2 through `contiguous()`, which made
    # compare_trees (and so `verify`) crash; empty views may sit past the end of their storage
    flat = raw_tensor(bytes(range(40)), torch.float16)
    tree = {"one": flat[3::2][:1], "zero_d": flat[5], "one_t": flat.view(4, 5)[1:2, 2:3].t(),
            "empty_past_end": flat.as_strided([2, 0, 3], [7, 1, 5], 30)}
    for fmt in TORCH_FORMATS:
        c32 = {"c32": raw_tensor(bytes(range(16)), torch.complex32)[1::2][:1]} if fmt == "zip" else {}  # not in legacy
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = _convert(Drawn({**tree, **c32}, fmt), Path(tmp))
            assert_equivalent(load_checkpoint(dst), load_reference(src, fmt))
            assert verify_checkpoint(src, dst) == []
            assert load_checkpoint(dst)["one"].stride() == (2,)


def test_plain_pickle_protocols_cover_every_format_name():
    assert set(PICKLE_FORMATS) == {f"pickle{n}" for n in range(6)}


def test_complex128_storages_load_aligned():
    # found by the properties: complex128 (stored as F64 pairs) could start 8 bytes off a 16-byte boundary
    # after odd-sized entries; copying such a tensor (expanded, so torch takes a SIMD path) segfaulted
    c = raw_tensor(bytes(range(256)), torch.float64).view(torch.complex128)
    for pad in range(1, 4):
        tree = {"i8": torch.arange(pad, dtype=torch.int8), "f64": torch.arange(pad, dtype=torch.float64),
                "c": c.unsqueeze(1).expand(16, 2), "c_t": c[3:]}
        for fmt in TORCH_FORMATS:
            with tempfile.TemporaryDirectory() as tmp:
                src, dst = _convert(Drawn(tree, fmt), Path(tmp))
                loaded = load_checkpoint(dst)
                assert loaded["c"].untyped_storage().data_ptr() % 16 == 0
                assert_equivalent(loaded, load_reference(src, fmt))


def test_state_dicts_under_awkward_top_level_keys():
    # found by the properties: a state dict under "-Infinity" got the file name "-Infinity.safetensors",
    # which the sidecar schema (rightly) refuses, so the conversion failed
    sd = {"w": torch.ones(2)}
    tree = {"-ema": sd, "-": {"b": torch.zeros(1)}, "..": {"c": torch.ones(1)}, "": {"d": torch.ones(1)}, "a/b": sd}
    for fmt in TORCH_FORMATS:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = _convert(Drawn(tree, fmt), Path(tmp))
            assert_equivalent(load_checkpoint(dst), load_reference(src, fmt))
            assert all(p.name[0].isalnum() or p.name[0] == "_" for p in dst.iterdir())
