"""`cvops` that counts its compositions (for subprocess tests): at exit it writes
``{"compose_config": n, "hydra": m}`` to ``$CVOPS_TEST_COMPOSE_COUNT``: the calls of cvops' one compose
function, and the compositions Hydra itself made (each goes through its config loader, whoever asks)."""

import atexit
import json
import os
import sys
from pathlib import Path

from hydra._internal.config_loader_impl import ConfigLoaderImpl

from cvops import config

COUNT = {"compose_config": 0, "hydra": 0}


def _counted(count: str, real):
    def call(*args, **kwargs):
        COUNT[count] += 1
        return real(*args, **kwargs)

    return call


# counting wrappers (they call through): a test's instrument, never in cvops itself
config.compose_config = _counted("compose_config", config.compose_config)
ConfigLoaderImpl.load_configuration = _counted("hydra", ConfigLoaderImpl.load_configuration)
atexit.register(lambda: Path(os.environ["CVOPS_TEST_COMPOSE_COUNT"]).write_text(json.dumps(COUNT)))

from cvops.cli import main  # noqa: E402

sys.exit(main())
