"""The `sbx` command: server, admin, sandbox."""
