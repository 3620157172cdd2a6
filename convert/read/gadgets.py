"""Globals that are known gadgets: the one list used to refuse a file, and what each one would do.

Nothing on this list would ever be called by the reader anyway (only the allowlist in
`allowlist.py` is ever acted on); this list decides which files are *refused as unsafe* rather
than converted with an inert record, and, for `scan`, in which category the danger falls:

    exec           runs code or shell commands, or reaches a way to (eval, os.system, getattr, importlib)
    file           writes, deletes or opens files (builtins.open, gzip.open, shutil.rmtree, os.remove)
    network        opens connections (socket, urllib, http.client, requests, torch.distributed.rpc)
    process        controls the process or interpreter (os.kill, sys.exit, signal, threading, ctypes)
    nested-loader  deserialises more data with a loader that runs code (pickle.loads, torch.load, marshal)

The list is audited as a whole against the denylists of picklescan and modelscan in
tests/security/test_gadget_audit.py. This module imports nothing but the standard library's typing.
"""

from __future__ import annotations

EXEC, FILE, NETWORK, PROCESS, NESTED_LOADER = "exec", "file", "network", "process", "nested-loader"

CATEGORY_REASONS: dict[str, str] = {
    EXEC: "runs code or shell commands when the file is unpickled",
    FILE: "writes, deletes or opens files when the file is unpickled",
    NETWORK: "opens network connections when the file is unpickled",
    PROCESS: "controls the process or the interpreter (kills, exits, threads, native calls) when unpickled",
    NESTED_LOADER: "deserialises further data with a loader that can itself run code",
}

# Known data classes: outside the reader's allowlist (they become inert records when converted), but plain
# data whose construction runs no code of consequence, even where their module is on the list below
# (`torch.distributed.checkpoint.filesystem._StorageInfo`). `scan` calls files of only these and allowlisted
# globals safe. Each entry says why it is here.
KNOWN_DATA_CLASSES: dict[str, str] = {
    # torch.distributed.checkpoint `.metadata` files: dataclasses and an enum of plain fields
    **dict.fromkeys((
        "torch.distributed.checkpoint.metadata.Metadata",
        "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
        "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
        "torch.distributed.checkpoint.metadata.TensorProperties",
        "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
        "torch.distributed.checkpoint.metadata.MetadataIndex",
        "torch.distributed.checkpoint.metadata.StorageMeta",
        "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
        "torch.distributed.checkpoint.filesystem._StorageInfo",
    ), "a torch.distributed.checkpoint metadata dataclass (plain fields)"),
    # torch value types that torch.load(weights_only=True) itself accepts
    "torch.serialization._get_layout": "looks a torch layout (torch.strided, ...) up by name",
    **dict.fromkeys((f"torch.{fmt}" for fmt in ("contiguous_format", "channels_last", "channels_last_3d",
                                                "preserve_format")), "a torch.memory_format constant"),
    **dict.fromkeys((f"torch.{q}" for q in ("per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
                                            "per_channel_symmetric", "per_channel_affine_float_qparams")),
                    "a torch quantization scheme constant"),
    "collections.Counter": "a dict subclass of counts",
    # paths and namespaces: construction only stores the arguments (no file or attribute access)
    **dict.fromkeys((f"pathlib.{cls}" for cls in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath",
                                                  "Path", "PurePath")), "a path value (nothing is opened)"),
    "argparse.Namespace": "a plain attribute holder (training scripts' hyper-parameters)",
    # inspect's signature value types (pickled in hyper-parameter records): construction stores fields only
    **dict.fromkeys(("inspect.Signature", "inspect.Parameter", "inspect._ParameterKind", "inspect._empty"),
                    "an inspect signature value (plain fields, no code is looked up or run)"),
    **dict.fromkeys((f"builtins.{t}" for t in ("object", "int", "float", "str", "dict", "bool", "slice", "range")),
                    "a builtin value type"),
}


# Names inside listed modules or prefixes that are not gadgets: what a call of them can do is harmless
# (`scan` calls them custom classes, suspicious). Each entry says why.
NOT_GADGETS: dict[str, str] = {
    "builtins.print": "writes text to stdout: harmless output",
    "torch.utils.data.DataLoader": "a class reference; constructing a DataLoader starts no worker until iterated",
    "torch.utils.data.dataloader.DataLoader": "a class reference; constructing a DataLoader starts no worker until "
                                              "iterated",
}

