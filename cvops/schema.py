"""Structured configs: the schema every composed recipe is validated against.

One dataclass per config group (``conf/<group>/``). A recipe is composed by
Hydra from plain YAML, then merged onto :class:`CvopsConfig` before any work
starts (see :mod:`cvops.config`): an unknown key, a wrong type or a missing
required value (``???``) stops the run with the key, the file it came from and
close matches.

Fields typed ``Dict[str, Any]`` are free-form on purpose (mmdet overrides,
per-source options); everything else is checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from omegaconf import II, MISSING

#: Lifecycle stages in execution order.
STAGES = ("curate", "train", "evaluate", "export", "serve", "monitor")


# ------------------------------------------------------------------ choices
class Choice(str, Enum):
    """A closed set of values: preflight rejects anything else, naming the choices.

    Members equal their text (``ExportFormat.onnx == "onnx"``), print as it and
    go into fingerprints and ``run.json`` as it.
    """

    __str__ = str.__str__
    __format__ = str.__format__

    @classmethod
    def names(cls) -> List[str]:
        return [m.value for m in cls]


class DataFormat(Choice):
    synthetic = "synthetic"
    coco = "coco"
    voc = "voc"
    yolo = "yolo"
    images = "images"
    video = "video"
    sources = "sources"


class Task(Choice):
    """What the recipe's model predicts: boxes, or boxes and instance masks."""

    detection = "detection"
    instance_segmentation = "instance_segmentation"


class DedupPolicy(Choice):
    keep_first = "keep_first"
    keep_sharpest = "keep_sharpest"


class DifferingLabels(Choice):
    keep = "keep"
    drop = "drop"


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Launcher(Choice):
    none = "none"
    pytorch = "pytorch"
    slurm = "slurm"


class ExportFormat(Choice):
    onnx = "onnx"
    tensorrt = "tensorrt"


class CalibMethod(Choice):
    percentile = "percentile"
    minmax = "minmax"
    entropy = "entropy"


class ServeBackend(Choice):
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"


class Mode(Choice):
    max = "max"
    min = "min"


# --------------------------------------------------------------------- data
@dataclass
class SyntheticConfig:
    """Seeded generator of a small detection set (``data=synthetic``).

    Shapes of ``classes`` on textured backgrounds, varied sizes, some
    occlusion and some empty images, plus short videos of moving labelled
    shapes. See :mod:`cvops.synthetic`.
    """

    num_images: int = 120
    image_size: List[int] = field(default_factory=lambda: [320, 240])  # width, height
    classes: List[str] = field(default_factory=lambda: ["circle", "square", "triangle"])
    max_objects: int = 4
    min_size: int = 24
    max_size: int = 96
    empty_fraction: float = 0.1
    occlusion: bool = True
    videos: int = 1
    video_frames: int = 48
    video_fps: float = 8.0
    seed: int = 0
    masks: bool = False  # also write each shape's visible mask (COCO RLE segmentation) for instance segmentation


@dataclass
class DataConfig:
    """Where the data comes from: one source, or several under ``sources``."""

    format: DataFormat = MISSING
    path: Optional[str] = MISSING  # file or folder of the source (null for synthetic)
    images_root: Optional[str] = None  # COCO: image root if not beside the json
    classes: Optional[List[str]] = None  # fixes class list and order
    class_map: Dict[str, str] = field(default_factory=dict)  # rename / merge
    sources: List[Dict[str, Any]] = field(default_factory=list)  # data=sources: [{format, path, ...}, ...]
    extra: List[Dict[str, Any]] = field(default_factory=list)  # added to any source, e.g. reviewed edge cases (cvops review)
    fps: Optional[float] = None  # video: sample this many frames per second
    every_n: Optional[int] = None  # video: or every N-th frame
    max_frames: Optional[int] = None
    # read images/labels outside the dataset root (data.path's folder, images_root, an archive's extraction
    # folder): a COCO file_name or VOC <filename> that is absolute or climbs with ../, YOLO paths, links
    allow_outside_paths: bool = False
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


