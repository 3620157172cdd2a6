"""Start-up and small-file conversion time with and without torch on the path (issue 14)."""
