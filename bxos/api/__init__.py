"""The vendor API: clients, scopes, field profiles, change feed and the disclosure log."""
