"""The method registry: each file under fer_models/methods registers its builder here with the
settings its paper uses where they differ from TrainConfig's (backbone, tasks, ...).

It imports neither TrainConfig nor the methods, so that TrainConfig.load can ask it for a method's
settings without an import cycle; the method files (which need TrainConfig) load on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

Builder = TypeVar("Builder", bound=Callable[..., Any])  # TrainConfig -> Method

METHODS: dict[str, Callable[..., Any]] = {}
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {}
PROTOCOLS: dict[str, str] = {}  # how each method's paper evaluates (text for `fer recipe` and the docs)
MODULES = ("multitask", "cafe", "auformer", "pe_clip", "mae", "mae_vit", "pf_vit")


def register(name: str, protocol: str = "", **defaults: Any) -> Callable[[Builder], Builder]:
    """Register a builder with its paper recipe: `defaults` are the paper's TrainConfig settings (applied
    under params.yaml and --set; `fer train --recipe paper` keeps them whole), `protocol` how the paper
    evaluates."""
    def wrap(builder: Builder) -> Builder:
        METHODS[name] = builder
        METHOD_DEFAULTS[name] = defaults
        PROTOCOLS[name] = protocol
        return builder

    return wrap


def require(name: str) -> None:
    """Load `name`'s method file (each file registers the method it is named after; an unknown name
    loads them all, to list the known ones), then check that `name` is a registered method. Why not
    always all: a training process would import every method's libraries (peft and transformers for
    one, ~3 s) whatever it trains."""
    for module in (name,) if name in MODULES else MODULES:
        importlib.import_module(f"fer_models.methods.{module}")
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {sorted(METHODS)}")


def method_defaults(name: str) -> dict[str, Any]:
    require(name)
    return dict(METHOD_DEFAULTS[name])


def builder(name: str) -> Callable[..., Any]:
    require(name)
    return METHODS[name]


def protocol(name: str) -> str:
    require(name)
    return PROTOCOLS[name]
