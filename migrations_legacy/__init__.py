"""Bulk import, export, ETL and legacy-system migration projects (app label ``legacy``)."""
