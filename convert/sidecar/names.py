"""The sidecar's file name, importable without the schema and its validator (the CLI's hints need only it)."""

SIDECAR_NAME = "checkpoint.json"
