"""Parser differentials (issue 21): which tools read a file the way torch.load does?

    python -m benchmarks.security.differentials          # prints the markdown table (README "Safety")

The samples come from tests/security/differentials.py (generated, deterministic): each runs a marker
payload under torch.load(weights_only=False) while Python's zipfile or a linear pickle reader sees a
benign pickle. Every tool looks at every sample in a throw-away child (benchmarks/security/compare.py:
same tools, same verdicts); a tool "catches" a sample when it refuses or flags it (for ckpt-convert
scan: unsafe or unreadable). The last column checks the payload really fires under torch.load.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.security.compare import CAUGHT, available_tools, verdict_in_child
from tests.security import differentials

LOAD = "import sys, torch\ntry:\n    torch.load(sys.argv[1], weights_only=False)\nexcept Exception:\n    pass\n"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="differentials-") as tmp:
        root = Path(tmp)
        markers = root / "markers"
        markers.mkdir()
        paths = differentials.build(root / "samples", markers)
        for path in paths.values():  # prove each payload is live: torch.load(weights_only=False) runs it
            subprocess.run([sys.executable, "-c", LOAD, str(path)], cwd=root, capture_output=True, timeout=120)
        fired = {p.name for p in markers.iterdir()}
        for child in markers.iterdir():
            child.unlink()
        tools = available_tools()
        rows = {name: {tool: verdict_in_child(func, path) for tool, func in tools.items()}
                for name, path in paths.items()}
    print("| sample | " + " | ".join(tools) + " | torch.load(weights_only=False) runs the payload |")
    print("|---|" + "---|" * (len(tools) + 1))
    for name, verdicts in rows.items():
        cells = [("**caught**" if v in CAUGHT else "missed") + f" ({v})" for v in verdicts.values()]
        print(f"| {name} | " + " | ".join(cells) + f" | {'yes' if name in fired else 'no'} |")
    caught = {tool: sum(rows[n][tool] in CAUGHT for n in rows) for tool in tools}
    print(f"| **caught (of {len(rows)})** | " + " | ".join(str(c) for c in caught.values()) + " | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
