"""The ``cvops <verb>`` commands: one module per verb, each ``main(argv) -> int``.

A command parses its own flags (:mod:`cvops.commands._prologue`), runs the one prologue it shares with the
Python API (:func:`cvops.session.open_recipe`: compose the recipe once, open the store, find the artifacts)
and prints; the work it asks for lives in the stage or shared module it belongs to. Only :mod:`cvops.cli` imports this package (``tests/test_layers.py``).
"""

#: ``cvops <verb>`` -> the module (in this package) whose ``main(argv)`` runs it.
COMMANDS = {"doctor": "doctor", "recipes": "recipes", "app": "app", "serve": "serve", "review": "review",
            "promote": "promote", "rollback": "rollback", "models": "models", "report": "report",
            "train-worker": "train_worker", "store": "store",
            "annotate": "annotate", "loop": "loop", "alerts": "alerts"}
