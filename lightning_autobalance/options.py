"""Flat keyword arguments backed by one dataclass: the signature callers see, the defaults in one place.

Some entry points take many settings (``AutoBalance``, ``retrain_last_layer``, ...). They keep their flat keyword
arguments, which the README, the Hydra configs and users' code pass, while the settings themselves live in a frozen
dataclass: one declaration of every name, type and default, validated in one place, shared by the function and the
class that wrap the same work. :func:`keyword_signature` (settings only) and :func:`options_signature` (a function's own
parameters, then the settings) give such an entry point the signature ``help()``, ``inspect.signature`` and IDEs
show, built from the dataclass so that it cannot drift from it.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["keyword_signature", "options_from", "options_signature"]


def keyword_signature(options: type, leading: Sequence[str] = (), *, returns: Any = None) -> inspect.Signature:
    """The signature ``(leading..., *, field=default, ...)`` of an entry point whose settings are ``options``' fields.

    Args:
        options: a dataclass type; each field becomes a keyword-only parameter with the field's default.
        leading: names of positional-or-keyword parameters before the settings (e.g. ``("self",)``).
        returns: the return annotation, or ``None`` for none.

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class Settings:
        ...     lr: float = 0.1
        ...     steps: int = 10
        >>> str(keyword_signature(Settings, ("model",)))
        '(model, *, lr: float = 0.1, steps: int = 10)'
    """
    parameters = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in leading]
    try:
        hints = typing.get_type_hints(options)
    except (NameError, TypeError):  # an annotation names a type imported only for type checking: show it as text
        hints = {}
    for field in dataclasses.fields(options):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = inspect.Parameter.empty
        parameters.append(
            inspect.Parameter(
                field.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=hints.get(field.name, field.type),
            )
        )
    return inspect.Signature(parameters, return_annotation=inspect.Signature.empty if returns is None else returns)


def options_from(options: type, where: str, settings: dict[str, Any]) -> Any:
    """``options(**settings)``, with an unknown keyword named the way Python names it for a plain function.

    Args:
        options: the dataclass type.
        where: the entry point's name, for the message (e.g. ``"AutoBalance"``).
        settings: the keyword arguments the caller passed.

    Raises:
        TypeError: a keyword is not a field of ``options``; the message lists the accepted ones.

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class Settings:
        ...     lr: float = 0.1
        >>> options_from(Settings, "fit", {"lr": 0.5})
        Settings(lr=0.5)
        >>> options_from(Settings, "fit", {"learning_rate": 0.5})
        Traceback (most recent call last):
        ...
        TypeError: fit() got an unexpected keyword argument 'learning_rate' (accepted: lr)
    """
    names = [field.name for field in dataclasses.fields(options)]
    unknown = [name for name in settings if name not in names]
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r} (accepted: {', '.join(names)})")
    return options(**settings)


def options_signature(function: Callable[..., Any], options: type) -> inspect.Signature:
    """``function``'s signature with its ``**options`` replaced by the keyword-only fields of the dataclass ``options``.

    For an entry point that declares some parameters itself (e.g. positional ones with defaults) and takes the rest
    as ``**options``; fields ``function`` already declares are not repeated.

    Args:
        function: the entry point; its parameters other than ``**options`` stay as declared, in front.
        options: the settings dataclass whose fields ``function`` accepts as keywords.

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class Settings:
        ...     lr: float = 0.1
        >>> def fit(model, steps=10, **options):
        ...     pass
        >>> str(options_signature(fit, Settings))
        '(model, steps=10, *, lr: float = 0.1)'
    """
    own = inspect.signature(function)
    kept = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    names = {p.name for p in kept}
    extra = [p for p in keyword_signature(options).parameters.values() if p.name not in names]
    return own.replace(parameters=[*kept, *extra])
