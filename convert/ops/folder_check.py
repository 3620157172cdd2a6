"""What `verify_folder` returns: a report that reads naturally in an `if` (true when the folder is intact)
and still iterates, indexes and compares (`== []`) like the list of problems it used to be."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, eq=False)
class FolderCheck:
    folder: Path
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Every data file has the digest, size and folder id checkpoint.json records."""
        return not self.problems

    def __bool__(self) -> bool:  # `if verify_folder(path):` means "if it is intact"
        return self.ok

    def __iter__(self) -> Iterator[str]:
        return iter(self.problems)

    def __len__(self) -> int:
        return len(self.problems)

    def __getitem__(self, index: int) -> str:
        return self.problems[index]

    def __eq__(self, other: object) -> bool:  # `verify_folder(p) == []`, as when it returned a list
        if isinstance(other, FolderCheck):
            return (self.folder, self.problems) == (other.folder, other.problems)
        if isinstance(other, list | tuple):
            return list(self.problems) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compares equal to lists: not hashable either

    def __repr__(self) -> str:
        return f"FolderCheck({str(self.folder)!r}, ok={self.ok}, problems={list(self.problems)!r})"
