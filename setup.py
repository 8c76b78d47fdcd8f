"""Packaging for mlplatform. Exact tested versions live in requirements.lock; these are the compatible ranges."""

from setuptools import find_packages, setup

setup(
    name="mlplatform",
    version="0.1.0",
    description="Declarative tabular-model lifecycles (data, training, gates, drift, serving) as Dagster assets",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.13",
    # The bundled dbt project ships inside the wheel as mlplatform/dbt_project (package data, no code): the bundled
    # examples stage through it. A team's own project is MLPLATFORM_DBT_PROJECT_DIR; a team that stages nothing
    # needs none. Its manifest is written under MLPLATFORM_HOME, never into site-packages.
    packages=[*find_packages(include=["mlplatform", "mlplatform.*"]), "mlplatform.dbt_project"],
    package_dir={"mlplatform.dbt_project": "dbt_project"},
    package_data={
        "mlplatform": ["examples/*.yaml", "examples/data/*", "examples/demo/*.yaml"],
        "mlplatform.dbt_project": ["dbt_project.yml", "profiles.yml", "models/*/*.sql", "models/*/*.yml",
                                   "macros/*.sql"],
    },
    install_requires=[
        "dagster==1.13.27",
        "dagster-webserver==1.13.27",
        "dagster-dbt==0.29.27",
        "dagster-pandera==0.29.27",
        "dagster-duckdb==0.29.27",
        "dagster-duckdb-pandas==0.29.27",
        # dbt-core 1.12 needs a parser whose build downloads a binary from outside PyPI: keep below it.
        "dbt-core>=1.11.16,<1.12",
        "dbt-duckdb==1.11.1",
        "duckdb==2.0.0",
        "mlflow==3.17.2",
        "evidently==0.7.23",
        "pandera==0.35.0",
        # evidently 0.7.23 does not import on pandas 3; dagster-pandera declares pandas<3.
        "pandas>=2.3,<3",
        "numpy>=2,<2.5",
        "scikit-learn==1.9.1",
        "scipy>=1.13",
        "pyarrow>=17",
        "pydantic>=2.7,<3",
        "pyyaml>=6",
        "fastapi==0.165.0",
        "uvicorn==0.54.0",
        "prometheus-client==0.26.0",
        "fairlearn==0.15.0",
        # 0.51.0 is the last release for Python 3.11 (0.52+ need 3.12); TreeExplainer for tree models.
        "shap==0.51.0",
        # renders the model cards' Markdown as HTML (tables extension)
        "markdown>=3.5,<4",
        "httpx==0.28.1",
        # `dg` for the ModelLifecycle component (scaffold, check yaml, list defs).
        "dagster-dg-cli==1.13.27",
    ],
    extras_require={"dev": ["pytest>=8", "pytest-xdist>=3", "ruff>=0.6", "hypothesis>=6"]},
    entry_points={
        "console_scripts": ["mlplatform=mlplatform.cli:main"],
        # `dg` finds the ModelLifecycle component here (dg list components / scaffold defs mlplatform.ModelLifecycle).
        "dagster_dg_cli.registry_modules": ["mlplatform = mlplatform"],
    },
)
