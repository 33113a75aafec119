"""The automated loop: one idempotent tick from a trigger to a decided challenger (``cvops loop``).

:mod:`cvops.loop.tick` holds the tick; it is an entrance like the command line (a scheduler comes in
through it) and asks the runner for the challenger's stages.
"""
