"""Evaluate: COCO mAP, predictions and TP/FP/FN back into FiftyOne."""
