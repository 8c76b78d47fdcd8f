"""Model specs: the bottom layer of the package.

The schema (:mod:`.schema`), what each task means (:mod:`.tasks`), a data file's header
(:mod:`.files`) and the loader with its checks (:mod:`.loader`). Nothing here imports
``mlplatform.lib`` or Dagster: ``lib/`` builds on specs, the Dagster wiring on both.
"""

from mlplatform.specs.loader import (
    DbtColumns,
    DbtProjectUnavailable,
    check_spec,
    dbt_manifest_columns,
    declared_names,
    load_spec_file,
    load_spec_named,
    load_spec_set,
    load_specs,
    load_usable_specs,
    skipped_specs_warning,
)
from mlplatform.specs.schema import ModelSpec, SpecError, SpecProblem
from mlplatform.specs.tasks import TASKS
from mlplatform.specs.teams import SpecLoad

__all__ = ["DbtColumns", "DbtProjectUnavailable", "ModelSpec", "check_spec", "SpecError", "SpecProblem", "TASKS", "dbt_manifest_columns",
           "declared_names", "load_spec_file", "load_spec_named", "load_spec_set", "load_specs",
           "load_usable_specs", "skipped_specs_warning", "SpecLoad"]
