"""Observability: Prometheus metrics, and the recent activity the console shows."""
