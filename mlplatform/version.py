"""The package version, in a module of its own: ``lib/`` records it (audit rows, MLflow tags, reproduce) without
importing the package's face, ``mlplatform/__init__.py``, which hands on the Dagster component."""

__version__ = "0.1.0"