# Whole modules (and every submodule) whose members are dangerous to reach from a pickle, by category.
_MODULES: dict[str, str] = {
    **dict.fromkeys((
        "importlib", "pkgutil", "code", "codeop", "timeit", "cProfile", "profile", "pdb", "bdb", "pydoc", "idlelib",
        "runpy", "operator", "_operator", "functools", "copyreg", "copy_reg", "inspect", "dis", "ast", "compileall",
        "zipimport", "imp", "_imp", "_frozen_importlib", "_frozen_importlib_external", "builtins.__loader__",
        "__builtin__", "trace", "doctest", "rlcompleter", "ensurepip", "pip", "setuptools", "distutils",
        "site", "lib2to3", "test", "_pyrepl", "_aix_support", "_osx_support", "logging.config", "atexit",
        "torch.hub", "torch.jit", "torch.package", "torch.utils.collect_env", "torch._inductor", "torch._dynamo",
        "torch.fx", "torch.cuda._utils", "torch.utils.cpp_extension", "torch.testing", "torch._ops", "torch.library",
        "torch.backends.cudnn.rnn", "torch.utils.benchmark", "torch.utils.bottleneck", "torch.utils._config_module",
        "numpy.f2py", "numpy.testing", "numpy.distutils", "numpy.lib.utils", "numpy.ctypeslib", "zipapp", "antigravity",
        "os", "posix", "nt", "subprocess", "pty", "_posixsubprocess", "_winapi",
    ), EXEC),
    **dict.fromkeys((
        "sys", "signal", "threading", "_thread",
        "multiprocessing", "torch.multiprocessing", "asyncio", "concurrent", "gc", "resource", "faulthandler",
        "ctypes", "_ctypes", "platform", "commands", "webbrowser", "mmap", "sched",
        # torch.distributed is narrowed to what really launches or controls processes (its metadata classes are data)
        "torch.distributed.run", "torch.distributed.launch", "torch.distributed.launcher", "torch.distributed.elastic",
        "torch.distributed.argparse_util",
    ), PROCESS),
    **dict.fromkeys((
        "posixpath", "ntpath", "shutil", "tempfile", "glob", "io", "_io", "fileinput", "linecache", "tarfile",
        "zipfile", "dbm", "sqlite3", "logging.handlers", "venv", "torch.distributed.checkpoint.filesystem",
        "torch.distributed.checkpoint.state_dict_saver", "torch.distributed.checkpoint.format_utils",
    ), FILE),
    **dict.fromkeys((
        "socket", "_socket", "ssl", "select", "selectors", "socketserver", "http", "httplib", "urllib", "urllib2",
        "urllib3", "requests", "aiohttp", "httpx", "ftplib", "smtplib", "telnetlib", "imaplib", "poplib", "nntplib",
        "xmlrpc", "torch.distributed.rpc", "torch.distributed.rendezvous", "torch.distributed.distributed_c10d",
    ), NETWORK),
    **dict.fromkeys((
        "pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "jsonpickle",
        "numpy.lib.npyio", "numpy.lib.format", "torch.distributed.checkpoint.state_dict_loader",
    ), NESTED_LOADER),
}

