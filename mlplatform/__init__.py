"""mlplatform: declarative tabular-model lifecycles as Dagster software-defined assets."""

from mlplatform.version import __version__  # noqa: F401  (mlplatform.__version__)


def __getattr__(name: str):
    """``mlplatform.ModelLifecycle`` (the Dagster component) without importing Dagster for ``import mlplatform``."""
    if name == "ModelLifecycle":
        from mlplatform.component import ModelLifecycle

        return ModelLifecycle
    raise AttributeError(f"module 'mlplatform' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "ModelLifecycle"])
