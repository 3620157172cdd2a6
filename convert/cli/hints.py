"""Argument checks run before any command imports torch: a wrong path is said in well under a second,
and the message names the mix-up (a checkpoint file where a converted folder goes, swapped arguments)
with the command that was probably meant.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from ..errors import ConvertError, OutputExists
from ..sidecar.names import FORMAT_NAME, SIDECAR_NAME


def precheck(args: argparse.Namespace) -> None:
    """Raise ConvertError (one line, exit 2) for a path that does not exist or is of the wrong kind."""
    check = _CHECKS.get(args.command)
    if check is not None:
        _not_a_sidecar(args)
        check(args)


def _not_a_sidecar(args: argparse.Namespace) -> None:
    """`verify out/checkpoint.json` (tab completion went one step too far): name the folder it belongs to."""
    path = Path(getattr(args, "path", None) or getattr(args, "src", None) or "")
    if path.name != SIDECAR_NAME or not _is_sidecar(path):
        return
    folder = _q(path.parent)
    what = {"convert": f"it is already converted: load the folder with load_checkpoint, check it with "
                       f"ckpt-convert verify {folder}",
            "export": f"export the folder: ckpt-convert export {folder} OUT"}.get(
                args.command, f"give the folder: ckpt-convert {args.command} {folder}")
    raise ConvertError(f"{path} is the sidecar of the converted folder {path.parent}; {what}")


def _q(path: str | os.PathLike) -> str:
    return shlex.quote(str(path))


def _is_source(path: Path) -> bool:
    """A checkpoint source: a file, or a torch.distributed.checkpoint folder."""
    from ..sources.dcp_metadata import is_dcp_folder

    return path.is_file() or (path.is_dir() and is_dcp_folder(path))


_SIDECAR_HEAD = f'{{"format":"{FORMAT_NAME}"'.encode()  # how every checkpoint.json ckpt-convert writes begins


def _is_sidecar(path: Path) -> bool:
    """A checkpoint.json that ckpt-convert wrote (not a user's file of that name in a training folder)."""
    if not path.is_file():  # first: opening a FIFO would wait for a writer
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(_SIDECAR_HEAD)) == _SIDECAR_HEAD
    except OSError:
        return False


def _converted(folder: Path) -> bool:
    return folder.is_dir() and _is_sidecar(folder / SIDECAR_NAME)


def _source_exists(src: Path) -> None:
    if not os.path.lexists(src):
        raise ConvertError(f"{src}: no such file or folder")  # a source may be a file or a unit folder


def _check_convert(args: argparse.Namespace) -> None:
    src, dst = Path(args.src), Path(args.dst)
    _source_exists(src)
    if _converted(src):
        raise ConvertError(f"{src} is already a converted folder: load it with load_checkpoint, check it with "
                           f"ckpt-convert verify {_q(src)}")
    if dst.is_symlink():  # never followed nor replaced: --overwrite would not help
        from ..write.ownership import not_a_folder

        raise not_a_folder(dst)
    if os.path.lexists(dst) and not dst.is_dir():  # --overwrite replaces only an earlier output folder
        raise OutputExists(f"{dst} is an existing file; the destination is a folder to create: "
                           "give a new folder name")


def _check_export(args: argparse.Namespace) -> None:
    _source_exists(Path(args.src))  # the wording convert uses


def _check_verify(args: argparse.Namespace) -> None:
    src = Path(args.src)
    if args.dst is None:
        if not os.path.lexists(src):
            raise ConvertError(f"{src}: no such folder")
        if _is_source(src) and not (src / SIDECAR_NAME).is_file():
            raise ConvertError(f"{src} is a checkpoint file, not a converted folder: check a conversion against it "
                               f"with ckpt-convert verify {_q(src)} OUT (OUT: the folder ckpt-convert convert wrote)")
        return
    dst = Path(args.dst)
    if not os.path.lexists(src):
        raise ConvertError(f"{src}: no such file or folder")
    if _converted(src) and _converted(dst):
        raise ConvertError(f"{src} is a converted folder, not a source: check a folder alone with ckpt-convert verify "
                           f"{_q(dst)}, or against its source with ckpt-convert verify SRC {_q(dst)}")
    if not os.path.lexists(dst):
        raise ConvertError(f"{dst}: no such folder")
    if dst.is_file():
        if src.is_dir() and (src / SIDECAR_NAME).is_file():
            raise ConvertError(f"the arguments are swapped: {dst} is the checkpoint file and {src} the converted "
                               f"folder; the source comes first: ckpt-convert verify {_q(dst)} {_q(src)}")
        raise ConvertError(f"{dst} is a file, not a converted folder: ckpt-convert verify SRC OUT compares the "
                           "checkpoint file SRC with the folder OUT that ckpt-convert convert wrote")


def _check_inspect(args: argparse.Namespace) -> None:
    if not os.path.lexists(args.path):
        raise ConvertError(f"{args.path}: no such file or folder")
    if args.max_items < 0:
        raise ConvertError("--max-items must be at least 0")


def _check_migrate(args: argparse.Namespace) -> None:
    if args.status or not args.src:
        return
    src = Path(args.src)
    if not os.path.lexists(src):
        raise ConvertError(f"{src}: no such folder")
    if not src.is_dir():
        raise ConvertError(f"{src} is a file; migrate converts every checkpoint under a folder: for one file use "
                           f"ckpt-convert convert {_q(src)} OUT")
    if args.dst and os.path.lexists(args.dst) and not Path(args.dst).is_dir():
        raise ConvertError(f"{args.dst} is an existing file; DST_DIR must be a folder (new or an earlier migrate's)")


_CHECKS = {"convert": _check_convert, "export": _check_export, "verify": _check_verify, "inspect": _check_inspect,
           "migrate": _check_migrate}
