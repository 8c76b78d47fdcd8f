"""mlplatform: declarative tabular-model lifecycles as Dagster software-defined assets."""

__version__ = "0.1.0"
