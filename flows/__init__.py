"""Prefect flows over the fer_data / fer_models library."""

import fer_data  # noqa: F401  (sets the offline environment before Prefect is imported)

