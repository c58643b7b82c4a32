"""Connector types: one module per protocol, registered by name in ``registry``."""
