"""Three verdicts for a global, and for a file: safe, suspicious, unsafe (and unreadable for files).

    safe        every global is one the reader's allowlist reconstructs, or a known data class below:
                loading the file with torch.load(weights_only=True) (or pickle, for the data classes)
                would be harmless
    suspicious  globals outside the allowlist that are not known gadgets: custom classes, whose import
                and `__reduce__`/`__setstate__` would run under pickle (whole-model pickles, Lightning hparams)
    unsafe      known gadgets (`convert/read/gadgets.py`): code execution, file writes/deletes, network,
                process and interpreter control, nested deserialisers
    unreadable  the file could not be read through (corrupt, truncated, a resource attack such as a zip bomb
                or a terabyte length field, or not a checkpoint at all) and no gadget was found in what was read
"""

from __future__ import annotations

from ..model.torch_types import QUANTIZED_STORAGES, STORAGE_DTYPES, STORAGE_MODULES
from ..read import allowlist
from ..read.gadgets import CATEGORY_REASONS, EXEC, KNOWN_DATA_CLASSES, gadget_category

SAFE, SUSPICIOUS, UNSAFE, UNREADABLE = "safe", "suspicious", "unsafe", "unreadable"
VERDICTS = (SAFE, SUSPICIOUS, UNSAFE, UNREADABLE)
# Worst first: a file's verdict is the worst of its findings (unsafe outranks unreadable: a gadget seen
# before the stream breaks would still have run).
_RANK = {UNSAFE: 3, UNREADABLE: 2, SUSPICIOUS: 1, SAFE: 0}
EXIT_CODES = {SAFE: 0, SUSPICIOUS: 0, UNSAFE: 1, UNREADABLE: 2}

CUSTOM_CLASS, UNREADABLE_CATEGORY = "custom-class", "unreadable"
ATTRIBUTE_REFERENCE, NESTED_BLOB, STORED_PARTIAL = "attribute-reference", "nested-torch-blob", "stored-partial"
# Categories of the globals judged where they are called (convert/read/vm.py), once the reader accepted every use.
JUDGED_CATEGORIES = {"builtins.getattr": ATTRIBUTE_REFERENCE, "torch.storage._load_from_bytes": NESTED_BLOB,
                     "functools.partial": STORED_PARTIAL}
GADGET_CATEGORIES = tuple(CATEGORY_REASONS)
REASONS: dict[str, str] = {
    **CATEGORY_REASONS,
    CUSTOM_CLASS: "not on the allowlist: pickle/torch.load would import its module and run its constructor, "
                  "__reduce__ or __setstate__ code",
    ATTRIBUTE_REFERENCE: "builtins.getattr of a class and a plain name, whose result is stored and never called: "
                         "pickle looks the attribute up (running the class's import) but calls nothing",
    NESTED_BLOB: "torch.storage._load_from_bytes of a legacy torch.save blob that the reader parsed and checked: "
                 "pickle/torch.load would unpickle it with a full unpickler",
    STORED_PARTIAL: "functools.partial of a named function, stored and never called while loading: pickle builds "
                    "it (running the function's import) but calls nothing",
    UNREADABLE_CATEGORY: "the file could not be read through, so nothing can be said about what it would do",
}

def _allowlisted() -> frozenset[str]:
    storage = {f"{module}.{name}" for module in STORAGE_MODULES for name in (*STORAGE_DTYPES, *QUANTIZED_STORAGES)}
    return frozenset({*allowlist.RECONSTRUCTORS, *allowlist.VALUE_GLOBALS, *allowlist.TENSOR_TYPES, *storage,
                      "numpy.ndarray"})


ALLOWLISTED: frozenset[str] = _allowlisted()


def classify_global(module: str, name: str) -> tuple[str, str]:
    """(verdict, category) of one global named by a pickle.

    Args:
        module: the module string of the GLOBAL / STACK_GLOBAL / INST opcode ("" if it could not be resolved).
        name: the name string (a dotted name is an attribute chain).

    Returns:
        (SAFE, "allowlist" | "data-class"), (UNSAFE, gadget category) or (SUSPICIOUS, CUSTOM_CLASS).
    """
    if not module or not name:
        return UNSAFE, EXEC  # a global whose module or name is computed, not written in the file
    qualname = f"{module}.{name}"
    if qualname in ALLOWLISTED:
        return SAFE, "allowlist"
    if qualname in KNOWN_DATA_CLASSES:
        return SAFE, "data-class"
    category = gadget_category(module, name)
    if category is not None:
        return UNSAFE, category
    return SUSPICIOUS, CUSTOM_CLASS


def worst(verdicts: list[str]) -> str:
    """The file's verdict from its findings' verdicts (SAFE when there are none)."""
    return max(verdicts, key=_RANK.__getitem__, default=SAFE)
