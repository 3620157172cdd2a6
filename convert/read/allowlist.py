"""The one allowlist: global names the reader acts on, each mapped to a reconstructor of our own.

A reconstructor receives the argument tuple the pickle would have passed to the named callable
and returns plain data (containers, `TensorRef`, `NdArrayRef`, ...). None of them imports or calls
anything named by the file; every argument is type- and range-checked because it is hostile.
Any global not listed here becomes an inert `ObjectRecord` (or, if it is a known gadget, a reason
to refuse the file: see `gadgets.py`).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

from ..errors import MalformedCheckpoint
from ..model.collisions import check_keys, grown
from ..model.limits import LIMITS
from ..model.numpy_types import make_ndarray_from_buffer, make_npdtype, make_npscalar, new_ndarray
from ..model.records import GlobalRef, ObjectRecord, StorageRef, TensorRef, Unsupported
from ..model.torch_types import DTYPES_BY_NAME, QUANTIZED_DTYPES, Device, DType, TorchSize, parse_device
from ..model.views import view_end

MAX_NDIM = LIMITS.ndim
MAX_DIM = LIMITS.dim

Reconstructor = Callable[..., Any]


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise MalformedCheckpoint(message)


def _int(value: Any, what: str, lo: int = 0, hi: int = MAX_DIM) -> int:
    _expect(type(value) is int and lo <= value <= hi, f"{what} must be an int in [{lo}, {hi}], got {value!r:.60}")
    return value


def _int_tuple(value: Any, what: str) -> tuple:
    if isinstance(value, TorchSize):
        value = tuple(value)
    _expect(type(value) in (tuple, list) and len(value) <= MAX_NDIM, f"{what} must be a tuple of at most {MAX_NDIM} ints")
    return tuple(_int(v, what) for v in value)


def _args(args: tuple, name: str, lo: int, hi: int) -> tuple:
    got = len(args) if type(args) is tuple else type(args).__name__
    _expect(type(args) is tuple and lo <= len(args) <= hi, f"{name} takes {lo}..{hi} arguments, got {got}")
    return args


# ---------------------------------------------------------------------------------------- tensors

def check_view_in_storage(storage: StorageRef, dtype: DType, offset: int, shape: tuple, stride: tuple) -> None:
    """Every element the view can reach must lie inside the storage's real bytes."""
    _expect(len(shape) == len(stride), f"tensor shape {shape} and stride {stride} differ in rank")
    numel = 1
    for s in shape:
        numel *= s
    # stride-0 views reach few bytes with any shape; torch itself cannot hold more than 2**63 elements
    _expect(numel < 1 << 63, f"tensor of shape {list(shape)} has more elements than torch can index")
    end = view_end(offset, shape, stride, dtype.itemsize)
    _expect(end <= storage.nbytes, f"tensor of shape {list(shape)} at offset {offset} reaches byte {end} of storage "
            f"{storage.key!r}, which holds {storage.nbytes} bytes")


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: DType | None, requires_grad: Any = False,
            metadata: Any = None) -> TensorRef | Unsupported:
    _expect(isinstance(storage, StorageRef), f"tensor rebuild expects a storage, got {type(storage).__name__}")
    dtype = storage.dtype if dtype is None else dtype
    _expect(isinstance(dtype, DType), "tensor rebuild expects a torch dtype")
    if dtype in QUANTIZED_DTYPES:
        return Unsupported(f"a quantized tensor ({dtype.name}), which has no lossless safetensors encoding")
    offset = _int(offset, "storage offset")
    shape, stride = _int_tuple(size, "tensor size"), _int_tuple(stride, "tensor stride")
    check_view_in_storage(storage, dtype, offset, shape, stride)
    if storage.base is not None:  # legacy storage view: the same bytes, addressed from the root storage
        _expect(dtype.itemsize == storage.dtype.itemsize, "a view of a legacy storage view must keep its dtype")
        storage, offset = storage.base, offset + storage.base_offset
    _expect(type(requires_grad) is bool, "requires_grad must be a bool")
    meta = metadata if isinstance(metadata, dict) else {}
    return TensorRef(storage, dtype, offset, shape, stride, requires_grad=requires_grad,
                     conj=meta.get("conj") is True, neg=meta.get("neg") is True)


def rebuild_tensor(*args: Any) -> TensorRef:
    storage, offset, size, stride = _args(args, "_rebuild_tensor", 4, 4)
    return _tensor(storage, offset, size, stride, None)


def rebuild_tensor_v2(*args: Any) -> TensorRef:
    storage, offset, size, stride, requires_grad, _hooks, *rest = _args(args, "_rebuild_tensor_v2", 6, 7)
    return _tensor(storage, offset, size, stride, None, requires_grad, rest[0] if rest else None)


