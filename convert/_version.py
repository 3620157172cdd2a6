"""The package version, in one place: pyproject.toml reads it (dynamic version), the code imports it."""

__version__ = "0.2.0"
