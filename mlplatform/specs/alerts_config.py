"""The ``alerts`` section of the platform's policy file: destinations and routes (docs/alerts.md).

It is configuration read with the specs (:mod:`mlplatform.specs.policies`), so it lives with them; delivery is
:mod:`mlplatform.lib.alerts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DeliveryError(RuntimeError):
    """A destination did not take an alert (refused, unreachable, misconfigured): recorded and retried."""


UI_URL_ENV = "MLPLATFORM_UI_URL"
DEFAULT_UI_URL = "http://localhost:3000"

ALERT_KINDS = ("drift_alert", "performance_alert", "rollback", "training_halted", "canary_stopped",
               "approval_waiting", "approval_refused", "retrain_failed", "audit_verification_failed")
"""What a person is told about; a route's ``kinds`` names some of these (default: all)."""


# --- Configuration: the ``alerts`` section of the policy file ----------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _refuse_secrets(data: Any, keys: Sequence[str], hint: str) -> Any:
    if isinstance(data, dict):
        for key in keys:
            if key in data:
                raise ValueError(f"{key!r} is not written in the policy file (everyone who reads the specs reads it): "
                                 f"{hint}")
    return data


class _HttpDestination(_Strict):
    url: str | None = Field(default=None, description="The endpoint (http:// or https://).")
    url_env: str | None = Field(default=None, description="The environment variable holding the URL (for a URL that "
                                "is a secret, as a Slack webhook's is).")
    timeout_seconds: float = Field(default=10.0, gt=0, le=60, description="Per request.")

    @model_validator(mode="after")
    def _one_url(self):
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url (the endpoint) or url_env (the environment variable holding it)")
        if self.url is not None and not self.url.lower().startswith(("http://", "https://")):
            raise ValueError(f"url: found {self.url!r}; expected an http:// or https:// URL")
        return self

    def endpoint(self, environ: dict[str, str]) -> str:
        """The URL to post to; a missing environment variable is a delivery failure that names it."""
        if self.url is not None:
            return self.url
        value = environ.get(self.url_env or "", "").strip()
        if not value:
            raise DeliveryError(f"the environment variable {self.url_env} (url_env) is not set")
        return value


class WebhookDestination(_HttpDestination):
    """A generic JSON webhook: the alert as one JSON object (:func:`webhook_payload`)."""

    type: Literal["webhook"]


class SlackDestination(_HttpDestination):
    """A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat): ``{"text": ..., "blocks": [...]}``."""

    type: Literal["slack"]
    blocks: bool = Field(default=True, description="Send Block Kit blocks beside the text (false: text only).")


class EmailDestination(_Strict):
    """E-mail over SMTP; the login (optional) comes from the environment, never the file."""

    type: Literal["email"]
    host: str = Field(min_length=1)
    port: int = Field(default=25, ge=1, le=65535)
    sender: str = Field(alias="from", min_length=3, description="The From address.")
    to: list[str] = Field(min_length=1, description="Recipients.")
    starttls: bool = Field(default=False, description="Upgrade the connection with STARTTLS before sending.")
    username_env: str | None = Field(default=None, description="The environment variable holding the SMTP user.")
    password_env: str | None = Field(default=None, description="The environment variable holding its password.")
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        return _refuse_secrets(data, ("password", "username", "user"), "set username_env and password_env to the "
                               "names of environment variables holding them")


Destination = Annotated[WebhookDestination | SlackDestination | EmailDestination, Field(discriminator="type")]


class AlertRoute(_Strict):
    """Which models' alerts go where: every selector given must match (none given: every model)."""

    destinations: list[str] = Field(min_length=1, description="Names under `alerts.destinations`.")
    teams: list[str] = Field(default_factory=list, description="Models of these teams (`team`, else `owner`).")
    policies: list[str] = Field(default_factory=list, description="Models under these policies.")
    models: list[str] = Field(default_factory=list, description="These models.")
    kinds: list[str] = Field(default_factory=list, description=f"Only these alert kinds ({', '.join(ALERT_KINDS)}); "
                             "empty: all.")

    @model_validator(mode="after")
    def _known_kinds(self):
        unknown = [k for k in self.kinds if k not in ALERT_KINDS]
        if unknown:
            raise ValueError(f"kinds: found {', '.join(map(repr, unknown))}; allowed: {', '.join(ALERT_KINDS)}")
        return self


class AlertsConfig(_Strict):
    """The ``alerts`` section of the policy file (docs/alerts.md)."""

    ui_url: str | None = Field(default=None, description=f"The Dagster UI the alerts link to (else {UI_URL_ENV}, "
                               f"else {DEFAULT_UI_URL}).")
    destinations: dict[str, Destination] = Field(default_factory=dict, description="Named destinations.")
    routes: list[AlertRoute] = Field(default_factory=list, description="Which models' alerts go to which "
                                     "destinations.")
    max_age_hours: float = Field(default=168.0, gt=0, description="Events older than this are not sent (a new "
                                 "destination does not receive months of history; a failed one is retried this long).")
    retry_seconds: float = Field(default=30.0, gt=0, description="The first wait after a failed delivery; doubled "
                                 "after each further failure.")
    max_retry_seconds: float = Field(default=3600.0, gt=0, description="The longest wait between two attempts.")

    @model_validator(mode="after")
    def _routes_name_destinations(self):
        for number, route in enumerate(self.routes):
            unknown = [d for d in route.destinations if d not in self.destinations]
            if unknown:
                raise ValueError(f"routes[{number}].destinations: found {', '.join(map(repr, unknown))}; defined: "
                                 f"{', '.join(sorted(self.destinations)) or 'none (add them under alerts.destinations)'}")
        return self

    @property
    def configured(self) -> bool:
        return bool(self.routes)
