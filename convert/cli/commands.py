"""One function per CLI command; each returns its exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import ConvertError
from ..model.sizes import human_bytes

EXIT_DIFFERENT = 3
SHOWN_FILES = 6  # data files named on convert's summary line (1500 shards made it one 60 kB line)


def convert(args: argparse.Namespace) -> int:
    from ..api import convert_checkpoint  # per command: `scan` never loads the writer

    report = convert_checkpoint(args.src, args.dst, overwrite=args.overwrite, max_shard_size=args.max_shard_size,
                                sign=args.sign_key, salvage=args.salvage)
    if not args.quiet:
        shown = [f"{name} ({info['tensors']})" for name, info in list(report.files.items())[:SHOWN_FILES]]
        more = len(report.files) - len(shown)
        files = ", ".join(shown + ([f"and {more} more files"] if more else [])) or "no tensors"
        print(f"converted {report.source} ({report.source_format}) → {report.destination}: {report.tensors} tensors, "
              f"{human_bytes(report.bytes)} in {files}")
        if report.copied:
            print(f"  copied {len(report.copied)} file(s) as they are: {', '.join(report.copied[:10])}")
        for rel, reason in report.skipped:
            print(f"  skipped {rel}: {reason}")
        for cls in report.modules:
            print(f"  module {cls} stored as its state_dict")
    return 0


def export(args: argparse.Namespace) -> int:
    from ..export import export_weights

    report = export_weights(args.src, args.out, key=args.key, strip_prefix=args.strip_prefix, add_prefix=args.add_prefix,
                            dtype=args.dtype, max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    if not args.quiet:
        where = f" [{report.key}]" if report.key else ""
        cast = f", {report.cast} cast to {args.dtype}" if report.cast else ""
        print(f"exported {report.source}{where} → {report.destination}: {report.tensors} tensors, "
              f"{human_bytes(report.bytes)} in {len(report.files)} file(s){cast}")
        for name, kept in report.dropped.items():
            print(f"  tied: {name} not written (shares {kept}'s storage; loaders re-tie it)")
        if report.skipped:
            print(f"  not tensors, left out: {', '.join(report.skipped[:20])}"
                  + (f" and {len(report.skipped) - 20} more" if len(report.skipped) > 20 else ""))
    return 0


def verify(args: argparse.Namespace) -> int:
    if args.dst is None:
        if args.public_key or args.certificate_root:  # the signature first: a folder not as signed is not looked into
            from .signing import verify_signed

            verify_signed(Path(args.src), args.public_key, args.certificate_root)
        return verify_folder_only(Path(args.src))
    if args.public_key or args.certificate_root:
        raise ConvertError("--public-key/--certificate-root check a folder on its own: verify FOLDER --public-key KEY")
    from ..api import verify_checkpoint

    return _verdict(verify_checkpoint(args.src, args.dst), f"{args.dst} is NOT equivalent to {args.src}:",
                    f"{args.dst} is equivalent to {args.src}")


def verify_folder_only(folder: Path) -> int:
    from ..ops.verify import verify_folder

    return _verdict(list(verify_folder(folder)), f"{folder} is NOT intact:",
                    f"{folder} is intact: every data file has the digest and folder id checkpoint.json records")


def _verdict(problems: list[str], bad: str, good: str) -> int:
    """Print what verify found; exit 3 (EXIT_DIFFERENT) if anything, else 0."""
    if problems:
        print(bad)
        for problem in problems:
            print(f"  {problem}")
        return EXIT_DIFFERENT
    print(good)
    return 0


def inspect(args: argparse.Namespace) -> int:
    from ..ops.checkpoint import kind_of

    path = Path(args.path)
    from .safetensors_view import is_safetensors_file, render_safetensors

    if is_safetensors_file(path):  # a plain safetensors file: its header, not a conversion
        print(render_safetensors(path, args.max_items))
        return 0
    kind = kind_of(path)
    if kind == "framework":  # a Trainer/Accelerate folder: each checkpoint in it
        from ..sources.discover import unit_sources

        for member in unit_sources(kind, path, path):
            print(f"{member.relative_to(path)}:")
            _inspect_one(member, args.max_items)
        return 0
    if path.is_dir() and kind == "file":  # a converted folder (a DCP or HF folder is read like a file)
        from ..sidecar.safetensors_file import SafetensorsFile  # torch-free: a folder is inspected from headers
        from ..sidecar.schema import read_sidecar

        sidecar = read_sidecar(path)
        headers = {}
        for name in sidecar.get("entries", {}):
            if name in sidecar["files"] and (path / name).is_file():
                entries = SafetensorsFile(path / name).entries
                headers[name] = {key: (e.code, list(e.shape)) for key, e in entries.items()}
        from .render import plain_shapes, render_tree

        print(render_tree(sidecar, args.max_items, plain_shapes(sidecar, headers)))
    else:
        _inspect_one(path, args.max_items)
    return 0


def _inspect_one(path: Path, max_items: int) -> None:
    """The tree of the checkpoint `path` (a file, a DCP or HF folder), read without writing anything."""
    from ..ops.checkpoint import plan_in_memory

    plan = plan_in_memory(path)
    sidecar = dict(plan.sidecar, converter=None)  # read, not converted: no "converted by" line
    headers = {name: {e.key: (e.code, e.shape) for e in entries} for name, entries in plan.files.items()}
    from .render import plain_shapes, render_tree

    print(render_tree(sidecar, max_items, plain_shapes(sidecar, headers)))


def migrate_status(args: argparse.Namespace) -> int:
    from ..migrate import migrate_status as status_of

    given = [p for p in (args.src, args.dst) if p]
    src, dst = (None, given[0]) if len(given) == 1 else (given[0], given[1])
    status = status_of(dst, src)
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    pending = status["pending"]
    print(f"migrate status: {status['destination']}" + (f" (source {status['source']})" if status["source"] else ""))
    print(f"  done      {status['done']}")
    print(f"  failed    {status['failed']}")
    print(f"  unsafe    {status['unsafe']}")
    print(f"  pending   {pending if pending is not None else 'unknown (source not found: give SRC_DIR)'}")
    if status["running_pid"] is not None:
        print(f"  running   yes (pid {status['running_pid']})")
    if status["dropped_lines"]:
        print(f"  warning   {status['dropped_lines']} unreadable journal line(s) dropped")
    for problem in status["failed_files"]:
        print(f"  {problem['status'].upper():8} {problem['file']}: {problem['reason']}")
    return 0


def migrate(args: argparse.Namespace) -> int:
    from ..migrate import migrate as run_migrate

    if args.status:
        if not args.src:
            raise ConvertError("migrate --status needs DST_DIR")
        return migrate_status(args)
    if not args.src or not args.dst:
        raise ConvertError("migrate needs SRC_DIR and DST_DIR (or --status DST_DIR)")
    if args.jobs is not None and args.jobs < 1:
        raise ConvertError("--jobs must be at least 1")
    from ..migrate.select import dry_run, selector

    select = selector(args.include, args.exclude)
    if args.dry_run:
        plan = dry_run(args.src, args.dst, select)
        print(json.dumps(plan.to_json(), indent=1) if args.json else plan.table())
        return 0
    submit = None
    if args.ray:
        from ..migrate.ray_runner import ray_submit

        submit = ray_submit(None if args.ray == "local" else args.ray)
    report = run_migrate(args.src, args.dst, jobs=args.jobs, quiet=args.quiet or args.json,
                         max_shard_size=args.max_shard_size, submit=submit, select=select, sign_key=args.sign_key)
    for note in report.notes:
        print(f"ckpt-convert: warning: {note}", file=sys.stderr)
    print(json.dumps(report.to_json(), indent=1) if args.json else report.table())
    return report.exit_code


def scan(args: argparse.Namespace) -> int:
    """Exit 1 if any file is unsafe (or suspicious with --fail-on suspicious), else 2 if any is unreadable, else 0."""
    from ..scan import allow, batch, output

    allowed = allow.patterns(args.allow, Path.cwd())  # a bad pattern is said before anything is scanned
    if args.jobs is not None and args.jobs < 1:
        raise ConvertError("--jobs must be at least 1")
    missing = [p for p in args.paths if not os.path.lexists(p)]
    if missing:
        raise ConvertError(f"{missing[0]}: no such file or folder")
    selection = batch.select(args.paths, skip_non_checkpoints=args.skip_non_checkpoints)
    skipped = len(selection.skipped) + selection.others  # a README.txt passed over is skipped too
    if args.output:
        _report_replaces_no_checkpoint(Path(args.output), selection.files)
    if not selection.files and not selection.skipped:  # (files passed over by --skip-non-checkpoints: a clean pass)
        return nothing_to_scan(args, skipped)
    show_progress = args.format == "text" and not args.quiet and not args.output and sys.stderr.isatty()
    reports = [allow.apply(r, allowed) for r in batch.scan_many(selection.files, jobs=args.jobs, progress=show_progress)]
    code = output.exit_code(reports, args.fail_on)
    if args.format == "json":
        text = json.dumps(output.to_json(reports, skipped=skipped, fail_on=args.fail_on), indent=1)
    elif args.format == "sarif":
        text = json.dumps(output.to_sarif(reports), indent=1)
    else:
        shown = [r for r in reports if not (args.quiet and r.verdict == "safe")]
        lines = [output.render_text(r, args.verbose) for r in shown]
        if len(reports) != 1 or skipped or args.quiet:
            lines.append(output.render_summary(reports, skipped))
        text = "\n".join(lines)
    if args.output:
        try:
            Path(args.output).write_text(text + "\n")
        except OSError as exc:
            raise ConvertError(f"{args.output}: cannot write the report ({exc.strerror})") from None
    else:
        print(text)
    return code


def _report_replaces_no_checkpoint(output: Path, scanned: list) -> None:
    """`scan a.pt -o a.pt` would replace the checkpoint with its report: refuse a scanned file or any checkpoint."""
    from ..sources.discover import looks_like_checkpoint

    if not output.exists() or output.is_dir():
        return  # a new report (a folder is said when the report is written)
    real = os.path.realpath(output)
    if any(os.path.realpath(path) == real for path in scanned) or looks_like_checkpoint(Path(real)):
        raise ConvertError(f"{output} is a checkpoint; refusing to write the report over it: "
                           "choose another report file (-o)")


def nothing_to_scan(args: argparse.Namespace, skipped: int) -> int:
    """No checkpoint under the paths given: said plainly, exit 2 (a gate must not pass on an empty or wrong path)."""
    what = f"{skipped} other file{'' if skipped == 1 else 's'}" if skipped else "no files"
    raise ConvertError(f"nothing to scan: no checkpoint found under {' '.join(map(str, args.paths))} ({what}); "
                       "scan looks for .pt .pth .bin .ckpt .pkl ... files and checkpoint folders")


def demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.keep, out=sys.stdout)
