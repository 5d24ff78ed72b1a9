"""The environment every entry point (`fer`, and the tests) runs the flows in: tools offline and quiet
(no network here, no telemetry), and an ephemeral Prefect server given time to start on a loaded
2-core machine (its 20 s default fails there). Prefect, DVC and the hub read it when imported."""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def apply() -> None:
    """Set each variable the caller has not set itself."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
