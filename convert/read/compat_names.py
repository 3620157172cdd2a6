"""pickle's `fix_imports`: the Python 2 names a protocol 0-2 pickle may use, resolved as pickle resolves them.

`pickle.Unpickler.find_class` (and `_pickle.c`'s `find_class`, with the same tables) rewrites every
global of a stream whose protocol in effect is below 3 — no PROTO opcode yet means protocol 0 — before
importing it: first the `(module, name)` pair through `_compat_pickle.NAME_MAPPING`
(`__builtin__.long` -> `builtins.int`), else the module alone through `IMPORT_MAPPING`
(`cStringIO` -> `io`, `anydbm` -> `dbm`, `__builtin__` -> `builtins`). torch.load(weights_only=False)
goes through that find_class. The reader and the scanner apply the same rewrite to every global before
the allowlist and the gadget list look at it, and record the rewritten name.

The tables are `_compat_pickle`'s own (standard-library data, imported by `pickle` itself): the same
tables the local interpreter's pickle would use, with nothing copied that could drift.
"""

from __future__ import annotations

import _compat_pickle

FIX_IMPORTS_BELOW = 3  # find_class applies the mapping only when the protocol in effect is below this


def resolve(module: str, name: str, protocol: int) -> tuple[str, str]:
    """(module, name) as pickle's find_class imports them for a stream at `protocol` (fix_imports=True)."""
    if protocol >= FIX_IMPORTS_BELOW:
        return module, name
    pair = _compat_pickle.NAME_MAPPING.get((module, name))
    if pair is not None:
        return pair
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name