# Single members that are dangerous in modules that are otherwise fine to name.
_MEMBERS: dict[str, str] = {
    **dict.fromkeys((
        "builtins.eval", "builtins.exec", "builtins.compile", "builtins.getattr", "builtins.setattr", "builtins.delattr",
        "builtins.__import__", "builtins.globals", "builtins.locals", "builtins.vars", "builtins.breakpoint",
        "builtins.help", "builtins.memoryview", "builtins.type", "builtins.super", "builtins.classmethod",
        "builtins.staticmethod", "builtins.property", "builtins.apply", "builtins.execfile", "builtins.reload",
        "builtins.dir", "torch.ops", "torch.classes", "torch._C", "torch.Tensor.__reduce_ex__", "torch.autograd.Function",
        "torch.compile", "torch.utils.checkpoint", "numpy.__builtins__", "torch.__builtins__",
        "collections.__builtins__", "codecs.lookup", "types.CodeType", "types.FunctionType", "types.MethodType",
        "types.ModuleType", "types.LambdaType", "types.BuiltinFunctionType", "logging.basicConfig",
        "logging.config", "torch.utils.data.datapipes.utils.decoder.basichandlers",
    ), EXEC),
    **dict.fromkeys((
        "builtins.open", "builtins.file", "_codecs.open", "codecs.open", "torch.save", "torch.from_file",
        "numpy.fromfile", "numpy.memmap", "numpy.save", "numpy.savez", "numpy.savez_compressed", "numpy.savetxt",
        "numpy.tofile", "numpy.loadtxt", "numpy.genfromtxt", "logging.FileHandler", "gzip.open", "gzip.GzipFile",
        "bz2.open", "bz2.BZ2File", "lzma.open", "lzma.LZMAFile", "torch.distributed.FileStore",
        "torch.distributed.checkpoint.save", "torch.distributed.checkpoint.save_state_dict",
        "torch.distributed.checkpoint.async_save", "torch.distributed.checkpoint.FileSystemWriter",
    ), FILE),
    **dict.fromkeys((
        "builtins.input", "builtins.exit", "builtins.quit", "logging.StreamHandler", "torch.utils.data",
    ), PROCESS),
    # uuid's helpers that run ifconfig/ip/arp/netstat with arguments (picklescan denies all of uuid: see the audit test)
    **dict.fromkeys((
        "uuid._get_command_stdout", "uuid._popen", "uuid._find_mac", "uuid._ifconfig_getnode", "uuid._ip_getnode",
        "uuid._arp_getnode", "uuid._netstat_getnode", "uuid._lanscan_getnode", "uuid._unix_getnode",
        "uuid._windll_getnode", "uuid._netbios_getnode", "uuid._random_getnode", "uuid._load_system_functions",
        "uuid.getnode", "uuid._find_mac_near_keyword", "uuid._find_mac_under_heading", "uuid.uuid1",
    ), EXEC),
    **dict.fromkeys((
        "torch.distributed.init_process_group", "torch.distributed.new_group", "torch.distributed.TCPStore",
        "torch.distributed.rendezvous", "torch.distributed.send", "torch.distributed.recv", "torch.distributed.isend",
        "torch.distributed.irecv", "torch.distributed.barrier", "torch.distributed.broadcast",
        "torch.distributed.all_reduce", "torch.distributed.init_device_mesh", "torch.distributed.device_mesh.init_device_mesh",
    ), NETWORK),
    **dict.fromkeys((
        "torch.load", "torch.storage._load_from_bytes", "torch.serialization.load", "torch._weights_only_unpickler.load",
        "torch.serialization._load", "torch.serialization._legacy_load", "torch.serialization.pickle",
        "numpy.load", "numpy.loads", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all",
        "yaml.unsafe_load_all", "yaml.UnsafeLoader", "yaml.Loader", "pandas.read_pickle", "torch.distributed.checkpoint.load",
        "torch.distributed.checkpoint.load_state_dict", "torch.distributed.broadcast_object_list",
        "torch.distributed.all_gather_object", "torch.distributed.gather_object", "torch.distributed.scatter_object_list",
        "torch.distributed.recv_object_list", "torch.distributed.send_object_list",
    ), NESTED_LOADER),
}

# Attribute names that, reached through a dotted member name, are a way out (`pathlib` + `os.system`,
# `pathlib` + `Path.write_bytes`); inside a dangerous module they also say which category applies.
_ATTRS: dict[str, str] = {
    **dict.fromkeys(("system", "popen", "spawn", "spawnl", "spawnv", "spawnve", "spawnlp", "execv", "execve", "execl",
                     "execvp", "execlp", "execle", "execlpe", "execvpe", "spawnle", "spawnlpe", "spawnvp", "spawnvpe",
                     "posix_spawn", "posix_spawnp", "startfile", "eval", "exec", "compile", "getattr", "setattr", "run", "call",
                     "check_call", "check_output", "Popen", "import_module", "resolve_name", "runcode", "runsource"),
                    EXEC),
    **dict.fromkeys(("open", "remove", "unlink", "rmtree", "rmdir", "removedirs", "rename", "renames", "replace",
                     "write_bytes", "write_text", "touch", "mkdir", "makedirs", "chmod", "chown", "lchown", "symlink",
                     "symlink_to", "hardlink_to", "link", "truncate", "copyfile", "copy", "copy2", "copytree", "move"),
                    FILE),
    **dict.fromkeys(("kill", "killpg", "abort", "_exit", "exit", "fork", "forkpty", "setuid", "setgid", "nice",
                     "putenv", "unsetenv", "chdir", "chroot"), PROCESS),
    **dict.fromkeys(("connect", "create_connection", "urlopen", "urlretrieve", "socket"), NETWORK),
    **dict.fromkeys(("load", "loads", "load_config", "Unpickler", "read_pickle"), NESTED_LOADER),
}

