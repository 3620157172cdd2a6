#!/usr/bin/env bash
# Install the built wheel (never the checkout) into a fresh venv of the given interpreter and run every
# CLI command from a folder outside the checkout, so the source tree cannot be imported by accident.
#   .ci/wheel_smoke.sh PYTHON VENV_DIR WHEEL [TEST_FILES...]
# With TEST_FILES, also runs those tests (from the checkout, on this interpreter).
set -euo pipefail
py=$1 venv=$2 wheel=$3
shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$venv"
"$py" -m venv "$venv"
# torch first, pinned (an unpinned torch pulls a multi-GB CUDA build where a CPU file is at hand)
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q "$wheel[torch]" pytest hypothesis  # what the smoke and the fast subset need
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
bin="$venv/bin"
"$bin/python" - <<'PY'
import sysconfig, convert
site = sysconfig.get_paths()["purelib"]
assert convert.__file__.startswith(site), f"convert imported from {convert.__file__}, not from {site}"
print("convert imported from", convert.__file__)
PY
"$bin/python" -m convert --version
"$bin/ckpt-convert" demo
# A small zoo: two checkpoints, a plain pickle, and one malicious file that must be refused.
"$bin/python" - <<'PY'
import os, pickle, torch
os.makedirs("zoo/sub", exist_ok=True)
torch.save({"w": torch.arange(6.0).reshape(2, 3)}, "zoo/model.pt")
torch.save({"epoch": 3, "model_state_dict": {"b": torch.ones(2)}, "loss": 0.5}, "zoo/sub/ckpt.pth")
with open("zoo/sub/numbers.pkl", "wb") as f:
    pickle.dump({"lr": 0.1, "steps": [1, 2, 3]}, f)
class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))
with open("zoo/evil.pkl", "wb") as f:
    pickle.dump(Evil(), f)
PY
"$bin/ckpt-convert" convert zoo/model.pt out/model
"$bin/ckpt-convert" verify zoo/model.pt out/model
"$bin/ckpt-convert" inspect out/model > /dev/null
"$bin/ckpt-convert" scan zoo/model.pt
set +e
"$bin/ckpt-convert" scan zoo; scan_rc=$?
"$bin/ckpt-convert" migrate zoo migrated -q; migrate_rc=$?
set -e
[ "$scan_rc" = 1 ] || { echo "scan of the zoo should exit 1 (one unsafe file), got $scan_rc"; exit 1; }
[ "$migrate_rc" = 1 ] || { echo "migrate of the zoo should exit 1 (one refused file), got $migrate_rc"; exit 1; }
[ ! -e pwned.txt ] || { echo "the malicious pickle ran"; exit 1; }
for out in migrated/model.pt migrated/sub/ckpt.pth migrated/sub/numbers.pkl; do  # stable names: the file name kept
  [ -f "$out/checkpoint.json" ] || { echo "migrate did not write $out"; exit 1; }
done
echo "wheel smoke on $("$bin/python" --version): ok"
if [ "$#" -gt 0 ]; then
  cd "$repo"
  "$bin/python" -m pytest -q -p no:cacheprovider "$@"
fi
