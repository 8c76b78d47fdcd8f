"""mlplatform: declarative tabular-model lifecycles as Dagster software-defined assets."""

from mlplatform.import_path import spec_folder_off_import_path

spec_folder_off_import_path()  # first: before any import of ours can pick up a module beside the specs

from mlplatform.version import __version__  # noqa: E402, F401  (mlplatform.__version__)


def __getattr__(name: str):
    """``mlplatform.ModelLifecycle`` (the Dagster component) without importing Dagster for ``import mlplatform``."""
    if name == "ModelLifecycle":
        from mlplatform.component import ModelLifecycle

        return ModelLifecycle
    raise AttributeError(f"module 'mlplatform' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "ModelLifecycle"])