def rebuild_tensor_v3(*args: Any) -> TensorRef:
    storage, offset, size, stride, requires_grad, _hooks, dtype, *rest = _args(args, "_rebuild_tensor_v3", 7, 8)
    return _tensor(storage, offset, size, stride, dtype, requires_grad, rest[0] if rest else None)


def _tensor_attrs(state: Any) -> dict:
    if state is None:
        return {}
    if type(state) is tuple and len(state) == 2:  # (dict state, slots state), as _get_obj_state gives
        state = {**(state[0] or {}), **(state[1] or {})}
    _expect(isinstance(state, dict), "tensor state must be a dict")
    for name in state:
        _expect(type(name) is str and name.isidentifier() and not name.startswith("__"),
                f"tensor attribute name {name!r:.40} is not allowed")
    return dict(state)


def rebuild_parameter(*args: Any) -> TensorRef | Unsupported:
    data, requires_grad, _hooks, *rest = _args(args, "_rebuild_parameter", 3, 4)
    if isinstance(data, Unsupported):
        return data
    _expect(isinstance(data, TensorRef), "parameter rebuild expects a tensor")
    _expect(type(requires_grad) is bool, "requires_grad must be a bool")
    attrs = {**data.attrs, **_tensor_attrs(rest[0] if rest else None)}
    return dataclasses.replace(data, is_parameter=True, requires_grad=requires_grad, attrs=attrs)


TENSOR_REBUILDERS: dict[str, Reconstructor] = {
    "torch._utils._rebuild_tensor": rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
}
TENSOR_TYPES = {"torch.Tensor", "torch._tensor.Tensor", "torch.nn.parameter.Parameter", "torch.nn.Parameter"}


def rebuild_from_type_v2(*args: Any) -> TensorRef | Unsupported:
    func, new_type, func_args, state = _args(args, "_rebuild_from_type_v2", 4, 4)
    _expect(isinstance(func, GlobalRef) and func.qualname in TENSOR_REBUILDERS,
            f"_rebuild_from_type_v2 asks to call {getattr(func, 'qualname', type(func).__name__)}, which is not a tensor rebuild")
    _expect(type(func_args) is tuple, "_rebuild_from_type_v2 arguments must be a tuple")
    tensor = TENSOR_REBUILDERS[func.qualname](*func_args)
    if isinstance(tensor, Unsupported):
        return tensor
    if not (isinstance(new_type, GlobalRef) and new_type.qualname in TENSOR_TYPES):
        name = getattr(new_type, "qualname", type(new_type).__name__)
        return Unsupported(f"a tensor subclass ({name}), which cannot be stored losslessly")
    is_param = tensor.is_parameter or new_type.qualname.endswith("Parameter")
    return dataclasses.replace(tensor, is_parameter=is_param, attrs={**tensor.attrs, **_tensor_attrs(state)})


def _unsupported(what: str) -> Reconstructor:
    def record(*_args: Any) -> Unsupported:
        return Unsupported(f"{what}, which have no lossless safetensors encoding")
    return record


# ------------------------------------------------------------------------------- plain containers

def make_ordered_dict(*args: Any) -> collections.OrderedDict:
    _args(args, "OrderedDict", 0, 1)
    result: collections.OrderedDict = collections.OrderedDict()
    if args:
        _expect(type(args[0]) in (list, tuple), "OrderedDict argument must be a list of pairs")
        for pair in args[0]:
            _expect(type(pair) in (list, tuple) and len(pair) == 2, "OrderedDict argument must be a list of pairs")
            result[pair[0]] = pair[1]
            grown(result, "OrderedDict")
    return result


def _make_collection(kind: type) -> Reconstructor:
    def make(*args: Any) -> Any:
        _args(args, kind.__name__, 0, 1)
        if not args:
            return kind()
        _expect(type(args[0]) in (list, tuple, set, frozenset), f"{kind.__name__} argument must be a sequence")
        if kind in (set, frozenset):
            check_keys(args[0], kind.__name__)
        return kind(args[0])
    return make


def make_bytearray(*args: Any) -> bytearray:
    _args(args, "bytearray", 0, 2)
    if not args:
        return bytearray()
    if len(args) == 2:  # protocol 0/1: (latin-1 text, 'latin-1')
        _expect(type(args[0]) is str and args[1] in ("latin-1", "latin1"), "bytearray expects (str, 'latin-1')")
        return bytearray(args[0].encode("latin-1"))
    _expect(type(args[0]) in (bytes, bytearray), "bytearray expects bytes")  # never an int: no size from the file
    return bytearray(args[0])


