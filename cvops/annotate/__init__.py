"""The human step of the loop: review batches in FiftyOne's App or Label Studio (``cvops annotate``).

:mod:`cvops.annotate.labels` holds the rules every path shares (accepted prelabels,
refused labels, outlines <-> masks); :mod:`cvops.annotate.app` prepares the review
dataset for the App's annotation panel; :mod:`cvops.annotate.labelstudio` pushes a
batch to a Label Studio server and loads it back.
"""
