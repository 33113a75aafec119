"""cvops: a declarative CVOps framework.

A YAML recipe, composed by Hydra from the config groups in ``conf/``, describes
a computer-vision project; ``cvops`` runs its lifecycle stages (curate, train,
evaluate, export, serve, monitor) through a content-addressed cache.
"""

import time as _time

__version__ = "0.1.0"
#: when this process first imported cvops (the compose cache stores nothing read from a file changed since)
STARTED_NS = _time.time_ns()
