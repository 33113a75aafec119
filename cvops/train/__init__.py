"""Train: mmdet 3 detectors on mmengine, configured from the recipe."""
