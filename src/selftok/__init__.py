"""Selftok: discrete autoregressive visual tokens made by a diffusion decoder, end to end."""

import os

# Telemetry of every tool is off unless the user opts back in (set these to override).
for _name, _value in {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(_name, _value)

__version__ = "0.1.0"
