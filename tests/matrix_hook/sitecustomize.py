"""Test-only fault for the promise matrix: truncate a source file while a process reads it.

Active only when CKPT_MATRIX_TRUNCATE=PATH is set (tests/test_promise_matrix.py sets it for one run):
the first read of PATH through a descriptor (os.pread/os.read/os.preadv/os.copy_file_range/os.sendfile)
or a mapping of it (mmap.mmap) truncates it to a quarter of its size, and creates the file named by
CKPT_MATRIX_MARKER, so that the test knows the fault really happened. Nothing else is changed.
"""

import os

if os.environ.get("CKPT_MATRIX_TRUNCATE"):
    import mmap as _mmap

    _target = os.path.realpath(os.environ["CKPT_MATRIX_TRUNCATE"])
    _marker = os.environ.get("CKPT_MATRIX_MARKER", "")
    _state = {"done": False}

    def _is_target(fd):
        try:
            return os.readlink(f"/proc/self/fd/{fd}") == _target
        except (OSError, TypeError):
            return False

    def _fire(fd):
        if not _state["done"] and _is_target(fd):
            _state["done"] = True
            os.truncate(_target, os.stat(_target).st_size // 4)
            if _marker:
                with open(_marker, "a") as f:
                    f.write(f"{os.getpid()}\n")

    def _wrap(real, fd_arg=0):
        def wrapper(*args, **kwargs):
            _fire(args[fd_arg])
            return real(*args, **kwargs)
        return wrapper

    for _name in ("pread", "read", "preadv", "readv"):
        if hasattr(os, _name):
            setattr(os, _name, _wrap(getattr(os, _name)))
    for _name in ("copy_file_range", "sendfile"):  # (src, dst, ...) and (out_fd, in_fd, ...)
        if hasattr(os, _name):
            setattr(os, _name, _wrap(getattr(os, _name), 0 if _name == "copy_file_range" else 1))

    class _TruncatingMmap(_mmap.mmap):
        def __new__(cls, fileno, *args, **kwargs):
            obj = super().__new__(cls, fileno, *args, **kwargs)
            _fire(fileno)  # after mapping: the next touch of the mapped pages is past the end
            return obj

    _mmap.mmap = _TruncatingMmap
