"""Dagster wiring over :mod:`mlplatform.lib`: asset factories, checks, resources."""
