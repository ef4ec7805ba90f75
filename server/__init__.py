"""The HTTP gateway: app factory, endpoints, schemas, settings, and the services that compose
`routers/` (routing policies) with `experts/` (registry and backends)."""
