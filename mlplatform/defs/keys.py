"""Dagster asset keys of a model's stages, from :mod:`mlplatform.names`."""

from dagster import AssetCheckKey, AssetKey

from mlplatform import names
from mlplatform.specs import ModelSpec


def asset_key(model: str, stage: str) -> AssetKey:
    return AssetKey(names.asset_path(model, stage))


def raw_key(spec: ModelSpec) -> AssetKey:
    return asset_key(spec.name, names.RAW)


def staged_key(spec: ModelSpec) -> AssetKey:
    return asset_key(spec.name, names.STAGED)


def features_key(spec: ModelSpec) -> AssetKey:
    return asset_key(spec.name, names.FEATURES)


def model_key(spec: ModelSpec) -> AssetKey:
    return asset_key(spec.name, names.MODEL)


def evaluation_key(spec: ModelSpec) -> AssetKey:
    return asset_key(spec.name, names.EVALUATION)


def backtest_key(spec: ModelSpec) -> AssetKey:
    return asset_key(spec.name, names.BACKTEST)


def drift_key(spec: ModelSpec) -> AssetKey:
    return asset_key(spec.name, names.DRIFT)


def drift_check_key(spec: ModelSpec) -> AssetCheckKey:
    return AssetCheckKey(drift_key(spec), names.DRIFT_CHECK)


def audit_trail_key(spec: ModelSpec) -> AssetKey:
    return asset_key(spec.name, names.AUDIT_TRAIL)
