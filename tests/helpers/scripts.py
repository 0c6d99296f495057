"""Loading a script (``scripts/...``, ``bundle/web/serve.py``) as a module, to call its functions in a test."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_script(path: Path, name: str | None = None) -> ModuleType:
    """Executes the file at ``path`` as a fresh module (not as ``__main__``: its ``main`` does not run).

    Args:
        path: the script.
        name: the module's name (default: the file's stem).

    Returns:
        The module.
    """
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
