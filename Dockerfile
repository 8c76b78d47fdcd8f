# One image for every mlplatform process on Kubernetes (docs/deployment.md):
#   dagster-webserver / dagster-daemon   the Dagster chart runs them with this image (deploy/helm/dagster-values.yaml)
#   dagster code-server start -m mlplatform.definitions   the code location (a user deployment of the chart)
#   dagster api execute_run              each run's pod, launched by the K8sRunLauncher from the code server's image
#   mlplatform serve                     the REST service (deploy/k8s/serving.yaml), the default command below
#   mlflow server / mlflow db upgrade    the tracking server and its migration Job (deploy/k8s/mlflow.yaml): the same
#                                        MLflow version as the clients
# Build:  docker build --build-arg MLPLATFORM_CODE_VERSION="mlplatform 0.1.0 @ $(git rev-parse --short=12 HEAD)" \
#           -t registry.example.com/mlplatform:0.1.0 .
# The exact versions are requirements.lock's, installed with the uv version dev.py pins, as dev.py does.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

# The audit trail records the code that acted; an image has no .git, so the build says which code it holds
# (left empty, the audit records the package version alone).
ARG MLPLATFORM_CODE_VERSION=
ARG UV_VERSION=0.13.8
# The K8sRunLauncher's package (the instance config names dagster_k8s, so every process that loads the instance
# imports it). It is released with dagster-postgres at the same version; it is not in requirements.lock yet, so it is
# installed with the lock as constraints: nothing locked moves.
ARG DAGSTER_K8S_VERSION=0.29.27

ENV VIRTUAL_ENV=/opt/mlplatform/venv \
    PATH=/opt/mlplatform/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLPLATFORM_HOME=/var/lib/mlplatform \
    MLPLATFORM_CODE_VERSION=${MLPLATFORM_CODE_VERSION} \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    DBT_LOG_PATH=/var/lib/mlplatform/dbt/logs

RUN python -m venv "$VIRTUAL_ENV" \
 && "$VIRTUAL_ENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"

WORKDIR /opt/mlplatform/app
# The lock first: the dependency layer is rebuilt only when the lock changes, not on every code change.
COPY requirements.lock ./
RUN uv pip install --no-cache --compile-bytecode --python "$VIRTUAL_ENV/bin/python" -r requirements.lock \
 && uv pip install --no-cache --compile-bytecode --python "$VIRTUAL_ENV/bin/python" -c requirements.lock \
      "dagster-k8s==${DAGSTER_K8S_VERSION}"

COPY . .
# Editable, as dev.py installs it: the package finds dbt_project/ next to itself. The dbt manifest is built here,
# once, so no process parses the dbt project at start (and the code stays read-only for the runtime user).
RUN uv pip install --no-cache --python "$VIRTUAL_ENV/bin/python" --no-deps -e . \
 && MLPLATFORM_HOME=/tmp/mlplatform-build DAGSTER_HOME=/tmp/mlplatform-build/dagster mlplatform prepare \
 && rm -rf /tmp/mlplatform-build \
 && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin mlplatform \
 && mkdir -p "$MLPLATFORM_HOME" "$DAGSTER_HOME" \
 && chown -R mlplatform:mlplatform "$MLPLATFORM_HOME" "$DAGSTER_HOME"

USER 10001
EXPOSE 8000
# The serving command; the Dagster chart and the MLflow manifests give their own.
CMD ["mlplatform", "serve", "--host", "0.0.0.0", "--port", "8000"]
