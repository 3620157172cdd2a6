"""Command-line front end: `ckpt-convert` and `python -m convert`.

Exit codes: 0 success · 1 refused as unsafe · 2 bad input or usage · 3 verify found differences.
Every failure is one line on stderr; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import ConvertError
from . import commands

EXIT_DIFFERENT = 3
TORCH_SIDE = {"torch"}  # what load/verify/inspect-folder/demo need beyond the lean install

DESCRIPTION = """\
Convert pickled PyTorch checkpoints (torch.save zip or legacy files, plain pickles) to
safetensors + a JSON sidecar without executing them, and load them back.

exit codes: 0 success, 1 refused as unsafe, 2 bad input or usage, 3 verify found differences"""


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
    p.add_argument("src", help="checkpoint file (.pt .pth .bin .pkl .tar .ckpt, any name)")
    p.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--max-shard-size", metavar="SIZE", help="split state dicts larger than SIZE (e.g. 5GB, 500MiB) into "
                   "NAME-00001-of-0000N.safetensors shards with a NAME.safetensors.index.json")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=commands.convert)

    p = sub.add_parser("verify", help="check that a converted folder is equivalent to its source",
                       description="Exit 0 iff DST loads to a tree equivalent to SRC (types, key order, dtypes, "
                       "bitwise values, aliasing); exit 3 and list the differences otherwise.")
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(run=commands.verify)

    p = sub.add_parser("inspect", help="print the tree of a converted folder (or a checkpoint file)",
                       description="Print keys, dtypes, shapes, sizes and values of a converted folder, from its "
                       "sidecar alone; given a checkpoint file, read it safely and print the same.")
    p.add_argument("path")
    p.add_argument("--max-items", type=int, default=50, help="items shown per container (default 50)")
    p.set_defaults(run=commands.inspect)

    p = sub.add_parser("scan", help="report the globals a checkpoint names and any code-execution gadgets",
                       description="Read each file (or every file under a folder) without executing it and report "
                       "what it would import or call. Exit 1 if any file is unsafe, 2 if any cannot be read.")
    p.add_argument("paths", nargs="+")
    p.add_argument("--verbose", "-v", action="store_true", help="list every global, not only the unsafe ones")
    p.set_defaults(run=commands.scan)

    p = sub.add_parser("migrate", help="convert and verify every checkpoint under a folder (parallel, resumable)",
                       description="Find every checkpoint under SRC_DIR by content (torch zip, legacy, pickle; "
                       "Hugging Face model folders as a whole), convert each into the mirrored place under DST_DIR, "
                       "verify it against its source, and write DST_DIR/ckpt-convert-report.json. SRC_DIR is never "
                       "modified. Re-running skips what is done and verified and retries what failed (the manifest "
                       "is DST_DIR/.ckpt-convert-manifest.json). Exit 1 if any file was refused as unsafe, 2 if any failed.")
    p.add_argument("src", metavar="SRC_DIR")
    p.add_argument("dst", metavar="DST_DIR")
    p.add_argument("--jobs", "-j", type=int, default=None, help="worker processes (default: number of cores)")
    p.add_argument("--max-shard-size", metavar="SIZE", help="shard state dicts larger than SIZE (e.g. 5GB)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar; print only the summary")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the summary table")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ConvertError as exc:
        if args.debug:
            raise
        print(f"ckpt-convert: {exc.label}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ckpt-convert: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        if args.debug or exc.name not in TORCH_SIDE:  # torch is optional: scan/convert run without it
            raise
        print(f"ckpt-convert: error: '{args.command}' needs {exc.name}, which is not installed: "
              "pip install 'ckpt-convert[torch]' (scan and convert work without it)", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not bad input: still one line, and how to see more
        if args.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"ckpt-convert: internal error: {type(exc).__name__}: {first} (rerun with --debug for details)",
              file=sys.stderr)
        return 2
