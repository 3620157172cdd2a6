"""Command-line front end: `ckpt-convert` and `python -m convert`.

Exit codes: 0 success · 1 refused as unsafe (scan: an unsafe file) · 2 bad input or usage · 3 verify found differences
· 130 interrupted (SIGINT) · 143 terminated (SIGTERM). Every failure is one line on stderr; `--debug` shows the traceback
instead. SIGTERM ends a run as Ctrl-C does (temporary folders and locks removed); a stdout closed by the reader
(`| head`) is not an error: the rest of the output is dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import ENVIRONMENT_ERRNOS, OUT_OF_MEMORY, ConvertError, MissingDependency, failure_reason, out_of_memory
from ..primitives.signals import Terminated, sigterm_raises
from . import commands, hints, signing

EXIT_DIFFERENT = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_INTERNAL = 70  # EX_SOFTWARE (sysexits.h): a bug in ckpt-convert, not bad input
MIN_ADDRESS_SPACE = 128 << 20  # below this `ulimit -v`, importing numpy fails (or OpenBLAS ends the process)
TORCH_SIDE = {"torch"}  # what load/verify/inspect-folder/demo need beyond the lean install

DESCRIPTION = """\
Convert pickled PyTorch checkpoints (torch.save zip or legacy files, plain pickles) to
safetensors + a JSON sidecar without executing them, and load them back.

