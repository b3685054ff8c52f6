"""One small name → factory registry, used for heads, losses, datasets, backbone weights and CAM methods.

String keys are what papermill can inject and what a YAML config can hold, so every pluggable component is
chosen by name through a `Registry` rather than by if-chains spread across modules.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from mlic.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories: `register` them, `create` by name, `list` the names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that files a factory under `name`; a duplicate name is an error, not a silent overwrite."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorate

    def get(self, name: str) -> Callable[..., T]:
        """The factory filed under `name`; an unknown name raises a ValueError listing the valid ones."""
        try:
            return self._factories[name]
        except KeyError:
            raise ValueError(f"Unknown {self.kind} {name!r}. Available: {', '.join(self.list())}") from None

    def create(self, name: str | Any, **kwargs: Any) -> T:
        """Build the component `name` with `kwargs`; `None` values mean "the component's default" and are dropped.

        Options the factory does not take are a `ConfigError` naming the component and its options.

        An object that is already built (not a string) is passed through unchanged, like timm's `get_act_layer`.
        """
        if not isinstance(name, str):
            return name
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        factory = self.get(name)
        try:  # a wrong option is the config's fault: say which, without calling (a TypeError inside is a bug)
            signature = inspect.signature(factory)
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            signature = None
        if signature is not None:
            try:
                signature.bind(**kwargs)
            except TypeError as err:
                raise ConfigError(f"{self.kind} {name!r}: {err} (its options: "
                                  f"{', '.join(p for p in signature.parameters if p not in ('self', 'args', 'kwargs'))}"
                                  ")") from None
        return factory(**kwargs)

    def list(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories
