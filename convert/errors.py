"""The errors users see. Each maps to one CLI exit code and prints as one line."""

from __future__ import annotations

import errno

# OS errors that describe the user's environment (a full disk, a read-only folder, a name too long...),
# reported as "cannot write DST: reason" / one line, never as an internal error.
ENVIRONMENT_ERRNOS = frozenset(code for code in (
    errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EFBIG,
    errno.ENAMETOOLONG, errno.ELOOP, errno.EMFILE, errno.ENFILE, errno.EIO, errno.EXDEV, errno.EMLINK, errno.EBUSY,
    getattr(errno, "EDQUOT", None), getattr(errno, "ENOTSUP", None), getattr(errno, "EOPNOTSUPP", None),
) if code is not None)


OUT_OF_MEMORY = "out of memory; free some memory or raise the limit (ulimit -v) and retry"


def failure_reason(exc: BaseException) -> str:
    """One line for an unexpected exception of one job among many (migrate's per-file report): memory and the
    user's environment (disk full, permissions, too many open files...) in their own words, naming the file;
    anything else is a bug: "internal error: ..."."""
    if out_of_memory(exc):
        return f"error: {OUT_OF_MEMORY}"
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"error: {where}{exc.strerror or exc}"
    return f"internal error: {type(exc).__name__}: {exc}"


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is memory running out: a MemoryError, an OSError ENOMEM (a mapping refused), or an ImportError
    whose shared library the address-space limit (`ulimit -v`) refused to map (numpy wraps the loader's error)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        text = str(seen)
        if (isinstance(seen, MemoryError) or (isinstance(seen, OSError) and seen.errno == errno.ENOMEM)
                or "failed to map segment" in text or "Cannot allocate memory" in text):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class ConvertError(Exception):
    """Base class: a problem with the input or the request, reported as one clear line."""

    exit_code = 2
    label = "error"

    def __str__(self) -> str:  # one line, always
        return " ".join(super().__str__().split())


class UnsafeCheckpoint(ConvertError):
    """The file names code that would run when unpickled; it is refused, never executed."""

    exit_code = 1
    label = "refused"

    def __init__(self, message: str, findings: list | None = None) -> None:
        super().__init__(message)
        self.findings = list(findings or [])


class MalformedCheckpoint(ConvertError):
    """Corrupt, truncated or inconsistent input (or output folder, on the load path)."""

    label = "malformed"


class NotACheckpoint(MalformedCheckpoint):
    """The file is not in any format a checkpoint comes in (neither zip nor pickle)."""


class UnsupportedValue(ConvertError):
    """A well-formed value this tool cannot store losslessly (quantized, sparse, ...)."""

    label = "unsupported"


class OutputExists(ConvertError):
    """The destination exists and --overwrite was not given."""

    label = "error"

    @classmethod
    def for_path(cls, dst: object, why: str = "") -> OutputExists:
        """The one wording of a destination that exists: `why` (e.g. "created meanwhile by another run") in
        parentheses after the path."""
        return cls(f"{dst} already exists{f' ({why})' if why else ''}; pass --overwrite (overwrite=True) to replace it")


class CannotWrite(ConvertError):
    """The destination cannot be written: the user's environment (full disk, read-only file system,
    permissions, a file where a folder should be), not a bug. Nothing partial is left behind."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path = path


class DestinationBusy(ConvertError):
    """Another ckpt-convert run holds the lock on writing the same destination."""


class CorruptFolder(MalformedCheckpoint):
    """A converted folder fails its own integrity record: a digest, a size, or files from different conversions."""


class DestinationNotOwned(ConvertError):
    """--overwrite would replace a folder ckpt-convert did not write (or one that holds the source):
    refused, nothing touched."""


class SignatureInvalid(ConvertError):
    """A signed folder fails its signature: a file changed, added or removed, or a key/certificate not trusted."""

    exit_code = 3
    label = "untrusted"


class UnsignedFolder(SignatureInvalid):
    """A trust policy asks for a signature and the folder has none."""


TORCH_INSTALL = ("pip install torch (CPU-only, smaller: pip install torch --index-url "
                 "https://download.pytorch.org/whl/cpu)")


class MissingDependency(ConvertError, ModuleNotFoundError):
    """An optional package (torch) is not installed and the operation needs it. Still a ModuleNotFoundError,
    so code that probes for torch with `except ImportError` keeps working."""

    def __init__(self, what: str, package: str = "torch") -> None:
        how = TORCH_INSTALL if package == "torch" else f"pip install {package}"
        super().__init__(f"{what} needs {package}, which is not installed: {how} "
                         "(scan and convert work without it)", name=package)


def require_torch(what: str) -> None:
    """Raise MissingDependency naming `what` if torch cannot be imported; return quietly otherwise."""
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "torch" and not (exc.name or "").startswith("torch."):
            raise
        raise MissingDependency(what) from None


class DeviceUnavailable(ConvertError, RuntimeError):
    """A load asks for a device this machine lacks (the saved cuda:0 with map_location=None, as torch.load
    would restore it; or the one map_location names). Still a RuntimeError, as torch.load raises."""
