"""cvops: a declarative CVOps framework.

A YAML recipe, composed by Hydra from the config groups in ``conf/``, describes
a computer-vision project; ``cvops`` runs its lifecycle stages (curate, train,
evaluate, export, serve, monitor) through a content-addressed cache.
"""

__version__ = "0.1.0"
