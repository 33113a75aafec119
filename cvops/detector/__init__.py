"""The detector layer: everything about a trained detector that more than one stage needs.

- :mod:`cvops.detector.runtime`: the prediction type (``Detections``), the preprocessing and I/O contract
  of an exported graph, ``box_iou``, the ONNX Runtime detector (``OnnxDetector``), latency timing;
  numpy + onnxruntime only (serve imports it and must start fast).
- :mod:`cvops.detector.tensorrt`: the TensorRT runtime and engine builder.
- :mod:`cvops.detector.mmdet`: a trained mmdet model loaded once (``load_model``) and its predictions
  on a COCO split (``predict``); torch and mmdet are imported inside the functions.
- :mod:`cvops.detector.coco`: COCO evaluation (pycocotools), the one mAP contract of evaluate and export.
- :mod:`cvops.detector.checkpoint`: loading checkpoints safely (``weights_only``), downloads.

Stages import this layer; no stage package imports another.
"""
