"""The gadget list audited as a whole: against picklescan's and modelscan's denylists, and by category.

Every global either tool denies, `scan` classifies unsafe — unless EXCEPTIONS below says why not.
Both tools are test dependencies (pyproject's `test` extra); their tables are imported, not copied, so
a new release that denies more names makes this test name what we miss.
"""

from __future__ import annotations

import pytest
from modelscan.settings import DEFAULT_SETTINGS as MODELSCAN_SETTINGS
from picklescan import scanner as picklescan_scanner

from convert.read.gadgets import EXEC, FILE, KNOWN_DATA_CLASSES, NESTED_LOADER, NETWORK, PROCESS, is_dangerous
from convert.scan.verdicts import SAFE, SUSPICIOUS, UNSAFE, classify_global

PICKLESCAN_UNSAFE = picklescan_scanner._unsafe_globals  # picklescan has no public name for its table
# (module, name) the tools deny that we do not classify unsafe as a whole, and why. "*" is a whole module.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("uuid", "*"): "uuid.UUID (and uuid3/4/5) are plain value constructors real checkpoints hold; the helpers that "
                   "run ifconfig/ip/arp/netstat are gadgets by name (UUID_COMMAND_HELPERS below)",
    **{(module, "*"): "a standard-library name user packages also take (a project's own `test/` or `profile/`): only "
                      "what the standard-library module really has is unsafe (STDLIB_SHADOW_GADGETS below); a user "
                      "class there is a custom class"
       for module in ("test", "profile", "cProfile", "timeit")},
}
# The real members of those modules: unsafe whatever the user packages are called.
STDLIB_SHADOW_GADGETS = [("test", "support"), ("test.support", "run_in_subinterp"), ("test.support.os_helper", "rmtree"),
                         ("test.test_os", "anything"), ("profile", "run"), ("profile", "Profile"),
                         ("cProfile", "runctx"), ("timeit", "timeit"), ("timeit", "Timer"), ("test", "_private")]
UUID_COMMAND_HELPERS = ["_get_command_stdout", "_popen", "_find_mac", "_ifconfig_getnode", "_ip_getnode",
                        "_arp_getnode", "_netstat_getnode", "_lanscan_getnode", "_unix_getnode", "getnode", "uuid1"]
PROBE = "some_member"  # stands for "any member" of a module a tool denies as a whole


def _denylists() -> list[tuple[str, str, str]]:
    """(tool, module, name) for every entry of both tools' tables; name "*" for a whole module."""
    tables = [("picklescan", PICKLESCAN_UNSAFE)]
    tables += [(f"modelscan {level}", table) for level, table in MODELSCAN_SETTINGS["unsafe_globals"].items()]
    out = []
    for tool, table in tables:
        for module, names in table.items():
            for name in ([names] if isinstance(names, str) else sorted(names)):
                out.append((tool, module, name))
    return out


def test_the_tables_are_really_there():
    entries = _denylists()
    assert len(entries) > 100
    assert ("picklescan", "os", "*") in entries and ("modelscan CRITICAL", "builtins", "eval") in entries


def test_every_name_they_deny_is_unsafe_here():
    missed = []
    for tool, module, name in _denylists():
        if (module, name) in EXCEPTIONS:
            continue
        probes = [PROBE, "run", "Thing.method"] if name == "*" else [name]
        for probe in probes:
            verdict, _ = classify_global(module, probe)
            if verdict != UNSAFE or not is_dangerous(module, probe):
                missed.append((tool, module, probe, verdict))
    assert not missed, missed


def test_exceptions_are_real_and_narrow():
    denied = {(m, n) for _, m, n in _denylists()}
    assert set(EXCEPTIONS) <= denied  # no stale exception
    assert classify_global("uuid", "UUID") == (SUSPICIOUS, "custom-class")
    for helper in UUID_COMMAND_HELPERS:
        assert classify_global("uuid", helper)[0] == UNSAFE, helper
    for module, name in STDLIB_SHADOW_GADGETS:
        assert classify_global(module, name)[0] == UNSAFE, (module, name)


