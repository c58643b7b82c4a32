"""Metrics, health checks, alert rules and dashboards for integrations and deliveries."""
