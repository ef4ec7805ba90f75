"""The command line's client commands: they talk to a running server over its HTTP API, like any client.

Every command takes `--url` (or SWITCHYARD_URL), `--token` (or SWITCHYARD_SECURITY__ADMIN_TOKEN) and `--json`, and
exits with a code scripts can rely on (`common.EXIT_*`).
"""