# ------------------------------------------------------------------- curate
@dataclass
class DedupConfig:
    """Duplicates are dropped only when their labels add nothing (see :mod:`cvops.curate.dedup`).

    Dropped: exact copies (same bytes/pixels) and near duplicates (perceptual
    hashes within ``hamming_threshold`` bits) that are unlabelled or carry the
    same boxes as the image kept (same classes, IoU >= ``label_iou``).
    Grouped: near duplicates whose labels differ (a fixed camera, objects
    moved) are all kept and put in one split. quarantine.csv says which
    (``action`` dropped / grouped).
    """

    enabled: bool = True
    hamming_threshold: int = 4  # near-duplicate if perceptual hashes differ <= this
    policy: DedupPolicy = DedupPolicy.keep_first  # which of equivalent duplicates stays
    label_iou: float = 0.8  # labels are "the same" when every box matches one of the same class at this IoU
    differing_labels: DifferingLabels = DifferingLabels.keep  # keep (grouped in one split) | drop (one image per cluster: loses labels)


@dataclass
class SplitConfig:
    ratios: Dict[str, float] = field(
        default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15}
    )
    seed: int = 0
    stratify: bool = True
    group_by: Optional[str] = None  # sample field whose values never straddle splits
    respect_source: bool = False
    # a curate fingerprint: images (by content) of that dataset version keep its split; only new images are
    # split. A new version (reviewed samples added) never moves an image of the old test split into train
    keep: Optional[str] = None


@dataclass
class CurateConfig:
    min_box_size: float = 1.0  # px; smaller boxes are quarantined
    clip_boxes: bool = True
    keep_empty: bool = True
    # read instance masks (COCO segmentation: polygons or RLE; YOLO segment lines) and check each one; an
    # instance whose mask is missing or unusable is quarantined. false: boxes only, segmentations ignored
    masks: bool = False
    max_archive_mb: int = 4096
    # images with more pixels (width x height, read from the header before decoding) are quarantined.
    # 100 MP admits 10000x10000 aerial tiles and ~100 MP medium-format photos; one decode of that size
    # holds about 0.3 GB as 8-bit RGB (more while converting 16-bit), and curate decodes up to 8 at once
    max_pixels: int = 100_000_000
    dedup: DedupConfig = field(default_factory=DedupConfig)
    split: SplitConfig = field(default_factory=SplitConfig)


# -------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    """A detector: an mmdet 3 config shipped in the mmdet package + overrides."""

    name: str = MISSING
    mmdet_config: str = MISSING  # e.g. mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py
    image_size: List[int] = field(default_factory=lambda: [320, 320])
    load_from: Optional[str] = None  # checkpoint path or URL
    # the base config's pretrained backbone (downloaded once, https only); false: from scratch, no network, so
    # the same recipe gives the same model on a machine without internet access
    pretrained: bool = True
    cfg_options: Dict[str, Any] = field(default_factory=dict)  # raw mmengine overrides
    # the model predicts instance masks (set by its config group, e.g. conf/model/rtmdet_ins_tiny.yaml; checked
    # against the recipe's task before anything runs, and against the mmdet config by tests/test_train.py)
    masks: bool = False


