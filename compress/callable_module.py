"""Packages that double as the verb they implement: `compress.quantize(...)` and `compress/quantize/`.

Importing a subpackage sets it as an attribute of its parent, so a function `compress.quantize`
would be replaced by the package `compress.quantize` the moment anything imports
`compress.quantize.runner`. Giving the package module a `__call__` (module `__class__` assignment,
supported since Python 3.5) keeps both the SPEC's layout and the documented API.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import Any


class _CallableModule(types.ModuleType):
    _target: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module_name, function_name = self._target.split(":")
        return getattr(import_module(module_name), function_name)(*args, **kwargs)


def make_callable(module_name: str, target: str) -> None:
    """Calling the module `module_name` calls `target` ("package.module:function"), imported lazily."""
    module = sys.modules[module_name]
    module.__class__ = _CallableModule
    module._target = target
