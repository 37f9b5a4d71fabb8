"""Lazy package attributes (PEP 562): a package's public names, each imported when first used.

Used by :mod:`backobs.sweep` and :mod:`backobs.report`, whose ``__init__`` would otherwise
import every module (and with them NumPy, pandas or Dask) for a ``--help``.
"""

import importlib


def lazy_attributes(package, names):
    """The ``__getattr__``, ``__dir__`` and ``__all__`` of a package with lazy attributes.

    Args:
        package (str): The package's name, e.g. ``"backobs.report"``.
        names (dict[str, tuple[str, ...]]): Submodule -> the public names it defines. Each
            submodule is an attribute too (its module), so a submodule's function of the
            same name (``command.command``) is reached through the module.

    Returns:
        tuple: ``(__getattr__, __dir__, __all__)`` to assign in the package's ``__init__``.
    """
    module_of = {name: module for module, group in names.items() for name in group}
    public = [*module_of, *names]

    def __getattr__(name):
        if name in names:
            return importlib.import_module(f"{package}.{name}")
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__():
        return sorted(set(public) | {"__doc__", "__name__", "__path__"})

    return __getattr__, __dir__, public
