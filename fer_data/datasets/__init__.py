"""Dataset adapters, one module per family; importing this package fills the registry."""

from fer_data.datasets import affectnet, celeba, fairface, fer2013, folders, lagenda, rafdb, utkface, vggface2  # noqa: F401
from fer_data.datasets.base import ADAPTERS, Adapter, BadRow, LayoutError, get_adapter

__all__ = ["ADAPTERS", "Adapter", "BadRow", "LayoutError", "get_adapter"]