exit codes: 0 success, 1 refused as unsafe, 2 bad input or usage, 3 verify found differences,
70 internal error (a bug: please report it), 130 interrupted, 143 terminated
(scan: 0 safe or suspicious, 1 unsafe, 2 unreadable or nothing to scan; migrate: 1 some unsafe,
2 some failed, 3 both)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckpt-convert", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ckpt-convert {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("convert", help="convert a checkpoint file to a folder (safetensors + checkpoint.json)",
                       description="Convert SRC to the folder DST: one .safetensors per top-level state dict, "
                       "tensors.safetensors for the other tensors, checkpoint.json for everything else. "
                       "Nothing in SRC is executed; DST appears atomically.")
    p.add_argument("src", help="checkpoint file (.pt .pth .bin .pkl .tar .ckpt, any name), or a torch.distributed.checkpoint "
                   "folder (.metadata + *.distcp)")
    p.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it is an earlier ckpt-convert output "
                   "holding nothing else (never a folder of other files, the source's folder or the current folder)")
    p.add_argument("--max-shard-size", metavar="SIZE", help="split state dicts larger than SIZE (e.g. 5GB, 500MiB) into "
                   "NAME-00001-of-0000N.safetensors shards with a NAME.safetensors.index.json")
    p.add_argument("--sign-key", metavar="KEY", help="sign DST before it appears (model.sig, OpenSSF model-signing "
                   "format) with this PEM private key; needs pip install 'ckpt-convert[sign]'")
    p.add_argument("--salvage", action="store_true", help="convert a file that scan calls unsafe instead of refusing "
                   "it: every call that would run code becomes an inert record, listed in the sidecar (nothing runs)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=commands.convert)

    p = sub.add_parser("export", help="write a checkpoint's model weights as one plain model.safetensors (or HF shards)",
                       description="Export the model state dict of SRC (a checkpoint file, a torch.distributed.checkpoint "
                       "folder, a Trainer/Accelerate/HF folder with pytorch_model.bin, or a converted folder) as the "
                       "safetensors file OUT that "
                       "from_pretrained, timm, ComfyUI... load directly. Tied tensors are written once (the dropped names "
                       "are listed). Nothing in SRC is executed; OUT appears atomically; no torch needed.")
    p.add_argument("src", help="checkpoint file, DCP folder, Trainer/Accelerate/HF checkpoint folder, or converted folder")
    p.add_argument("out", help="OUT.safetensors (with --max-shard-size: a folder)")
    p.add_argument("--key", metavar="PATH", help="where the state dict is (state_dict, model_state_dict, ema, module, "
                   "model.ema, a/b); default: the root if it is one, else the first of state_dict, model_state_dict, "
                   "model_state, model, module, net, network, params, weights")
    p.add_argument("--strip-prefix", metavar="PREFIX", help="remove PREFIX from the names that start with it (e.g. model.)")
    p.add_argument("--add-prefix", metavar="PREFIX", help="put PREFIX before every name (after --strip-prefix)")
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="cast floating tensors (bit-exact with torch's .to)")
    p.add_argument("--max-shard-size", metavar="SIZE", help="write OUT as a folder of model-0000N-of-0000M.safetensors "
                   "shards of at most SIZE (e.g. 5GB) + model.safetensors.index.json")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if an earlier export wrote it (never anything else)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=commands.export)

    p = sub.add_parser("verify", help="check a converted folder: against its source, or on its own",
                       description="verify SRC DST: exit 0 iff DST loads to a tree equivalent to SRC (types, key "
                       "order, dtypes, bitwise values, aliasing). verify FOLDER: exit 0 iff every data file of "
                       "FOLDER has the sha256 and folder id its checkpoint.json records (no source needed). "
                       "Exit 3 and list the differences otherwise.")
    p.add_argument("src", metavar="SRC|FOLDER")
    p.add_argument("dst", nargs="?", metavar="DST")
    p.add_argument("--public-key", action="append", default=[], metavar="KEY", help="verify FOLDER: also check its "
                   "signature (model.sig) against this PEM public key (repeatable: any one may have signed); exit 3 if "
                   "unsigned or not exactly as signed")
    p.add_argument("--certificate-root", action="append", default=[], metavar="CERT",
                   help="like --public-key, for folders signed with a certificate that chains to CERT")
    p.set_defaults(run=commands.verify)

    p = sub.add_parser("sign", help="sign a converted folder (OpenSSF model-signing format, model.sig)",
                       description="Write FOLDER/model.sig: a signature over the sha256 of every file of FOLDER "
                       "(checkpoint.json included), made and checkable by the model-signing package. Needs pip install "
                       "'ckpt-convert[sign]'.")
    p.add_argument("folder", metavar="FOLDER")
    p.add_argument("--private-key", required=True, metavar="KEY", help="PEM elliptic-curve private key")
    p.add_argument("--signing-certificate", metavar="CERT", help="sign as this certificate (its key is --private-key)")
    p.add_argument("--certificate-chain", action="append", metavar="CERT", help="intermediate certificate (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=signing.sign)

    p = sub.add_parser("inspect", help="print the tree of a converted folder (or a checkpoint file)",
                       description="Print keys, dtypes, shapes, sizes and values of a converted folder, from its "
                       "sidecar alone; given a checkpoint file, read it safely and print the same.")
    p.add_argument("path")
    p.add_argument("--max-items", type=int, default=50, help="items shown per container (default 50)")
    p.set_defaults(run=commands.inspect)

    p = sub.add_parser("scan", help="say what a checkpoint would do if loaded: safe, suspicious or unsafe",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Read each file (or every checkpoint under a folder, in parallel) without executing "
                       "it and report what loading it with pickle/torch.load would do.\n"
                       "  safe        every global is one the allowlist reconstructs (plain state dicts, general "
                       "checkpoints)\n"
                       "  suspicious  classes outside the allowlist (whole-model pickles, custom classes): their code "
                       "runs on load\n"
                       "  unsafe      known gadgets: code execution, file writes/deletes, network, process control, "
                       "nested loaders\n"
                       "  unreadable  corrupt, truncated, a resource attack, or not a checkpoint\n"
                       "exit codes: 0 safe or suspicious, 1 unsafe (or suspicious with --fail-on suspicious), "
                       "2 unreadable, or no checkpoint under the paths given")
    p.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint files and folders")
    p.add_argument("--format", choices=("text", "json", "sarif"), default="text",
                   help="text (default), json (one object per file with its findings) or sarif (SARIF 2.1.0 for code "
                   "scanning, e.g. GitHub's upload-sarif)")
    p.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE instead of stdout")
    p.add_argument("--fail-on", choices=("unsafe", "suspicious"), default="unsafe",
                   help="the least verdict that exits 1 (default unsafe)")
    p.add_argument("--jobs", "-j", type=int, default=None, help="worker processes for many files (default: cores)")
    p.add_argument("--skip-non-checkpoints", action="store_true",
                   help="pass over given files whose first bytes are no checkpoint's, whatever their name (for the "
                   "by-content pre-commit hook)")
    p.add_argument("--allow", action="append", metavar="PATTERN",
                   help="your own classes, e.g. 'mylab.models.*': not suspicious (repeatable; also read from "
                   "./pyproject.toml [tool.ckpt-convert] allow = [...]); gadgets are never allowed")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar; text: only unsafe/suspicious/unreadable files")
    p.add_argument("--verbose", "-v", action="store_true", help="text: list every global, not only the findings")
    p.set_defaults(run=commands.scan)

    p = sub.add_parser("migrate", help="convert and verify every checkpoint under a folder (parallel, resumable)",
                       description="Find every checkpoint under SRC_DIR by content (torch zip, legacy, pickle; "
                       "Hugging Face model folders as a whole), convert each into the mirrored place under DST_DIR, "
                       "verify it against its source, and write DST_DIR/ckpt-convert-report.json. SRC_DIR is never "
                       "modified; DST_DIR must not be SRC_DIR nor contain it. Re-running skips what is done and "
                       "verified and retries what failed (the journal is DST_DIR/.ckpt-convert-journal.jsonl); one "
                       "migrate per DST_DIR at a time. `migrate --status DST_DIR` (or `migrate SRC_DIR DST_DIR --status`) "
                       "says what is done, failed and pending. Exit 1 if any file was refused as unsafe, 2 if any failed, "
                       "3 if both (bits: a gate on either sees it).")
    p.add_argument("src", metavar="SRC_DIR", nargs="?")
    p.add_argument("dst", metavar="DST_DIR", nargs="?")
    p.add_argument("--status", action="store_true",
                   help="print what the migration into DST_DIR has done, failed and left pending (pending: found "
                   "in SRC_DIR, default the journal's source, and not done yet); converts nothing")
    p.add_argument("--jobs", "-j", type=int, default=None, help="worker processes (default: number of cores)")
    p.add_argument("--max-shard-size", metavar="SIZE", help="shard state dicts larger than SIZE (e.g. 5GB)")
    p.add_argument("--sign-key", metavar="KEY", help="sign every converted folder (model.sig) with this PEM private key")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar; print only the summary")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the summary table")
    p.add_argument("--include", action="append", metavar="GLOB", help="take only checkpoints whose path under "
                   "SRC_DIR (or one of its folders) matches GLOB, e.g. '*.pt' or 'models/llama*' (repeatable)")
    p.add_argument("--exclude", action="append", metavar="GLOB", help="leave out checkpoints whose path under "
                   "SRC_DIR (or one of its folders) matches GLOB, e.g. 'scratch' (repeatable; wins over --include)")
    p.add_argument("--dry-run", action="store_true", help="print what would be converted, where to, what is a "
                   "unit and what is skipped and why; write nothing")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the conversions as Ray tasks: on a new local Ray instance, or on the cluster at ADDRESS "
                   "(e.g. ray://head:10001 or auto); needs pip install -e '.[ray]' and SRC/DST on shared storage")
    p.set_defaults(run=commands.migrate)

    p = sub.add_parser("demo", help="run the built-in example: tutorial checkpoints → convert → load → verify",
                       description="Write the PyTorch tutorial's checkpoint patterns (state_dict, general checkpoint, "
                       "several models, whole model, legacy format, numpy pickle) to a temporary folder, convert each, "
                       "load it back, verify it, and print a table.")
    p.add_argument("--keep", metavar="DIR", help="write into DIR and keep the files")
    p.set_defaults(run=commands.demo)
    return parser


