"""A function named by "module:qualname", imported on its first call (a lazy stage function).

Entries name their stage functions this way (``Stage("probe", "methods.stages:probe_stage", ...)``) so
loading the registry imports no torch: ``bench list`` and a misspelt ``bench run --entry`` answer in
about a second, not the seven torch and scikit-learn take to import. The reference keeps what the stage
cache keys on, the function's ``__module__`` and ``__qualname__``, without importing it (the convention of
setuptools entry points and Hydra's ``_target_``).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from bench.errors import BenchError


class FunctionRef:
    """A callable standing for the function ``ref`` ("package.module:qualname") until it is called."""

    def __init__(self, ref: str) -> None:
        module, sep, qualname = ref.partition(":")
        if not sep or not module or not qualname or not all(p.isidentifier() for p in
                                                           [*module.split("."), *qualname.split(".")]):
            raise ValueError(f"function reference {ref!r}: write it as 'package.module:function'")
        self.ref = ref
        self.__module__ = module
        self.__qualname__ = qualname
        self.__name__ = qualname.rpartition(".")[2]
        self._target: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        """The function itself (imports its module once)."""
        if self._target is None:
            try:
                target: Any = importlib.import_module(self.__module__)
            except ModuleNotFoundError as exc:   # the named module itself, not one it imports
                if not exc.name or not f"{self.__module__}.".startswith(f"{exc.name}."):
                    raise
                raise BenchError(f"stage function {self.ref!r}: there is no module {exc.name!r}; it must be "
                                 "importable (installed, or on PYTHONPATH)") from exc
            try:
                for part in self.__qualname__.split("."):
                    target = getattr(target, part)
            except AttributeError:
                raise BenchError(f"stage function {self.ref!r}: module {self.__module__!r} has no "
                                 f"{self.__qualname__!r}") from None
            if not callable(target):
                raise BenchError(f"stage function {self.ref!r} is not callable")
            self._target = target
        return self._target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FunctionRef) and other.ref == self.ref

    def __hash__(self) -> int:
        return hash(self.ref)

    def __repr__(self) -> str:
        return f"FunctionRef({self.ref!r})"

    def __getstate__(self) -> dict[str, Any]:      # pickles as its name (the function itself may not pickle)
        return {"ref": self.ref}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["ref"])
