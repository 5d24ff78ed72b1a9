"""fer-pipeline's data side. Importing it sets the environment every entry point (`fer`, the flows,
the tests) needs: tools offline and quiet (no network here, no telemetry), and an ephemeral Prefect
server given time to start on a loaded 2-core machine (its 20 s default fails there)."""

import os

OFFLINE_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)