def _drop_stdout() -> None:
    """The reader closed stdout (`| head`): send what is left to /dev/null, so the exit is quiet."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _closed_streams_to_devnull() -> None:
    """A standard stream the caller closed (`>&-`, a daemon's empty fd table) leaves Python's sys.stdout None:
    put /dev/null there, so output is dropped rather than failing, and no file this run opens takes fd 0-2."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        if getattr(sys, name) is not None:
            continue
        with contextlib.suppress(OSError):
            try:
                os.fstat(fd)
            except OSError:
                devnull = os.open(os.devnull, os.O_RDWR)
                if devnull != fd:
                    os.dup2(devnull, fd)
                    os.close(devnull)
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 - the process's own stream


def _address_space_too_small() -> bool:
    """Under an address-space limit (`ulimit -v`): hold OpenBLAS to one thread's buffer (ckpt-convert does no
    BLAS math; OpenBLAS reserves a buffer per core when numpy is imported and, refused, ends the process with
    exit 1), and say whether the limit is below what the interpreter needs to import numpy at all."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError):
        return False
    if soft == resource.RLIM_INFINITY:
        return False
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    return soft < MIN_ADDRESS_SPACE


def main(argv: Sequence[str] | None = None) -> int:
    _closed_streams_to_devnull()
    if _address_space_too_small():
        print(f"ckpt-convert: error: out of memory: ulimit -v is below the {MIN_ADDRESS_SPACE >> 20} MiB "
              "ckpt-convert needs to start; raise the limit and retry", file=sys.stderr)
        return 2
    try:
        os.getcwd()
    except FileNotFoundError:
        print("ckpt-convert: error: the current folder no longer exists (it was removed while this shell was in it): "
              "cd to an existing folder and retry", file=sys.stderr)
        return 2
    with sigterm_raises(Terminated):
        code = _main(argv)
        try:
            sys.stdout.flush()  # here, not at exit: a closed pipe is then handled like the others
        except BrokenPipeError:
            _drop_stdout()
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        hints.precheck(args)  # before any heavy import: a wrong path is said at once
        return int(args.run(args) or 0)
    except ConvertError as exc:
        if args.debug:
            raise
        print(f"ckpt-convert: {exc.label}: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # stdout closed by its reader after the work was done: not a failure
        _drop_stdout()
        return 0
    except OSError as exc:  # the user's environment (disk full, permissions...) wherever it surfaced: not a bug
        if args.debug:
            raise
        if not out_of_memory(exc) and exc.errno not in ENVIRONMENT_ERRNOS:
            return _internal_error(exc)
        print(f"ckpt-convert: {failure_reason(exc)}", file=sys.stderr)  # the wording migrate's jobs report too
        return 2
    except Terminated:
        print("ckpt-convert: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("ckpt-convert: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        if args.debug:
            raise
        print(f"ckpt-convert: error: {OUT_OF_MEMORY}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if args.debug:
            raise
        if exc.name not in TORCH_SIDE:  # torch is optional: scan/convert run without it
            return _internal_error(exc)
        print(f"ckpt-convert: error: {MissingDependency(repr(args.command))}", file=sys.stderr)
        return 2
    except ImportError as exc:  # a library's mapping refused by the address-space limit (`ulimit -v`)
        if args.debug or not out_of_memory(exc):
            if args.debug:
                raise
            return _internal_error(exc)
        print(f"ckpt-convert: error: {OUT_OF_MEMORY}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not bad input: still one line, and how to see more
        if args.debug:
            raise
        return _internal_error(exc)


def _internal_error(exc: BaseException) -> int:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    print(f"ckpt-convert: internal error: {type(exc).__name__}: {first} (rerun with --debug for details)",
          file=sys.stderr)
    return EXIT_INTERNAL
