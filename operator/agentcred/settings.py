"""Operator configuration: explicit settings, read once from the environment or the CLI."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import kopf

from . import model


@dataclass(frozen=True)
class OperatorConfig:
    namespace: str = "agentcred"

    @classmethod
    def from_env(cls) -> "OperatorConfig":
        return cls(namespace=os.environ.get("AGENTCRED_NAMESPACE", cls.namespace))


def configure_kopf(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    # Watches go quiet without explicit timeouts (a known Kopf/aiohttp behaviour).
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    # Our own annotation prefix and finalizer, not Kopf's defaults.
    settings.persistence.finalizer = f"{model.GROUP}/revoke-projections"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=model.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=model.GROUP, key="last-handled-configuration"
    )
    # Events are posted deliberately with kopf.event(); log lines do not become Events.
    settings.posting.level = logging.WARNING
