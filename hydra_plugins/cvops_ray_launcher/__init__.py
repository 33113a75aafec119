"""cvops' Hydra launcher for Ray clusters (``hydra/launcher=ray``); see :mod:`.ray_launcher`."""