# What the categories mean, by example (the list, plus the ways around it).
CATEGORY_EXAMPLES: dict[str, list[tuple[str, str]]] = {
    EXEC: [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"),
           ("subprocess", "Popen"), ("importlib", "import_module"), ("pathlib", "os.system"), ("torch", "os.system"),
           ("numpy", "__builtins__.get"), ("types", "CodeType"), ("torch.hub", "load"), ("pkgutil", "resolve_name")],
    FILE: [("gzip", "open"), ("builtins", "open"), ("shutil", "rmtree"), ("shutil", "copyfile"), ("os", "remove"),
           ("os", "unlink"), ("os", "rename"), ("pathlib", "Path.write_bytes"), ("pathlib", "Path.unlink"),
           ("pathlib", "PosixPath.write_text"), ("bz2", "open"), ("lzma", "open"), ("tempfile", "mkstemp"),
           ("logging", "FileHandler"), ("numpy", "save"), ("torch", "save"), ("codecs", "open"), ("io", "FileIO")],
    NETWORK: [("socket", "socket"), ("socket", "create_connection"), ("urllib.request", "urlopen"),
              ("http.client", "HTTPConnection"), ("requests", "get"), ("requests.api", "request"), ("ftplib", "FTP"),
              ("smtplib", "SMTP"), ("xmlrpc.client", "ServerProxy"), ("ssl", "wrap_socket"), ("aiohttp.client", "request"),
              ("torch.distributed.rpc", "rpc_sync"), ("torch.distributed", "init_process_group")],
    PROCESS: [("os", "kill"), ("os", "_exit"), ("sys", "exit"), ("signal", "signal"), ("threading", "Thread"),
              ("multiprocessing", "Process"), ("ctypes", "CDLL"), ("_thread", "start_new_thread"), ("gc", "disable"),
              ("builtins", "exit"), ("torch.distributed.run", "main"), ("torch.distributed.elastic.agent.server", "x")],
    NESTED_LOADER: [("pickle", "loads"), ("_pickle", "loads"), ("pickle", "Unpickler"), ("torch", "load"),
                    ("torch.serialization", "load"), ("marshal", "loads"), ("dill", "loads"), ("joblib", "load"),
                    ("numpy", "load"), ("cloudpickle", "loads"), ("shelve", "Shelf"), ("yaml", "unsafe_load"),
                    ("torch.storage", "_load_from_bytes"), ("torch.distributed", "broadcast_object_list")],
}


@pytest.mark.parametrize("category", list(CATEGORY_EXAMPLES))
def test_categories(category):
    wrong = [(m, n, classify_global(m, n)) for m, n in CATEGORY_EXAMPLES[category]
             if classify_global(m, n) != (UNSAFE, category)]
    assert not wrong, wrong


def test_torch_distributed_is_narrowed_not_dropped():
    for qual in KNOWN_DATA_CLASSES:
        module, _, name = qual.rpartition(".")
        assert classify_global(module, name) == (SAFE, "data-class"), qual
        assert not is_dangerous(module, name), qual  # the reader turns them into inert records instead of refusing
    # other torch.distributed classes are not gadgets, but not known data either: suspicious
    assert classify_global("torch.distributed.tensor", "DTensor") == (SUSPICIOUS, "custom-class")
    assert classify_global("torch.distributed.checkpoint.filesystem", "_write_files_from_queue")[0] == UNSAFE


def test_innocent_names_are_not_gadgets():
    for module, name in [("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch", "Size"),
                         ("numpy", "dtype"), ("mylib.io", "Reader"), ("mymodel.os_utils", "Config"),
                         ("torch.nn.modules.linear", "Linear"), ("pathlib", "PosixPath")]:
        assert classify_global(module, name)[0] != UNSAFE, (module, name)
