"""One function per CLI command; each returns its exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..api import convert_checkpoint, scan_checkpoint, verify_checkpoint
from ..errors import ConvertError, NotACheckpoint
from .render import human_bytes, plain_shapes, render_tree

EXIT_DIFFERENT = 3


def convert(args: argparse.Namespace) -> int:
    report = convert_checkpoint(args.src, args.dst, overwrite=args.overwrite, max_shard_size=args.max_shard_size)
    if not args.quiet:
        files = ", ".join(f"{name} ({info['tensors']})" for name, info in report.files.items()) or "no tensors"
        print(f"converted {report.source} ({report.source_format}) → {report.destination}: {report.tensors} tensors, "
              f"{human_bytes(report.bytes)} in {files}")
        for cls in report.modules:
            print(f"  module {cls} stored as its state_dict")
    return 0


def verify(args: argparse.Namespace) -> int:
    diffs = verify_checkpoint(args.src, args.dst)
    if diffs:
        print(f"{args.dst} is NOT equivalent to {args.src}:")
        for d in diffs:
            print(f"  {d}")
        return EXIT_DIFFERENT
    print(f"{args.dst} is equivalent to {args.src}")
    return 0


def inspect(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        from ..load import read_sidecar
        from ..load.safetensors_reader import SafetensorsFile

        sidecar = read_sidecar(path)
        headers = {}
        for name in sidecar.get("entries", {}):
            if name in sidecar["files"] and (path / name).is_file():
                entries = SafetensorsFile(path / name).entries
                headers[name] = {key: (e.code, list(e.shape)) for key, e in entries.items()}
    else:
        from ..api import plan_in_memory

        plan = plan_in_memory(path)
        sidecar = plan.sidecar
        headers = {name: {e.key: (e.code, e.shape) for e in entries} for name, entries in plan.files.items()}
    print(render_tree(sidecar, args.max_items, plain_shapes(sidecar, headers)))
    return 0


def _files(paths: list[str]) -> list[tuple[Path, bool]]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            for root, dirs, names in os.walk(p):
                dirs.sort()
                out += [(Path(root) / n, True) for n in sorted(names)]
        else:
            out.append((p, False))
    return out


def migrate(args: argparse.Namespace) -> int:
    from ..migrate import migrate as run_migrate

    if args.jobs is not None and args.jobs < 1:
        raise ConvertError("--jobs must be at least 1")
    submit = None
    if args.ray:
        from ..migrate.ray_runner import ray_submit

        submit = ray_submit(None if args.ray == "local" else args.ray)
    report = run_migrate(args.src, args.dst, jobs=args.jobs, quiet=args.quiet or args.json,
                         max_shard_size=args.max_shard_size, submit=submit)
    print(json.dumps(report.to_json(), indent=1) if args.json else report.table())
    return report.exit_code


def scan(args: argparse.Namespace) -> int:
    """Exit 1 if any file is unsafe, else 2 if any could not be read, else 0.

    A folder is scanned with the migration walker and reported in the migration report's format.
    """
    from ..migrate import scan_folder

    codes = {0}
    folders = [p for p in args.paths if Path(p).is_dir()]
    for folder in folders:
        report = scan_folder(folder)
        print(report.table())
        if args.verbose:
            for rel, entry in sorted(report.files.items()):
                print(f"  {entry['status']:8} {rel}")
        codes.add(report.exit_code)
    for path, from_folder in _files([p for p in args.paths if not Path(p).is_dir()]):
        try:
            report = scan_checkpoint(path)
        except NotACheckpoint as exc:
            if from_folder:  # a folder may hold READMEs and configs: not our business
                print(f"{path}: skipped (not a checkpoint)")
            else:
                print(f"{path}: {exc.label}: {exc}")
                codes.add(exc.exit_code)
            continue
        except ConvertError as exc:
            print(f"{path}: {exc.label}: {exc}")
            codes.add(exc.exit_code)
            continue
        if report.unsafe:
            print(f"{path}: UNSAFE ({report.format}): " + "; ".join(str(f) for f in report.unsafe))
            codes.add(1)
        else:
            print(f"{path}: ok ({report.format}, {len(report.globals)} globals, none unsafe)")
        if args.verbose:
            for name in report.globals:
                print(f"    {name}")
    return 1 if 1 in codes else max(codes)


def demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.keep, out=sys.stdout)
