"""cvops: a declarative CVOps framework.

A YAML recipe, composed by Hydra from the config groups in ``conf/``, describes
a computer-vision project; ``cvops`` runs its lifecycle stages (curate, train,
evaluate, export, serve, monitor) through a content-addressed cache.

From Python (:mod:`cvops.api`)::

    import cvops

    run = cvops.run("quickstart", stages=["curate", "train"])   # as `cvops recipe=quickstart stages=[...]`
    model = cvops.load("quickstart")                            # the recipe's exported model
    model.predict("image.jpg")                                  # what /v1/predict answers

``import cvops`` imports nothing heavy (no Hydra, torch or FiftyOne): :mod:`cvops.api` is imported on the
first use of one of its names.
"""

import time as _time
from typing import Any as _Any

__version__ = "0.1.0"
#: when this process first imported cvops (the compose cache stores nothing read from a file changed since)
STARTED_NS = _time.time_ns()

#: The Python API's names, imported from :mod:`cvops.api` on first use.
_API = ("run", "load", "Run", "StageRun", "Predictor")


def __getattr__(name: str) -> _Any:
    if name in _API:
        from cvops import api

        return getattr(api, name)
    raise AttributeError(f"module 'cvops' has no attribute {name!r}")


def __dir__() -> list:
    return sorted([*globals(), *_API])


__all__ = ["run", "load", "Run", "StageRun", "Predictor", "__version__"]