# Attributes that make a *dotted* member name dangerous even in an innocent module (`pathlib.Path.unlink`).
# `copy`/`move`/`link` are excluded there: harmless value classes have methods of those names.
_DOTTED_ATTRS = {name: cat for name, cat in _ATTRS.items() if name not in {"copy", "copy2", "move", "link"}}

_DANGEROUS_ROOTS = frozenset(m.split(".")[0] for m in _MODULES if not m.startswith(("torch.", "numpy.", "logging.")))
_DANGEROUS_ROOTS |= {"builtins"}

# The flat views earlier code and tests use.
DANGEROUS_MODULES: frozenset[str] = frozenset(_MODULES)
DANGEROUS_MEMBERS: frozenset[str] = frozenset(_MEMBERS)
DANGEROUS_ATTRS: frozenset[str] = frozenset(_ATTRS)

# Standard-library modules whose names user packages also take (a project's own `code/`, `site/`, `test/`,
# `profile/` package). There only (module, name) pairs the standard-library module really has are gadgets:
# for a plain module, its attributes (all of them as of Python 3.11, plus any private/dunder name); nothing
# below it is a module, so `code.models.Net` is a user class (suspicious), never the stdlib. For the `test`
# package, its submodules (`test_*`, private ones, and the helper modules listed). A name that could be the
# standard library's stays a gadget, and the generic checks (dunders, dotted chains to `os.system`) still run.
_STDLIB_ATTRS: dict[str, frozenset[str]] = {module: frozenset(names.split()) for module, names in {
    "code": "CommandCompiler InteractiveConsole InteractiveInterpreter compile_command interact sys traceback codeop",
    "codeop": "CommandCompiler Compile PyCF_ALLOW_INCOMPLETE_INPUT PyCF_DONT_IMPLY_DEDENT compile_command warnings",
    "site": "ENABLE_USER_SITE PREFIXES USER_BASE USER_SITE abs_paths addpackage addsitedir addsitepackages "
            "addusersitepackages builtins check_enableusersite enablerlcompleter execsitecustomize execusercustomize "
            "getsitepackages getuserbase getusersitepackages io main makepath os removeduppaths setcopyright "
            "sethelper setquit sys venv gethistoryfile register_readline",
    "profile": "Profile io main marshal run runctx sys time",
    "cProfile": "Profile io label main run runctx",
    "timeit": "Timer default_number default_repeat default_timer dummy_src_name gc itertools main reindent repeat sys "
              "template time timeit",
    "trace": "CoverageResults PRAGMA_NOCOVER Trace dis gc inspect io linecache main os pickle sys sysconfig threading "
             "token tokenize",
}.items()}
_STDLIB_TEST_MODULES = frozenset(" ".join((
    "audiodata audiotests audit-tests autotest bisect_cmd certdata cjkencodings configdata crashers curses_tests data "
    "datetimetester decimaltestdata dis_module doctest_aliases doctest_lineno double_const dtracedata encoded_modules "
    "fork_wait imghdrdata imp_dummy leakers libregrtest list_tests lock_tests mapping_tests memory_watchdog mock_socket "
    "mp_fork_bomb mp_preload multibytecodec_support pickletester profilee pyclbr_input pydoc_mod pydocfodder "
    "pythoninfo re_tests regrtest relimport reperf sample_doctest sample_doctest_no_docstrings "
    "sample_doctest_no_doctests seq_tests signalinterproctester sndhdrdata sortperf ssl_servers ssltests string_tests "
    "subprocessdata support testcodec tf_inherit_check time_hashlib tokenizedata tracedmodules typinganndata "
    "win_console_handler xmltestdata xmltests ziptestdata archivetestdata wheeldata cov levenshtein_examples "
    "test_support",
)).split())


