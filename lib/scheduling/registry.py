"""Names of progs as stored in `strand.prog`, and loading a prog class from its name.

A prog class lives in a module under the `prog` package. Its name is the CamelCase path of its
module below `prog`, with a last segment equal to the class name folded away:
`prog/page_nexus.py:PageNexus` → `PageNexus`, `prog/vm/nexus.py:Nexus` → `Vm.Nexus`,
`prog/test/__init__.py:Test` → `Test`. Loading imports by name, so lib never imports prog.
"""

from __future__ import annotations

import functools
import importlib
import re

from lib.scheduling.flow import EngineBug

PACKAGE = "prog"


def _camel(segment: str) -> str:
    return "".join(part.capitalize() for part in segment.split("_"))


def _snake(segment: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", segment).lower()


def name_of(cls: type) -> str:
    """The stored name of a prog class; refuses classes outside the prog package."""
    module = cls.__module__
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        raise EngineBug(f"BUG: prog must be in the {PACKAGE} package, not {module}")
    segments = [_camel(s) for s in module.split(".")[1:]]
    if segments and segments[-1] == cls.__name__:
        segments.pop()
    return ".".join([*segments, cls.__name__])


@functools.cache
def load(name: str) -> type:
    """The prog class stored as `name`; LookupError when there is none."""
    if not re.fullmatch(r"[A-Z][A-Za-z0-9]*(\.[A-Z][A-Za-z0-9]*)*", name):
        raise LookupError(f"{name!r} is not a prog name")
    segments = name.split(".")
    class_name = segments[-1]
    for module_segments in (segments, segments[:-1]):
        module_name = ".".join([PACKAGE, *(_snake(s) for s in module_segments)])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                continue  # the module itself is missing, not something it imports
            raise
        cls = getattr(module, class_name, None)
        if isinstance(cls, type) and name_of(cls) == name:
            return cls
    raise LookupError(f"no prog named {name!r}")