# -------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    max_epochs: int = MISSING
    # a wall-clock budget (like Ultralytics' time=): the first epoch is timed, then the epochs that fit the budget
    # are planned (at most max_epochs) and the schedule (cosine decay, mosaic switch) is laid out over them; a run
    # that still reaches the budget stops after the epoch in progress, with its best checkpoint. null: no budget
    max_minutes: Optional[float] = None
    batch_size: int = 8
    lr: float = 0.004
    base_batch_size: int = 256  # lr is scaled linearly by batch_size / base_batch_size
    optimizer: str = "AdamW"
    weight_decay: float = 0.05
    warmup_iters: int = 100
    # fraction of max_epochs at which the cosine lr decay begins; until then the lr stays at its peak after the
    # warm-up (0.0: decay from the first epoch; RTMDet's own 300-epoch schedule decays over its second half, 0.5)
    lr_decay_from: float = 0.0
    mosaic_epochs: Optional[int] = None  # epochs with mosaic/mixup before the simpler pipeline; null: base config's share
    # [low, high]: training images are rescaled by a random factor in this range (every RandomResize ratio_range
    # and RandomAffine scaling_ratio_range of the model's training pipelines); null: the base config's, e.g.
    # RTMDet's [0.5, 2.0]. Narrow it when objects have one size range (a fixed camera, generated shapes).
    scale_jitter: Optional[List[float]] = None
    amp: bool = False  # only takes effect on CUDA
    seed: int = 0
    deterministic: bool = False
    val_interval: int = 1
    device: Device = Device.auto
    resume: bool = False
    launcher: Launcher = Launcher.none  # none | pytorch (torchrun) | slurm
    gpus: int = 1  # processes per machine with launcher=pytorch (one per GPU; on CPU, gloo processes)
    # several machines in one torchrun (launcher=pytorch): node 0 runs the train stage and commits the
    # artifact; every other node runs `cvops train-worker <same command> train.node_rank=K`. The store must be
    # on a filesystem every node sees. node_rank, master_addr and master_port do not change the result
    # (not in the fingerprint); nnodes does (the world size).
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    num_workers: int = 2
    log_interval: int = 10


# ----------------------------------------------------------------- evaluate
@dataclass
class EvaluateConfig:
    splits: List[str] = field(default_factory=lambda: ["val", "test"])
    score_thr: float = 0.05
    max_det: int = 100
    plots: bool = True
    confusion_score_thr: float = II("confidence")  # predictions counted in the confusion matrix and the App view


# ------------------------------------------------------------------- export
@dataclass
class GateConfig:
    """The export's parity gate against PyTorch on the curated test split (val when test is empty)."""

    max_map_drop: float = 0.5  # mAP points either way (box, and mask mAP for mask models)
    int8_max_map_drop: float = 2.0
    # mask models: the median per-instance mask IoU vs PyTorch (instances matched by box) must reach it; FP32
    # computes what mmdet computes (1.0 measured), INT8 moves a few small instances (0.967-0.974 measured)
    min_mask_iou: float = 0.99
    int8_min_mask_iou: float = 0.90


@dataclass
class TensorRTConfig:
    fp16: bool = True
    int8: bool = False
    workspace_gb: float = 2.0
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    timing_cache: bool = True


@dataclass
class ExportConfig:
    format: ExportFormat = ExportFormat.onnx
    opset: int = 18  # the dynamo exporter writes opset >= 18
    batch: str = "dynamic"  # dynamic | an integer as text, e.g. "1"
    max_det: int = 100
    score_thr: float = 0.05
    iou_thr: float = 0.6
    int8: bool = False
    calib_images: int = 24  # INT8 calibration images from the curated train split (every class represented)
    # percentile (robust to outliers; holds every activation of every calibration image in memory: ~130 MB per
    # 320x320 image) | minmax (streams, little memory, but one outlier stretches a range) | entropy
    calib_method: CalibMethod = CalibMethod.percentile
    calib_seed: int = 0  # seeds the choice of calibration images
    latency_repeats: int = 20  # timed runs per (runtime, batch) in the latency table
    gate: GateConfig = field(default_factory=GateConfig)
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    triton: bool = True


