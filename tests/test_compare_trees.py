"""compare_trees is the oracle every round-trip test relies on: make sure it can say "different"."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
import torch.nn as nn

from convert import compare_trees
from tests.helpers import NAN_WITH_PAYLOAD, float_from_bits


def differs(a, b) -> bool:
    diffs = compare_trees(a, b)
    assert isinstance(diffs, list)
    assert all(isinstance(d, str) and d for d in diffs)
    return len(diffs) > 0


def test_identical_trees_have_no_differences():
    t = torch.arange(12.0).reshape(3, 4)
    tree = collections.OrderedDict(
        a=t, b=t[1:], c=[1, 2.5, float("nan"), NAN_WITH_PAYLOAD, -0.0, (None, True)], d={1: "x", "k": b"\x00"},
        e=np.arange(3, dtype=">f4"), f=np.float32(2), g=torch.Size([2, 3]), h=torch.float16, i=2**100, j={1, 2},
        p=nn.Parameter(torch.ones(2)),
    )
    tree._metadata = {"": {"version": 1}}
    assert compare_trees(tree, tree) == []


@pytest.mark.parametrize("a,b", [
    ({"x": 1}, collections.OrderedDict(x=1)),
    ((1, 2), [1, 2]),
    (1, True),
    (0, False),
    (1, 1.0),
    (1, 2),
    ("a", b"a"),
    (None, 0),
    (0.0, -0.0),
    (float("nan"), NAN_WITH_PAYLOAD),
    (float_from_bits(0x7FF8_0000_0000_0001), float_from_bits(0x7FF8_0000_0000_0002)),
    (2**100, 2**100 + 1),
    (torch.Size([2, 3]), (2, 3)),
    (torch.float32, torch.float64),
    ({1, 2}, {1, 3}),
    ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
    (collections.OrderedDict(a=1, b=2), collections.OrderedDict(b=2, a=1)),
    ({1: "x"}, {"1": "x"}),
    ({True: "x"}, {1: "x"}),
    ({"a": 1}, {"a": 1, "b": 2}),
    ([1, 2], [1, 2, 3]),
    ("😀", "😁"),
], ids=lambda v: type(v).__name__)
def test_plain_values_that_differ(a, b):
    assert differs(a, b)


def test_identical_nan_payloads_compare_equal():
    assert compare_trees(float("nan"), float("nan")) == []
    assert compare_trees(NAN_WITH_PAYLOAD, float_from_bits(0x7FF8_0000_0000_1234)) == []


def test_tensor_vs_parameter_and_requires_grad():
    t = torch.ones(3)
    assert differs(t, nn.Parameter(t.clone()))
    assert differs(nn.Parameter(t.clone()), nn.Parameter(t.clone(), requires_grad=False))
    assert differs(t.clone(), t.clone().requires_grad_())


def test_tensor_dtype_shape_content():
    t = torch.arange(6, dtype=torch.float32)
    assert compare_trees(t, t.clone()) == []
    assert differs(t, t.double())
    assert differs(t, t.reshape(2, 3))
    u = t.clone()
    u[3] = 100
    assert differs(t, u)
    assert differs(torch.tensor([0.0]), torch.tensor([-0.0]))
    nan1 = torch.tensor([0x7FC00001], dtype=torch.int32).view(torch.float32)
    nan2 = torch.tensor([0x7FC00002], dtype=torch.int32).view(torch.float32)
    assert differs(nan1, nan2)
    assert compare_trees(nan1, nan1.clone()) == []
    assert differs(torch.tensor([1, 2], dtype=torch.int64), torch.tensor([1, 2], dtype=torch.uint64))


def test_tensor_stride_and_offset():
    a = torch.arange(6.0).reshape(2, 3)
    b = a.t().contiguous().t()  # same values, column-major strides
    assert torch.equal(a, b) and a.stride() != b.stride()
    assert differs(a, b)
    base = torch.arange(10.0)
    view = base[2:5]
    assert differs(view, view.clone())  # storage_offset 2 vs 0
    assert compare_trees(view, torch.arange(10.0)[2:5]) == []


def test_aliasing_is_checked():
    t = torch.arange(4.0)
    shared = {"a": t, "b": t}
    separate = {"a": t.clone(), "b": t.clone()}
    assert differs(shared, separate)
    base = torch.arange(8.0)
    views = {"w": base[:4], "x": base[4:]}
    copies = {"w": base[:4].clone(), "x": base[4:].clone()}
    assert differs(views, copies)
    base2 = torch.arange(8.0)
    assert compare_trees(views, {"w": base2[:4], "x": base2[4:]}) == []


def test_ordered_dict_metadata_is_checked():
    a = collections.OrderedDict(w=torch.ones(1))
    b = collections.OrderedDict(w=torch.ones(1))
    a._metadata = {"": {"version": 1}}
    assert differs(a, b)
    b._metadata = {"": {"version": 2}}
    assert differs(a, b)
    b._metadata = {"": {"version": 1}}
    assert compare_trees(a, b) == []


def test_numpy_values_are_checked():
    a = np.arange(4, dtype="<f4")
    assert compare_trees(a, a.copy()) == []
    assert differs(a, a.astype(">f4"))
    assert differs(a, a.reshape(2, 2))
    assert differs(a, a + 1)
    assert differs(a, a.astype(np.float64))
    assert differs(np.float32(1.0), np.float64(1.0))
    assert differs(np.float32(1.0), 1.0)
    assert differs(np.float32(1.0), np.float32(2.0))
    assert differs(np.int64(3), 3)
    assert differs(a, torch.from_numpy(a.copy()))


def test_large_tensors_are_compared_a_slice_at_a_time(monkeypatch):
    """compare_trees (verify SRC DST) compares slices of rows, not whole copies: a difference in the last
    slice, in a transposed view, or in a conjugated tensor is still found."""
    from convert.ops import compare

    monkeypatch.setattr(compare, "CHUNK_BYTES", 64)
    a = torch.arange(1000, dtype=torch.float32).reshape(100, 10)
    assert compare_trees({"w": a}, {"w": a.clone()}) == []
    b = a.clone()
    b[99, 9] = -0.0 if a[99, 9] == 0 else float("nan")
    assert compare_trees({"w": a}, {"w": b})
    assert compare_trees({"w": a.t()}, {"w": a.clone().t()}) == []
    c = b.clone().t()
    assert compare_trees({"w": a.t()}, {"w": c})
    z = torch.randn(50, 3, dtype=torch.complex64)
    assert compare_trees({"z": z.conj()}, {"z": z.clone().conj()}) == []
    y = z.clone()
    y[49, 2] += 1
    assert compare_trees({"z": z.conj()}, {"z": y.conj()})
