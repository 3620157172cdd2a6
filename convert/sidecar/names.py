"""The sidecar's file name and format name, importable without the schema and its validator (the CLI's hints
need only these)."""

SIDECAR_NAME = "checkpoint.json"
FORMAT_NAME = "ckpt-convert"  # the sidecar's "format", its first key
