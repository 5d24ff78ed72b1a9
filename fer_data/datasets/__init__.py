"""Dataset adapters, one module per family; importing this package fills the registry."""

from fer_data.datasets import affectnet, bp4d, casme2, celeba, dfew, disfa, fairface, fer2013, ferv39k, folders, lagenda, rafdb, utkface, vggface2  # noqa: F401
from fer_data.datasets.base import ADAPTERS, Adapter, BadRow, LayoutError, get_adapter

__all__ = ["ADAPTERS", "Adapter", "BadRow", "LayoutError", "get_adapter"]
