"""A researcher's own optimizer: a class named by import path or by an installed entry point.

Wherever BackOBS takes an optimizer's name (``backobs run --optimizer``, the keys of a sweep
file's ``optimizers:``), it also takes

- an import path ``package.module:ClassName`` of a :class:`torch.optim.Optimizer` subclass,
  importable where the command runs (an installed or editable package, ``PYTHONPATH``, or the
  current directory, which is put on ``sys.path`` as ``python -m`` does);
- the name of an entry point in the group ``backobs.optimizers`` of an installed package
  (``[project.entry-points."backobs.optimizers"] myopt = "mypkg.opt:MyOpt"``).

The class's hyperparameters are its constructor's parameters after the parameters' iterable:
the default from the signature, the type from the annotation or else from the default
(``float``, ``int``, ``bool`` or ``str``); a parameter without a default is required. A class
may declare them itself with a class attribute ``hyperparameters`` in DeepOBS's format, e.g.
``{"lr": {"type": float}, "damping": {"type": float, "default": 1e-3, "range": [0, None]}}``
(``"range"``: inclusive bounds, ``None`` for none; ``"choices"``: the accepted values;
``"help"``: a description for ``--help``).

Its results go under the class's ``__name__``, as DeepOBS names an optimizer's folder.
"""

import importlib
import inspect
import os
import sys
import typing

from backobs.optim.hyperparameters import check_value

__all__ = [
    "ENTRY_POINT_GROUP",
    "is_import_path",
    "entry_points",
    "load_class",
    "hyperparameters_of",
    "check_range",
]

ENTRY_POINT_GROUP = "backobs.optimizers"
"""The entry-point group in which installed packages name their optimizers."""

_TYPES = (float, int, bool, str)
_TYPE_NAMES = {kind.__name__: kind for kind in _TYPES}


def is_import_path(name):
    """bool: ``name`` has the form ``package.module:ClassName``."""
    module, _, attribute = name.partition(":")
    return bool(module) and bool(attribute) and ":" not in attribute


def entry_points():
    """The installed optimizers of the group ``backobs.optimizers``, by name.

    Returns:
        dict[str, importlib.metadata.EntryPoint]: Name -> entry point (not loaded).
    """
    from importlib import metadata

    return {point.name: point for point in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_class(name):
    """The optimizer class an import path or an entry point's name refers to.

    Args:
        name (str): ``package.module:ClassName``, or the name of an entry point of the
            group ``backobs.optimizers``.

    Returns:
        type: A subclass of :class:`torch.optim.Optimizer`.

    Raises:
        ValueError: The module does not import (naming it and how to make it importable),
            the class does not exist (listing the module's optimizer classes), it is not
            a ``torch.optim.Optimizer`` subclass, or an entry point does not load.
        KeyError: ``name`` is neither an import path nor an installed entry point's name
            (:func:`backobs.optim.resolve_optimizer` turns it into a message listing what is
            known).
    """
    if is_import_path(name):
        module_name, _, class_name = name.partition(":")
        module = _import_module(name, module_name)
        found = module
        for part in class_name.split("."):
            found = getattr(found, part, None)
            if found is None:
                listed = ", ".join(_optimizer_classes(module)) or "none"
                raise ValueError(
                    f"optimizer {name!r}: module {module_name!r} has no {class_name!r}; its "
                    f"torch.optim.Optimizer subclasses: {listed}"
                )
        return _checked_class(name, found)
    points = entry_points()
    if name in points:
        try:
            found = points[name].load()
        except Exception as error:  # the package's import fails
            raise ValueError(
                f"optimizer {name!r}: the entry point {points[name].value!r} of the group "
                f"{ENTRY_POINT_GROUP} does not load ({type(error).__name__}: {error})"
            ) from None
        return _checked_class(name, found)
    raise KeyError(name)


def _import_module(name, module_name):
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # as `python -m` would, after everything installed
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"optimizer {name!r}: module {module_name!r} does not import "
            f"({type(error).__name__}: {error}); make it importable here: install its package "
            "(pip install -e PATH) or put its folder on PYTHONPATH"
        ) from None
    except Exception as error:  # the module raises while it is imported
        raise ValueError(
            f"optimizer {name!r}: importing module {module_name!r} raised "
            f"{type(error).__name__}: {error}"
        ) from None


def _optimizer_classes(module):
    import torch

    return sorted(
        attribute
        for attribute, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, torch.optim.Optimizer)
        and value is not torch.optim.Optimizer
    )


