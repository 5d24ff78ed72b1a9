"""Prefect flows over the fer_data / fer_models library, run by the `fer` commands (fer_cli)."""
