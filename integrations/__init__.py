"""Integration engine: connectors, mappings, sync definitions and runs, identity matching.

Arrives with the integration engine issue (#5). An edge app: it meets the domain through
services and domain events, never the other way round.
"""