# -------------------------------------------------------------------- serve
@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    backend: ServeBackend = ServeBackend.onnxruntime
    max_upload_mb: float = 20.0
    max_pixels: int = 40_000_000
    log_dir: Optional[str] = None  # default: <store>/requests/<project>
    sample_rate: float = 0.1  # fraction of request images kept for review
    token_env: str = "CVOPS_TOKEN"  # bearer token read from this variable, if set
    max_batch: int = 8  # dynamic batching: concurrent requests share one inference of up to this many images
    batch_wait_ms: float = 2.0  # how long the first request of a batch waits for company
    # inference lanes per worker: batches run side by side on one model, each on one core. 0: one lane per
    # core the worker has (usable cores // --workers), each with a one-thread ONNX Runtime session: the most
    # throughput under load. 1: one lane whose session uses all those cores: the lowest latency of a lone
    # request. A TensorRT engine or a GPU session always gets one lane
    lanes: int = 0
    # refuse (400) images whose long side is more than this many times the short side; 20 admits phone
    # panoramas (about 1:4 to 1:10) and line-scan strips up to 1:20; raise it for wider ones
    max_aspect_ratio: float = 20.0
    # memory budget of the image decodes in flight, in MiB (estimated from each image header, see
    # cvops.serve.budget); a request waits up to decode_wait_s for budget (then 503), an image needing
    # more than the whole budget gets 413. 1024 fits one max_pixels (40 MP) image of any mode
    decode_memory_mb: float = 1024.0
    # request bodies being received or held until their answer, all together, in MiB per worker: past it a
    # request gets 503 (Retry-After) instead of the server growing with every slow or parallel upload
    upload_memory_mb: float = 512.0
    decode_wait_s: float = 5.0
    body_timeout_s: float = 30.0  # the whole request body must arrive within this many seconds (else 408)
    # the request line and headers must arrive within this many seconds of the connection opening (or of the
    # previous answer): else 408 and the connection is closed (a silent or slowloris client holds no socket)
    header_timeout_s: float = 20.0
    allow_anonymous: bool = False  # allow binding a non-loopback host without a bearer token (token_env unset)
    log_max_mb: float = 1024.0  # retention: the whole request log directory (records + sampled images), MiB
    log_max_days: float = 30.0  # retention: delete request log files and images older than this (0: no limit)
    # serve the export a registry alias points at (cvops promote ... --alias NAME) and follow it: a promotion
    # or rollback loads the new model beside the old one, warms it, then switches (null: the recipe's export)
    alias: Optional[str] = None
    alias_poll_s: float = 2.0  # how often the alias is checked (POST /v1/admin/reload checks at once)
    # shadow traffic: also follow this alias (e.g. staging) and run its export beside the live one on a share
    # of requests, off the response path, logging their agreement (<request log>/shadow.jsonl; cvops loop)
    shadow_alias: Optional[str] = None
    shadow_rate: float = 0.1  # the share of successful requests shadowed
    # slices: a request names its source (camera, site, customer) in the X-Cvops-Source header, the source
    # query parameter or form field; metrics, drift and the precision estimate are kept per source. The first
    # max_sources names get series of their own, later ones count as "other" (bounded /metrics)
    max_sources: int = 32


# ------------------------------------------------------------------ monitor
@dataclass
class ShiftConfig:
    """A shift applied to a generated window (``monitor.source=synthetic``); identity by default."""

    brightness: float = 1.0  # multiply pixel values
    blur: float = 0.0  # Gaussian sigma in px
    noise: float = 0.0  # additive Gaussian noise (grey levels)
    background: Optional[str] = None  # one background style for every frame, e.g. checker (unseen in training)


@dataclass
class AlertRule:
    """One alert of ``cvops alerts``: it fires when its condition held for ``duration``."""

    enabled: bool = True
    threshold: Optional[float] = None  # what it means is the alert's own (AlertsConfig)
    duration: str = "5m"  # a Prometheus duration (30s, 5m, 1h): how long the condition holds first (for:)
    severity: str = "warning"  # the label Alertmanager routes on (warning, critical, page, ...)


def _rule(threshold: Optional[float] = None, duration: str = "5m", severity: str = "warning") -> Any:
    return field(default_factory=lambda: AlertRule(True, threshold, duration, severity))