def _checked_class(name, found):
    import torch

    if not (inspect.isclass(found) and issubclass(found, torch.optim.Optimizer)):
        raise ValueError(
            f"optimizer {name!r} is not a torch.optim.Optimizer subclass (got {found!r}); "
            "name a class that derives from torch.optim.Optimizer"
        )
    return found


def hyperparameters_of(cls):
    """A class's hyperparameters in DeepOBS's format: declared, or read from its signature.

    Args:
        cls (type): The optimizer class.

    Returns:
        dict: ``{name: {"type": kind, "default": value (if any), ...}}``, in the order of the
        constructor's parameters (or of the declaration).

    Raises:
        ValueError: A declared entry is malformed, or a parameter's type cannot be known
            (neither an annotation of a supported type nor a default).
    """
    declared = getattr(cls, "hyperparameters", None)
    if declared is not None:
        return _declared(cls, declared)
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{cls.__name__}: cannot read its constructor's signature ({error})"
        ) from None
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: fall back to the raw ones
        hints = {}
    parameters = list(signature.parameters.values())[1:]  # without self
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional:
        raise ValueError(
            f"{cls.__name__}'s constructor takes no parameters' iterable (params) first"
        )
    hyperparameters = {}
    for parameter in parameters:
        if parameter is positional[0] or parameter.kind in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        ):
            continue
        annotation = hints.get(parameter.name, parameter.annotation)
        entry = {}
        if parameter.default is not parameter.empty:
            entry["default"] = parameter.default
        kind = _kind(annotation, entry.get("default"))
        if kind is None:
            raise ValueError(
                f"{cls.__name__}: the type of hyperparameter {parameter.name!r} is unknown "
                "(annotate it as float, int, bool or str, give it a default of such a type, "
                "or declare the class attribute hyperparameters)"
            )
        entry["type"] = kind
        hyperparameters[parameter.name] = {"type": entry.pop("type"), **entry}
    return hyperparameters


def _kind(annotation, default):
    """float, int, bool or str from an annotation (also ``Optional[X]``), else the default's."""
    if isinstance(annotation, str):
        annotation = _TYPE_NAMES.get(annotation.replace("Optional[", "").rstrip("]"))
    if annotation in _TYPES:
        return annotation
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    for candidate in arguments:  # Optional[float], Union[float, Tensor]: the first known
        if candidate in _TYPES:
            return candidate
    if default is not None and type(default) in _TYPES:
        return type(default)
    return None


def _declared(cls, declared):
    if not isinstance(declared, dict):
        raise ValueError(
            f"{cls.__name__}.hyperparameters must be a dict "
            '{name: {"type": float, "default": ...}}, got ' + type(declared).__name__
        )
    hyperparameters = {}
    for name, entry in declared.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{cls.__name__}.hyperparameters[{name!r}] must be a dict")
        kind = entry.get("type", float)
        kind = _TYPE_NAMES.get(kind, kind) if isinstance(kind, str) else kind
        if kind not in _TYPES:
            raise ValueError(
                f"{cls.__name__}.hyperparameters[{name!r}]: type must be float, int, bool or "
                f"str, got {kind!r}"
            )
        unknown = sorted(set(entry) - {"type", "default", "range", "choices", "help"})
        if unknown:
            raise ValueError(
                f"{cls.__name__}.hyperparameters[{name!r}]: unknown key {unknown[0]!r} "
                "(known: type, default, range, choices, help)"
            )
        hyperparameters[name] = {**entry, "type": kind}
        if "default" in entry and entry["default"] is not None:
            try:
                check_value(name, entry["default"], kind, ranges=False)
                check_range(name, entry["default"], hyperparameters[name])
            except ValueError as error:
                raise ValueError(f"{cls.__name__}.hyperparameters: default: {error}") from None
    return hyperparameters


def check_range(name, value, entry):
    """Check ``value`` against a declared entry's ``range`` and ``choices``.

    Args:
        name (str): The hyperparameter.
        value: Its value (already of the entry's type).
        entry (dict): The declaration.

    Raises:
        ValueError: Naming the bound or the choices.
    """
    if "choices" in entry and value not in entry["choices"]:
        choices = ", ".join(str(choice) for choice in entry["choices"])
        raise ValueError(f"hyperparameter {name} must be one of {choices}, got {value!r}")
    if "range" in entry:
        low, high = entry["range"]
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(
                f"hyperparameter {name} must be in [{'-inf' if low is None else low}, "
                f"{'inf' if high is None else high}], got {value!r}"
            )