def make_bytes(*args: Any) -> bytes:
    _args(args, "bytes", 0, 2)
    if not args:
        return b""
    return bytes(make_bytearray(*args))


def make_complex(*args: Any) -> complex:
    _args(args, "complex", 0, 2)
    _expect(all(type(a) in (int, float) for a in args), "complex expects numbers")
    return complex(*args)


def codecs_encode(*args: Any) -> bytes:
    text, encoding = ((*_args(args, "_codecs.encode", 1, 2), "utf-8"))[:2]
    _expect(type(text) is str and encoding in ("latin1", "latin-1"), "_codecs.encode is only accepted as (str, 'latin1')")
    return text.encode("latin-1")


def reconstructor(*args: Any) -> Any:
    """copyreg._reconstructor(cls, base, state): how protocols 0/1 pickle plain objects."""
    cls, base, state = _args(args, "copyreg._reconstructor", 3, 3)
    _expect(isinstance(cls, GlobalRef) and isinstance(base, GlobalRef), "copyreg._reconstructor expects classes")
    return ObjectRecord(cls.qualname, args=(base.qualname,) if state is None else (base.qualname, state),
                        via="copyreg._reconstructor")


def make_size(*args: Any) -> TorchSize:
    _args(args, "torch.Size", 0, 1)
    return TorchSize(_int_tuple(args[0], "torch.Size") if args else ())


def make_device(*args: Any) -> Device:
    _args(args, "torch.device", 1, 2)
    try:
        return parse_device(*args)
    except ValueError as exc:
        raise MalformedCheckpoint(str(exc)) from None


def newobj(*args: Any) -> Any:
    """copyreg.__newobj__(cls, *args) spelled as a REDUCE: same as the NEWOBJ opcode."""
    _expect(len(args) >= 1 and isinstance(args[0], GlobalRef), "copyreg.__newobj__ expects a class")
    return instantiate(args[0], tuple(args[1:]), via="newobj")


# ------------------------------------------------------------------------------- the table

_NUMPY_CORE = ("numpy.core", "numpy._core")

# Names as pickle's find_class imports them: Python 2 spellings (`__builtin__.set`, `copy_reg`) are mapped by
# fix_imports before this table is consulted (`compat_names.py`), and at protocol 3+ pickle cannot import them.
RECONSTRUCTORS: dict[str, Reconstructor] = {
    **TENSOR_REBUILDERS,
    "torch._tensor._rebuild_from_type_v2": rebuild_from_type_v2,
    "torch._utils._rebuild_sparse_tensor": _unsupported("a sparse tensor"),
    "torch._utils._rebuild_sparse_csr_tensor": _unsupported("a sparse tensor"),
    "torch._utils._rebuild_qtensor": _unsupported("a quantized tensor"),
    "torch._utils._rebuild_nested_tensor": _unsupported("a nested tensor"),
    "torch._utils._rebuild_meta_tensor_no_storage": _unsupported("a meta tensor (no data)"),
    "torch._utils._rebuild_wrapper_subclass": _unsupported("a tensor subclass"),
    "torch._utils._rebuild_device_tensor_from_numpy": _unsupported("a device tensor pickled through numpy"),
    "torch.Size": make_size,
    "torch.device": make_device,
    "collections.OrderedDict": make_ordered_dict,
    "builtins.set": _make_collection(set),
    "builtins.frozenset": _make_collection(frozenset),
    "builtins.list": _make_collection(list),
    "builtins.tuple": _make_collection(tuple),
    "builtins.bytearray": make_bytearray,
    "builtins.bytes": make_bytes,
    "builtins.complex": make_complex,
    "_codecs.encode": codecs_encode,
    "copyreg._reconstructor": reconstructor,
    "copyreg.__newobj__": newobj,
    **{f"{core}.multiarray._reconstruct": new_ndarray for core in _NUMPY_CORE},
    **{f"{core}.multiarray.scalar": make_npscalar for core in _NUMPY_CORE},
    **{f"{core}.numeric._frombuffer": make_ndarray_from_buffer for core in _NUMPY_CORE},
    "numpy.dtype": make_npdtype,
}

# Globals that are values in their own right (a dtype stored in a checkpoint).
VALUE_GLOBALS: dict[str, Any] = {f"torch.{name}": dtype for name, dtype in DTYPES_BY_NAME.items()}


def instantiate(cls: GlobalRef, args: tuple, via: str) -> Any:
    """NEWOBJ / INST / OBJ: allowlisted classes are built by their reconstructor, others recorded."""
    if cls.qualname in RECONSTRUCTORS and cls.qualname not in TENSOR_REBUILDERS:
        return RECONSTRUCTORS[cls.qualname](*args)
    return ObjectRecord(cls.qualname, args=args, via=via)
