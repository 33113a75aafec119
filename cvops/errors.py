"""The errors a user fixes: one line on the console, exit status 2, no traceback.

Every cvops error that is the user's to fix (a recipe value, a data source, the
store, a missing artifact) derives from :class:`UserError`; the ``cvops``
command prints its message as ``cvops: error: <message>`` and exits with
:data:`EXIT_STATUS`. Anything else is a bug or an environment failure and keeps
its traceback. This module imports nothing beyond the standard library, so any
layer (a stage, the store, the serving code) can raise these without importing
Hydra.

::

    UserError (ValueError)
    ├── ConfigError        a recipe, config file or command-line value (found before any work)
    │   ├── UpstreamMissing    a requested stage needs an artifact neither stored nor requested
    │   └── StaleCode          a stage's code changed while it ran (its result is not stored)
    ├── SourceError        a data source cannot be read as declared
    ├── StageError         a stage refuses its inputs or result (export gate, calibration, monitor)
    └── StoreError         the artifact store (also an OSError)
"""

from __future__ import annotations

#: The exit status of ``cvops`` for a :class:`UserError` (argparse uses 2 for usage errors too).
EXIT_STATUS = 2


class UserError(ValueError):
    """A problem the user fixes; its message names the key, the value, the file and the fix."""


class ConfigError(UserError):
    """A recipe, config file or command-line problem found before any work."""


class UpstreamMissing(ConfigError):
    """A requested stage needs an artifact that is neither stored nor requested (the message names the
    ``stages=[...]`` to run)."""


class StaleCode(ConfigError):
    """A stage's code changed while it ran: its result is not stored (the fingerprint would name other code)."""


class SourceError(UserError):
    """A data source (folder, archive, label file) that cannot be read as the recipe declares it."""


class StageError(UserError):
    """A stage that refuses its inputs or its own result for a reason the user can act on
    (an export gate that failed, a calibration set too small, a monitor window without requests)."""


class StoreError(UserError, OSError):
    """The artifact store cannot be used as configured (not writable, a damaged manifest, a lock timeout).

    Also an :class:`OSError`, as it was before the hierarchy, so ``except OSError`` still catches it.
    """


def one_line(error: BaseException) -> str:
    """``cvops: error: <message>`` for the console (the message itself may span lines: a list of valid keys)."""
    return f"cvops: error: {error}"


__all__ = ["EXIT_STATUS", "UserError", "ConfigError", "UpstreamMissing", "StaleCode", "SourceError", "StageError",
           "StoreError", "one_line"]