@dataclass
class AlertsConfig:
    """Prometheus alerting and recording rules of the served model (``cvops alerts recipe=X``; docs/alerts.md).
    Every alert is per project, model and source (``X-Cvops-Source``)."""

    window: str = "5m"  # the range of the rates and latency quantiles (a Prometheus duration)
    drift: AlertRule = _rule(None, "5m")  # the live drift check of a source found drift
    error_rate: AlertRule = _rule(0.05, "5m")  # the share of failed prediction requests is above threshold
    latency_p95_ms: AlertRule = _rule(1000.0, "5m")  # the 95th percentile latency is above threshold (ms)
    no_traffic: AlertRule = _rule(None, "10m", "critical")  # a source that sent requests sent none for duration
    # the estimated precision of a source fell this much below the validation split's
    precision_drop: AlertRule = _rule(0.1, "10m")
    class_mix: AlertRule = _rule(None, "15m")  # the classes the model answers drifted (chi-square on the window)
    runbook_url: Optional[str] = None  # added to every alert (besides the cvops commands to run)


@dataclass
class MonitorConfig:
    # what to monitor: null = the serve request log; a folder of images; a video file or folder of videos;
    # "synthetic" = videos from data.synthetic (new seed) with monitor.shift applied
    source: Optional[str] = None
    window: int = 500  # the most recent N requests / images / frames
    fps: float = 2.0  # video sources: frames sampled per second
    seed: int = 1  # synthetic windows: generator seed (the training data used data.synthetic.seed)
    shift: ShiftConfig = field(default_factory=ShiftConfig)
    p_value: float = 0.01  # per-test significance (Bonferroni-corrected over the tests run)
    psi_threshold: float = 0.2  # a numeric feature drifts when KS p < p_value AND PSI > this
    mmd_permutations: int = 200  # embedding test (raised automatically so the corrected p can reach p_value)
    low_confidence: float = II("confidence")  # edge case: no box at or above this score
    near_threshold: float = 0.1  # edge case: a box within this distance of low_confidence
    overlap_iou: float = 0.5  # edge case: two boxes of different classes overlapping this much
    embedding_quantile: float = 0.99  # edge case: farther from the reference than this quantile of its own NN distances
    max_edge_cases: int = 50  # the most telling ones (rarest reasons first, then the lowest confidence)
    # calibrated on the reference's own edge reasons: an image whose reasons are as rare as the rarest
    # edge_rate of the reference is a case; so is every image with a reason the window has more often than
    # the reference does. An in-distribution window has about this share flagged
    edge_rate: float = 0.05
    review_dataset: Optional[str] = None  # FiftyOne dataset for edge cases; default <project>-review-<store>
    on_drift: Optional[str] = None  # when drift is detected: loop (a tick, cvops loop) or a recipe (cvops recipe=<it>)
    drift_window: int = 200  # serve: live drift gauges over the last N requests
    drift_every: int = 50  # serve: recompute them every N requests
    alerts: AlertsConfig = field(default_factory=AlertsConfig)


# ----------------------------------------------------------------- annotate
class AnnotateBackend(Choice):
    """Where people correct the review batch: FiftyOne's in-App annotation, or a Label Studio server."""

    app = "app"
    labelstudio = "labelstudio"


@dataclass
class AnnotateConfig:
    """``cvops annotate`` and ``cvops review``: the human step of the loop (docs/annotate.md)."""

    backend: AnnotateBackend = AnnotateBackend.app
    # boxes of different classes overlapping this much are one object: accepted prelabels keep the most
    # confident, and a reviewer's labels that do so are refused with a row (a contradiction)
    duplicate_iou: float = 0.7
    max_samples: int = 1000  # the most samples one batch pushes (the rest wait for the next push)
    url: str = "http://localhost:8080"  # Label Studio
    api_key_env: str = "LABEL_STUDIO_API_KEY"  # the environment variable holding the Label Studio API key
    timeout_s: float = 30.0  # per Label Studio request


# --------------------------------------------------------------------- loop
@dataclass
class LoopTriggersConfig:
    min_reviewed: int = 1  # reviewed samples not yet in the champion's data that start a challenger
    on_drift: bool = True  # the newest monitor verdict on the champion found drift
    new_data: bool = True  # the recipe's data moved (its curate fingerprint is not the champion's)