def _may_be_stdlib(module: str, name: str) -> bool | None:
    """For a module name user packages also take: can `module.name` be the standard library's? None: not such a name."""
    root, _, below = module.partition(".")
    if root != "test" and root not in _STDLIB_ATTRS:
        return None
    first = (below.split(".") if below else name.split("."))[0]
    if first.startswith("_"):
        return True
    if root == "test":
        return first.startswith("test_") or first in _STDLIB_TEST_MODULES
    return not below and first in _STDLIB_ATTRS[root]


# Tensor rebuild helpers that take a function to call: the function must itself be allowlisted.
CALLABLE_TAKING_REBUILDERS: frozenset[str] = frozenset({"torch._tensor._rebuild_from_type_v2"})


def _in_module(module_category: str, attr: str) -> str:
    """A member of a dangerous module: its own attribute's category if it has one (`os.kill`), else the module's.

    A `load` in a code-running module (`torch._inductor.codecache.PyCodeCache.load`) loads code: it stays exec.
    """
    category = _ATTRS.get(attr, module_category)
    return module_category if module_category == EXEC and category == NESTED_LOADER else category


def gadget_category(module: str, name: str) -> str | None:
    """The category of harm `module.name` does when a pickle reaches it, or None if it is no known gadget.

    Args:
        module: the module string of a GLOBAL / STACK_GLOBAL / INST opcode.
        name: the name string, possibly dotted (`Path.write_bytes`).

    Returns:
        One of EXEC, FILE, NETWORK, PROCESS, NESTED_LOADER; None for a name not known to be dangerous.
    """
    if module == "__builtin__":  # Python 2 spelling
        module = "builtins"
    qual = f"{module}.{name}"
    last = name.rsplit(".", 1)[-1]
    if qual in KNOWN_DATA_CLASSES or qual in NOT_GADGETS:
        return None
    if qual in _MEMBERS:
        return _MEMBERS[qual]
    stdlib = _may_be_stdlib(module, name)
    if stdlib:
        return _in_module(_MODULES[module.split(".")[0]], last)
    if module in _MODULES and stdlib is None:
        return _in_module(_MODULES[module], last)
    parts = qual.split(".")
    # Any dunder reaches into interpreter internals (`numpy.__builtins__`, `x.__class__`, ...).
    if any(p.startswith("__") and p.endswith("__") and p not in {"__main__", "__builtin__"} for p in parts[1:]):
        return EXEC
    if parts[0].startswith("__") and parts[0].endswith("__") and parts[0] != "__main__":
        return EXEC
    # Submodules of dangerous packages (`os.path`, `torch.hub.load`, `uuid._popen.x`).
    for i in range(1 if stdlib is None else 2, len(parts)):
        prefix = ".".join(parts[:i])
        if prefix in _MODULES:
            return _in_module(_MODULES[prefix], last)
        if ".".join(parts[: i + 1]) in _MEMBERS:
            return _MEMBERS[".".join(parts[: i + 1])]
    # A member that is itself a dangerous module, reached as an attribute: `pathlib.os`, `torch.sys`.
    root = name.split(".")[0]
    if root in _DANGEROUS_ROOTS:
        return _in_module(_MODULES.get(root, EXEC), last)
    # A dotted member name is an attribute chain: `pathlib` + `os.system` reaches os.system.
    if "." in name:
        chain = name.split(".")
        for j in range(len(chain)):
            for k in range(j + 1, len(chain) + 1):
                piece = ".".join(chain[j:k])
                if piece in _MEMBERS:
                    return _MEMBERS[piece]
                if piece in _MODULES:
                    return _in_module(_MODULES[piece], last)
        for p in reversed(chain):
            if p in _DANGEROUS_ROOTS:
                return _in_module(_MODULES.get(p, EXEC), last)
            if p in _DOTTED_ATTRS:
                return _DOTTED_ATTRS[p]
    return None


def is_dangerous(module: str, name: str) -> bool:
    """True if `module.name` is a known way to run code, touch files or the network, or control the process."""
    return gadget_category(module, name) is not None
