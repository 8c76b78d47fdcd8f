"""The platform's Dagster code location: the :class:`~mlplatform.component.ModelLifecycle` component applied to
every spec file in ``MLPLATFORM_SPECS`` (default: the bundled examples).

A bad spec raises :class:`mlplatform.specs.SpecError` here, so the location does not load and the UI shows
every problem, one line each.
"""

from __future__ import annotations

import sys

from dagster import Definitions

from mlplatform.component import ModelLifecycle, platform_settings
from mlplatform.defs.dbt_project import dbt_columns
from mlplatform.specs import SpecError, load_specs


def build_definitions() -> Definitions:
    settings = platform_settings()
    try:
        specs = load_specs(settings.specs_dir, dbt_columns(settings))
    except SpecError as error:  # the list first and briefly: Dagster prints its traceback before the message
        print(error, file=sys.stderr, flush=True)
        raise
    from mlplatform.defs.alerts_sensor import alerts_definitions

    return Definitions.merge(*(ModelLifecycle(spec).build_defs() for spec in specs), alerts_definitions(specs, settings))


defs = build_definitions()