@dataclass
class LoopPolicyConfig:
    """When a challenger replaces the champion (docs/loop.md)."""

    metric: str = "mAP50"  # mAP | mAP50 | mAP75, on boxes
    min_gain: float = 0.0  # challenger - champion on the new data (the benchmark when there is none)
    max_regression: float = 0.02  # champion - challenger on the frozen benchmark, overall
    max_class_regression: float = 0.05  # ... and for any class
    max_latency_ratio: float = 1.5  # challenger / champion ONNX latency (batch 1)


@dataclass
class LoopShadowConfig:
    """Shadow traffic before a promotion: servers with serve.shadow_alias run the challenger beside the champion."""

    requests: int = 0  # shadowed requests a later tick waits for before it promotes (0: promote at once)
    alias: str = "staging"  # where the challenger waits (servers follow it with serve.shadow_alias)
    min_f1: float = 0.0  # the challenger's mean box F1 against the champion on live traffic must reach it


@dataclass
class LoopConfig:
    alias: str = "production"  # the champion: the export this registry alias names
    triggers: LoopTriggersConfig = field(default_factory=LoopTriggersConfig)
    retrain: List[str] = field(default_factory=list)  # overrides for the challenger, e.g. [train.max_epochs=50]
    # the challenger starts from the champion's trained weights (model.load_from), unless the recipe or
    # loop.retrain sets model.load_from; false: from the recipe's own start (scratch or pretrained)
    warm_start: bool = True
    benchmark: Optional[str] = None  # a COCO file; null: the test split live at the first tick, pinned by hash
    policy: LoopPolicyConfig = field(default_factory=LoopPolicyConfig)
    shadow: LoopShadowConfig = field(default_factory=LoopShadowConfig)


# ------------------------------------------------------------------ tracker
@dataclass
class TrackerConfig:
    """Experiment tracker, built by :func:`cvops.utils.instantiate`."""

    _target_: str = MISSING  # cvops.track.WandbTracker | cvops.track.NullTracker
    project: Optional[str] = None  # default: the recipe's project
    group: Optional[str] = None
    mode: Optional[str] = None  # offline | online | disabled; WANDB_MODE wins; default offline
    tags: List[str] = field(default_factory=list)


# -------------------------------------------------------------------- root
@dataclass
class PathsConfig:
    store: str = MISSING  # content-addressed artifact store: a folder, or s3://bucket/prefix (see cvops.store)
    # an s3:// store: options for s3fs as they are (endpoint_url, key, secret, client_kwargs, ...); the standard
    # AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE, ...) are read when these are not set
    store_options: Dict[str, Any] = field(default_factory=dict)
    cache: str = MISSING  # an s3:// store: this machine's cache of the artifacts it reads (see cvops.store.s3)
    lease_s: float = 30.0  # an s3:// store: a build lease not renewed for this long is taken over (a dead builder)


@dataclass
class LeaderboardConfig:
    metric: str = "evaluate.val_mAP"  # <stage>.<metric> from run.json
    mode: Mode = Mode.max


@dataclass
class CvopsConfig:
    project: str = MISSING
    # the project's confidence threshold: a box at or above it is a detection a person sees (evaluate's confusion
    # matrix and the App's view, the monitor's and serve's low-confidence test, the prelabels a review accepts)
    confidence: float = 0.3
    # detection (boxes) or instance_segmentation (boxes and masks); null: the model's (model.masks). Checked
    # against model.masks and curate.masks before anything runs
    task: Optional[Task] = None
    stages: List[str] = field(default_factory=lambda: ["curate", "train", "evaluate", "export", "monitor"])
    paths: PathsConfig = field(default_factory=PathsConfig)
    leaderboard: LeaderboardConfig = field(default_factory=LeaderboardConfig)
    lock_timeout_s: float = 3600.0  # how long to wait for a concurrent run building the same artifact
    data: DataConfig = field(default_factory=DataConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)


#: Config groups users select on the command line (``model=yolox_tiny``).
GROUPS = ("data", "curate", "model", "train", "evaluate", "export", "serve", "monitor", "tracker")
