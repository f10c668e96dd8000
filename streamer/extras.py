"""Optional dependencies: import a module of an extra, or say which extra to install.

The monitor runs on its core dependencies alone (ONNX Runtime, numpy, ...). torch,
transformers, the ONNX export tools and matplotlib come with ``emotion-monitor[torch]``, needed
only for Hugging Face checkpoints not yet optimised, training, cross-validation, evaluation with
torch models, report plots and ``optimize``; the PostgreSQL timeline store's driver comes with
``emotion-monitor[postgres]``; Ray Serve comes with ``emotion-monitor[ray]``, needed only for
the shared inference tier (``serve-ray``, ``run --inference ray:...``); the Redis client comes
with ``emotion-monitor[redis]``, needed only for the cluster event bus (``run --bus``). Code on
those paths asks for its modules here first, so a missing extra is one
:class:`MissingExtraError` (exit 2 from the CLI) naming the extra, not a traceback. Any thread;
importing this module imports nothing optional.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from streamer.errors import StreamerError

__all__ = [
    "POSTGRES_EXTRA", "RAY_EXTRA", "REDIS_EXTRA", "TORCH_EXTRA", "MissingExtraError",
    "import_extra", "require_extra",
]

#: the extra of torch, transformers and the export tools (the default extra named)
TORCH_EXTRA = "torch"
#: the extra of the PostgreSQL timeline store (its driver, psycopg)
POSTGRES_EXTRA = "postgres"
#: the extra of Ray Serve (the shared inference tier)
RAY_EXTRA = "ray"
#: the extra of the Redis client (the cluster event bus)
REDIS_EXTRA = "redis"


class MissingExtraError(StreamerError):
    """A feature needs a module of an extra that is not installed."""

    def __init__(self, module: str, *, purpose: str, extra: str = TORCH_EXTRA) -> None:
        hint = " (CPU-only: see README)" if extra == TORCH_EXTRA else ""
        super().__init__(
            f"{purpose} needs {module}, which is not installed: "
            f"pip install 'emotion-monitor[{extra}]'{hint}"
        )
        self.module = module
        self.purpose = purpose
        self.extra = extra


def import_extra(module: str, *, purpose: str, extra: str = TORCH_EXTRA) -> ModuleType:
    """Import ``module`` (e.g. ``"torch"``) of ``extra``; MissingExtraError when absent.

    Only the module itself (or a package above it) being absent is a missing extra; a module
    that is installed but fails on a missing dependency of its own is a broken install, and
    its ModuleNotFoundError propagates unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and _is_self_or_parent(exc.name, module):
            raise MissingExtraError(exc.name, purpose=purpose, extra=extra) from exc
        raise


def require_extra(*modules: str, purpose: str, extra: str = TORCH_EXTRA) -> None:
    """Check, without importing them, that top-level ``modules`` of ``extra`` are installed.

    For command handlers: a missing extra is reported before any work starts (and before
    seconds spent importing torch); the modules are imported later where they are used.
    """
    for module in modules:
        if "." in module:
            raise ValueError(f"require_extra takes top-level modules, got {module!r}")
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(module, purpose=purpose, extra=extra)


def _is_self_or_parent(missing: str, module: str) -> bool:
    return module == missing or module.startswith(missing + ".")
