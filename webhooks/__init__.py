"""Webhooks: event catalogue, endpoints, outbox deliveries and signing (issue #4).

An edge app: it subscribes to domain events in the same transaction (the outbox).
"""
