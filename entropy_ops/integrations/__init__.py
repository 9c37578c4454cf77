"""Drop-in adapters for RL trainers: ``entropy_ops.integrations.verl`` and ``.trl``.

Each module defines functions with the trainer's own names and signatures, backed by
``entropy_ops`` ops, and a ``patch()`` (verl also ``register()``) that installs them into the
trainer. Importing an adapter never imports the trainer: only ``patch``/``register`` do, and they
raise a clear ``ImportError`` when it is missing. entropy_ops does not depend on any trainer.
"""
import importlib
import sys
from types import ModuleType
from typing import Dict, List


def require(module: str, package: str) -> ModuleType:
    """Import ``module`` of the trainer ``package``, or raise an ImportError saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"entropy_ops.integrations: {module} could not be imported ({e}); install "
                          f"{package} (entropy_ops does not depend on it: pip install {package})") from e


def replace_everywhere(owner: ModuleType, replacements: Dict[str, object], prefix: str) -> List[str]:
    """Set ``owner.<name> = replacements[name]`` and also rebind every already-imported module under
    ``prefix`` that holds the original object by another ``from owner import name``: trainers import
    these helpers by name, so patching the defining module alone would miss them.

    Returns the ``module.name`` entries replaced.
    """
    originals = {name: getattr(owner, name) for name in replacements if hasattr(owner, name)}
    done = []
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name == prefix or mod_name.startswith(prefix + ".")):
            continue
        for name, original in originals.items():
            if getattr(mod, name, None) is original:
                setattr(mod, name, replacements[name])
                done.append(f"{mod_name}.{name}")
    for name in replacements:
        if name not in originals:
            setattr(owner, name, replacements[name])
            done.append(f"{owner.__name__}.{name}")
    return sorted(done)
