"""Registry aliases: the names every part of the platform agrees on (no MLflow import, so workers stay light)."""

CHALLENGER = "challenger"
"""The newest version that passed every gate: ready for a person (or approval: auto) to promote."""

CHAMPION = "champion"
"""The version in production: what serving and the champion gate compare against."""
