"""Every tensor dtype, odd shapes, views, shared storage and parameters survive the round trip."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn as nn

from convert import convert_checkpoint, load_checkpoint, read_checkpoint
from tests.helpers import (
    LEGACY_UNSUPPORTED_DTYPES,
    TORCH_FORMATS,
    assert_equivalent,
    bits,
    load_reference,
    roundtrip,
    same_storage,
    save,
)

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]
INT_DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8]
WIDE_UINT = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}
ALL_DTYPES = [*FLOAT_DTYPES, torch.bool, torch.complex64, torch.complex128, *INT_DTYPES, *list(WIDE_UINT)]


def sample(dtype: torch.dtype) -> torch.Tensor:
    """A small tensor with the interesting values of ``dtype`` (extremes, -0.0, NaN, inf)."""
    if dtype in FLOAT_DTYPES:
        t = torch.tensor([0.0, -0.0, 1.5, -2.0, 448.0, float("nan"), float("inf"), 1e-3]).to(dtype)
        return t.reshape(2, 4)
    if dtype is torch.bool:
        return torch.tensor([[True, False, True], [False, False, True]])
    if dtype.is_complex:
        return torch.tensor([1 + 2j, -0.0 - 1j, float("nan") + 0j, float("inf") * 1j], dtype=dtype)
    if dtype in WIDE_UINT:  # build the bit patterns through the signed type of the same width
        signed = WIDE_UINT[dtype]
        info = torch.iinfo(signed)
        return torch.tensor([-1, 0, 1, info.min, info.max], dtype=signed).view(dtype)
    info = torch.iinfo(dtype)
    return torch.tensor([info.min, -1 if info.min < 0 else 3, 0, 1, info.max], dtype=dtype)


def dtypes_for(fmt):
    return [d for d in ALL_DTYPES if fmt == "zip" or d not in LEGACY_UNSUPPORTED_DTYPES]


@pytest.mark.parametrize("fmt", TORCH_FORMATS)
def test_every_dtype(tmp_path, fmt):
    originals = {str(d).replace("torch.", ""): sample(d) for d in dtypes_for(fmt)}
    # a NaN with a payload must keep its bits
    nan32 = torch.tensor([0x7FC01234, 0xFFC00001 - 2**32], dtype=torch.int32)
    originals["float32_nan_payload"] = nan32.view(torch.float32)
    originals["float64_nan_payload"] = torch.tensor([0x7FF8000000001234], dtype=torch.int64).view(torch.float64)
    loaded, ref = roundtrip(originals, tmp_path, fmt)
    assert_equivalent(loaded, ref)
    assert list(loaded.keys()) == list(originals.keys())
    for name, t in originals.items():
        got = loaded[name]
        assert type(got) is torch.Tensor, name
        assert got.dtype == t.dtype, name
        assert got.shape == t.shape and got.stride() == t.stride(), name
        assert bits(got) == bits(t), name


@pytest.mark.parametrize("fmt", TORCH_FORMATS)
def test_zero_dim_and_empty_tensors(tmp_path, fmt):
    obj = {
        "scalar_f": torch.tensor(3.5),
        "scalar_i": torch.tensor(-7, dtype=torch.int64),
        "scalar_b": torch.tensor(True),
        "scalar_bf16": torch.tensor(1.25, dtype=torch.bfloat16),
        "empty": torch.zeros(0),
        "empty_2d": torch.zeros(2, 0, 3),
        "empty_int": torch.empty(0, dtype=torch.int32),
        "empty_slice": torch.arange(5.0)[5:],
        "one": torch.ones(1, 1, 1),
    }
    loaded, ref = roundtrip(obj, tmp_path, fmt)
    assert_equivalent(loaded, ref)
    for name, t in obj.items():
        assert loaded[name].shape == t.shape and loaded[name].dtype == t.dtype, name
    assert loaded["scalar_f"].dim() == 0 and loaded["scalar_f"].item() == 3.5
    assert loaded["scalar_b"].item() is True
    assert loaded["empty_2d"].numel() == 0


@pytest.mark.parametrize("fmt", TORCH_FORMATS)
def test_views_offsets_and_shared_storage(tmp_path, fmt):
    torch.manual_seed(0)
    base = torch.randn(6, 4)
    other = torch.randn(6, 4)
    tied = torch.randn(5, 3)
    obj = collections.OrderedDict()
    obj["base"] = base
    obj["transposed"] = base.t()  # non-contiguous view of the same storage
    obj["rows"] = base[2:5]  # storage offset 8
    obj["column"] = base[:, 1]  # offset 1, stride 4
    obj["every_other"] = base[::2, ::2]
    obj["other"] = other
    obj["tied_a"] = tied
    obj["tied_b"] = tied  # the very same tensor under two names
    obj["expanded"] = torch.arange(3.0).expand(4, 3)  # stride 0
    obj["lone_slice"] = torch.arange(10, dtype=torch.int64)[3:7]  # only a slice saved: whole storage kept
    obj["narrow_2d"] = torch.arange(24.0).reshape(4, 6)[1:3, 2:5]
    loaded, ref = roundtrip(obj, tmp_path, fmt)
    assert_equivalent(loaded, ref)

    for name, t in obj.items():
        got = loaded[name]
        assert got.shape == t.shape, name
        assert got.stride() == t.stride(), name
        assert got.storage_offset() == t.storage_offset(), name
        assert torch.equal(got, t), name
    assert loaded["transposed"].is_contiguous() is False
    assert loaded["rows"].storage_offset() == 8
    assert loaded["expanded"].stride() == (0, 1)
    assert loaded["lone_slice"].storage_offset() == 3
    assert loaded["lone_slice"].untyped_storage().nbytes() == 10 * 8

    # aliasing comes back, and nothing is aliased that was not
    for name in ("transposed", "rows", "column", "every_other"):
        assert same_storage(loaded["base"], loaded[name]), name
    assert same_storage(loaded["tied_a"], loaded["tied_b"])
    assert not same_storage(loaded["base"], loaded["other"])
    assert not same_storage(loaded["tied_a"], loaded["base"])
    loaded["base"][3, 0] = 1234.5  # a write through one name is seen through the others
    assert loaded["rows"][1, 0].item() == 1234.5
    assert loaded["transposed"][0, 3].item() == 1234.5


@pytest.mark.parametrize("fmt", TORCH_FORMATS)
def test_parameters_and_requires_grad(tmp_path, fmt):
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(3, 2))
    obj = {
        "param": p,
        "param_alias": p,
        "frozen": nn.Parameter(torch.randn(2), requires_grad=False),
        "leaf_requires_grad": torch.randn(4).requires_grad_(),
        "plain": torch.randn(4),
        "param_list": [nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(2, dtype=torch.float64))],
    }
    loaded, ref = roundtrip(obj, tmp_path, fmt)
    assert_equivalent(loaded, ref)
    assert type(loaded["param"]) is nn.Parameter and loaded["param"].requires_grad is True
    assert loaded["param_alias"] is loaded["param"] or same_storage(loaded["param_alias"], loaded["param"])
    assert type(loaded["frozen"]) is nn.Parameter and loaded["frozen"].requires_grad is False
    assert type(loaded["leaf_requires_grad"]) is torch.Tensor and loaded["leaf_requires_grad"].requires_grad
    assert type(loaded["plain"]) is torch.Tensor and not loaded["plain"].requires_grad
    assert all(type(x) is nn.Parameter for x in loaded["param_list"])
    assert loaded["param_list"][1].dtype == torch.float64


def test_complex_views_conj_and_neg_bits(tmp_path):
    # conj() is a lazy view; torch.save materialises it, and the result must equal torch.load.
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    z2 = torch.tensor([5 + 6j, -7 - 8j], dtype=torch.complex64)
    obj = {"z": z, "zc": z.conj(), "real": torch.view_as_real(z).clone(),
           "neg_imag": z2.conj().imag}  # a negative-bit view: [-6., 8.]
    loaded, ref = roundtrip(obj, tmp_path, "zip")
    assert_equivalent(loaded, ref)
    assert loaded["zc"].is_conj() == ref["zc"].is_conj()
    assert torch.equal(loaded["zc"].resolve_conj(), z.conj().resolve_conj())
    assert torch.equal(loaded["real"], torch.view_as_real(z))
    assert loaded["neg_imag"].is_neg() == ref["neg_imag"].is_neg()
    assert loaded["neg_imag"].resolve_neg().tolist() == [-6.0, 8.0]


def test_read_checkpoint_returns_real_tensors_with_views(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    src = save({"a": base, "b": base[1:].t()}, tmp_path / "v.pt", "zip")
    got = read_checkpoint(src)
    assert type(got["a"]) is torch.Tensor and type(got["b"]) is torch.Tensor
    assert same_storage(got["a"], got["b"])
    assert got["b"].stride() == (1, 4) and got["b"].storage_offset() == 4
    assert_equivalent(got, load_reference(src, "zip"))


@pytest.mark.parametrize("fmt", TORCH_FORMATS)
def test_large_state_dict_many_keys(tmp_path, fmt):
    torch.manual_seed(0)
    sd = collections.OrderedDict((f"layers.{i}.{n}", torch.randn(4, 4) if n == "weight" else torch.randn(4))
                                 for i in range(60) for n in ("weight", "bias"))
    src = save(sd, tmp_path / "many.pt", fmt)
    dst = tmp_path / "many_out"
    convert_checkpoint(src, dst)
    loaded = load_checkpoint(dst)
    assert_equivalent(loaded, load_reference(src, fmt))
    assert list(loaded.keys()) == list(sd.keys())
