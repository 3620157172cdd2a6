"""Globals that are known code-execution gadgets: the one list used to refuse a file.

Nothing on this list would ever be called by the reader anyway (only the allowlist in
`allowlist.py` is ever acted on); this list decides which files are *refused as unsafe* rather
than converted with an inert record, and names the offending global in the message.
"""

from __future__ import annotations

# Whole modules whose every member is dangerous to reach from a pickle.
DANGEROUS_MODULES: frozenset[str] = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "pty", "runpy", "shutil",
    "importlib", "pkgutil", "ctypes", "marshal", "code", "codeop", "timeit", "cProfile",
    "profile", "pdb", "bdb", "pydoc", "idlelib", "socket", "asyncio", "multiprocessing", "threading",
    "_thread", "signal", "webbrowser", "http", "urllib", "ftplib", "smtplib", "telnetlib", "tempfile",
    "ensurepip", "venv", "pip", "setuptools", "distutils", "site", "commands", "platform", "shelve",
    "dbm", "sqlite3", "zipimport", "imp", "glob", "io", "_io", "_posixsubprocess", "_winapi",
    "fileinput", "linecache", "tarfile", "zipfile", "gc", "inspect", "dis", "ast", "compileall",
    "py_compile", "operator", "functools", "pickle", "_pickle", "cPickle", "copyreg", "copy_reg",
    "dill", "cloudpickle", "joblib", "torch.hub", "torch.jit", "torch.package", "torch.utils.collect_env",
    "torch._inductor", "torch._dynamo", "torch.fx", "torch.cuda._utils", "torch.distributed",
    "torch.multiprocessing", "torch.utils.cpp_extension", "numpy.f2py", "numpy.testing",
    "numpy.distutils", "numpy.lib.utils", "numpy.load", "numpy.ctypeslib", "__builtin__",
    # more ways to run code, write files or reach the network (see tests/security/corpus.py)
    "trace", "doctest", "rlcompleter", "xmlrpc", "antigravity", "_osx_support", "logging.config", "logging.handlers",
    "torch.testing", "torch._ops", "torch.library", "torch.backends.cudnn.rnn", "torch.utils.benchmark",
    "numpy.lib.npyio", "numpy.lib.format", "_ctypes", "_socket", "ssl", "select", "selectors", "mmap", "resource",
    "builtins.__loader__", "_frozen_importlib", "_frozen_importlib_external", "_imp", "zipapp",
})

# Single members that are dangerous in modules that are otherwise fine to name.
DANGEROUS_MEMBERS: frozenset[str] = frozenset({
    "builtins.eval", "builtins.exec", "builtins.compile", "builtins.open", "builtins.getattr",
    "builtins.setattr", "builtins.delattr", "builtins.__import__", "builtins.globals",
    "builtins.locals", "builtins.vars", "builtins.input", "builtins.breakpoint", "builtins.help",
    "builtins.exit", "builtins.quit", "builtins.memoryview", "builtins.type", "builtins.super",
    "builtins.classmethod", "builtins.staticmethod", "builtins.property", "builtins.apply",
    "builtins.execfile", "builtins.file", "builtins.reload",
    "torch.load", "torch.save", "torch.storage._load_from_bytes", "torch.serialization.load",
    "torch._weights_only_unpickler.load", "torch.from_file", "torch.ops", "torch.classes",
    "torch._C", "torch.Tensor.__reduce_ex__", "torch.utils.data", "torch.autograd.Function",
    "numpy.load", "numpy.loads", "numpy.fromfile", "numpy.memmap", "numpy.save", "numpy.savetxt",
    "numpy.tofile", "numpy.__builtins__", "torch.__builtins__", "collections.__builtins__",
    "_codecs.open", "codecs.open", "codecs.lookup", "functools.partial", "functools.reduce",
    "operator.attrgetter", "operator.methodcaller", "operator.itemgetter", "operator.getitem",
    "types.CodeType", "types.FunctionType", "types.MethodType", "types.ModuleType", "types.LambdaType",
    "types.BuiltinFunctionType", "uuid._get_command_stdout", "uuid._popen", "uuid._find_mac",
    "uuid._ifconfig_getnode", "uuid._ip_getnode", "uuid._arp_getnode", "uuid._netstat_getnode",
    "logging.FileHandler", "logging.basicConfig", "logging.StreamHandler", "logging.config",
    "torch.serialization._load", "torch.serialization._legacy_load", "torch.serialization.pickle",
    "torch.compile", "torch.utils.checkpoint", "builtins.print", "builtins.dir",
})

# Attribute names that, reached through a dotted member name, are a way out (`pathlib` + `os.system`).
DANGEROUS_ATTRS: frozenset[str] = frozenset({
    "system", "popen", "spawn", "spawnl", "spawnv", "execv", "execve", "execl", "fork", "eval", "exec",
    "compile", "open", "getattr", "setattr", "load", "loads", "run", "call", "check_call",
    "check_output", "Popen", "import_module", "resolve_name", "remove", "unlink", "rmtree", "kill",
})
_DANGEROUS_ROOTS = frozenset(m.split(".")[0] for m in DANGEROUS_MODULES) | {"builtins"}

# Tensor rebuild helpers that take a function to call: the function must itself be allowlisted.
CALLABLE_TAKING_REBUILDERS: frozenset[str] = frozenset({"torch._tensor._rebuild_from_type_v2"})


def is_dangerous(module: str, name: str) -> bool:
    """True if `module.name` is a known way to run code, read files or import modules."""
    if module == "__builtin__":  # Python 2 spelling
        module = "builtins"
    qual = f"{module}.{name}"
    if qual in DANGEROUS_MEMBERS or module in DANGEROUS_MODULES:
        return True
    # Any dunder reaches into interpreter internals (`numpy.__builtins__`, `x.__class__`, ...).
    parts = qual.split(".")
    if any(p.startswith("__") and p.endswith("__") and p not in {"__main__", "__builtin__"} for p in parts[1:]):
        return True
    if parts[0].startswith("__") and parts[0].endswith("__") and parts[0] != "__main__":
        return True
    # Submodules of dangerous packages (`os.path`, `torch.hub`, ...).
    for i in range(1, len(parts)):
        if ".".join(parts[:i]) in DANGEROUS_MODULES or ".".join(parts[: i + 1]) in DANGEROUS_MEMBERS:
            return True
    # A member that is itself a dangerous module, reached as an attribute: `pathlib.os`, `torch.sys`.
    if name.split(".")[0] in _DANGEROUS_ROOTS:
        return True
    # A dotted member name is an attribute chain: `pathlib` + `os.system` reaches os.system.
    if "." in name:
        chain = name.split(".")
        if any(p in _DANGEROUS_ROOTS or p in DANGEROUS_ATTRS for p in chain):
            return True
        if any(".".join(chain[j:k]) in DANGEROUS_MEMBERS | DANGEROUS_MODULES
               for j in range(len(chain)) for k in range(j + 1, len(chain) + 1)):
            return True
    return False
