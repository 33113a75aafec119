"""Recipe -> mmengine ``Config`` for an mmdet 3 detector.

The base config is the one ``model.mmdet_config`` names inside the installed
mmdet package. cvops fills in what depends on the project: classes and their
count, the curated COCO exports of each split, image size (every size in the
pipelines scaled from the base config's test size), batch size and workers,
schedule (epochs, lr scaled by batch, optimiser, warm-up then cosine), AMP,
seed, checkpoints (best by val mAP, last), logging and the tracker.
``model.cfg_options`` is applied last, as mmengine ``--cfg-options``.
The result is dumped as ``config.py`` beside the checkpoints, for anyone who
wants to drop to raw mmdet (``Runner.from_cfg(Config.fromfile(...))``).
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cvops.errors import ConfigError
from cvops.schema import ModelConfig, TrainConfig
from cvops.train.inputs import walk

log = logging.getLogger(__name__)  # details: cvops.log (the console shows its warnings)

SIZE_KEYS = ("scale", "img_scale", "crop_size", "size")


class TrainConfigError(ConfigError):
    """The recipe cannot be turned into a training config (with the fix)."""


def base_config_path(name: str) -> Path:
    """``mmdet::rtmdet/x.py`` -> the file inside the installed mmdet package (others: see :mod:`cvops.trust`)."""
    import mmdet

    from cvops.trust import NotAllowed, mmdet_config_path

    try:
        path = mmdet_config_path(name)
    except NotAllowed as e:
        raise TrainConfigError(str(e)) from e
    if not path.is_file():
        raise TrainConfigError(f"model.mmdet_config={name}: {path} does not exist in mmdet {mmdet.__version__}")
    return path


_walk = walk  # every dict in a nested config

def _canonical_size(cfg: Any) -> Tuple[float, float]:
    for t in cfg.get("test_pipeline", []) or []:
        if t.get("type") == "Resize" and t.get("scale"):
            return tuple(float(v) for v in t["scale"])  # type: ignore[return-value]
    return (640.0, 640.0)


def _rescale(node: Any, rx: float, ry: float) -> None:
    """Scale every size-like entry of every transform (and batch resize ranges)."""
    for d in _walk(node):
        if "type" not in d:
            continue
        for k in SIZE_KEYS:
            v = d.get(k)
            if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
                d[k] = (max(32, int(round(v[0] * rx / 32)) * 32), max(32, int(round(v[1] * ry / 32)) * 32))
        if d.get("type") == "BatchSyncRandomResize" and d.get("random_size_range"):
            lo, hi = d["random_size_range"]
            s = (rx + ry) / 2
            d["random_size_range"] = (max(32, int(lo * s)), max(64, int(hi * s)))


JITTER_KEYS = {"RandomResize": "ratio_range", "RandomAffine": "scaling_ratio_range"}


def _set_scale_jitter(cfg: Any, model_name: str, jitter: Sequence[float]) -> None:
    """``train.scale_jitter``: the random rescale range of every training pipeline (mosaic stage and after)."""
    lo_hi = [float(v) for v in jitter]
    if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
        raise TrainConfigError(f"train.scale_jitter={list(jitter)}: give [low, high] with 0 < low <= high, "
                               "e.g. [0.8, 1.25] (null keeps the model's own range)")
    pipelines = [cfg.train_dataloader.get("dataset", {})] + [
        h for h in cfg.get("custom_hooks", []) or [] if h.get("type") == "PipelineSwitchHook"]
    found = 0
    for d in _walk(pipelines):
        key = JITTER_KEYS.get(d.get("type", ""))
        if key:
            d[key] = tuple(lo_hi)
            found += 1
    if not found:
        raise TrainConfigError(f"train.scale_jitter={lo_hi}: {model_name} trains without a random rescale "
                               f"({' or '.join(JITTER_KEYS)}) to set; leave train.scale_jitter null for this model")


def trains_masks(cfg: Any) -> bool:
    """Whether a base config trains instance masks (its training pipeline loads them)."""
    return any(d.get("type") == "LoadAnnotations" and d.get("with_mask")
               for d in _walk([cfg.get("train_dataloader", {}), cfg.get("train_pipeline", [])]))


def _use_mask_bitmaps(cfg: Any, model_name: str, train_export: Path) -> None:
    """Instance-mask models: the curated masks are RLE, which mmdet reads as bitmaps (``poly2mask``)."""
    import json

    anns = json.loads(Path(train_export).read_text())["annotations"]
    if any("segmentation" not in a for a in anns):
        raise TrainConfigError(f"model.mmdet_config={model_name} trains instance masks, but the curated data has "
                               "boxes without masks: set curate.masks=true (with data that has segmentations: "
                               "COCO polygons/RLE, YOLO segment lines, data.synthetic.masks=true)")
    for d in _walk([cfg[k] for k in cfg.keys()]):
        if d.get("type") == "LoadAnnotations" and d.get("with_mask"):
            d["poly2mask"] = True


def _innermost_dataset(ds: Dict[str, Any]) -> Dict[str, Any]:
    while "dataset" in ds and "ann_file" not in ds:
        ds = ds["dataset"]
    return ds


def _set_num_classes(node: Any, n: int) -> int:
    count = 0
    for d in _walk(node):
        if "num_classes" in d:
            d["num_classes"] = n
            count += 1
    return count


def _weights(url: str, what: str, notes: List[str]) -> Optional[str]:
    """The local file of an https checkpoint, checked under weights_only; None (with a note) when its
    download failed. The download itself happened when the fingerprint was computed
    (:func:`cvops.train.inputs.weights_file`): training uses exactly the weights the fingerprint covers."""
    from cvops.detector.checkpoint import cached_path, load

    local = cached_path(url)
    if not local.is_file():
        notes.append(f"{what} {url} are unavailable (offline?; this model is cached under its own fingerprint, a "
                     f"run that can download them trains again): training {'the backbone ' if 'backbone' in what else ''}"
                     "from scratch")
        return None
    load(str(local))  # a corrupt or hostile file fails here, before training
    return str(local)


def _pretrained(model_cfg: Any, load_from: Optional[str], pretrained: bool = True) -> Tuple[Optional[str], List[str]]:
    """Drop unavailable pretrained weights (saying so), or all of them (``pretrained=False``); check a given
    load_from."""
    notes: List[str] = []
    for d in _walk(model_cfg):
        init = d.get("init_cfg")
        if isinstance(init, dict) and init.get("type") == "Pretrained" and not pretrained:
            d["init_cfg"] = None  # model.pretrained=false: from scratch, without asking the network
        elif isinstance(init, dict) and init.get("type") == "Pretrained":
            ckpt = str(init.get("checkpoint", ""))
            if ckpt.startswith("http://"):
                raise TrainConfigError(f"init_cfg checkpoint {ckpt}: remote checkpoints must be https:// URLs")
            if not ckpt.startswith("https://"):  # a file, or mmengine's model zoos (torchvision://, open-mmlab://):
                continue  # mmengine loads those with torch.load, whose default here is weights_only
            local = _weights(ckpt, "pretrained backbone weights", notes)
            if local is None:
                d["init_cfg"] = None
            else:
                init["checkpoint"] = local
    if load_from:
        if "://" in load_from:
            from cvops.trust import NotAllowed, check_load_from

            try:
                check_load_from(load_from)
            except NotAllowed as e:
                raise TrainConfigError(str(e)) from e
            return _weights(load_from, "model.load_from weights", notes), notes
        if not Path(load_from).expanduser().is_file():
            what = "is not a checkpoint file" if Path(load_from).expanduser().exists() else "does not exist"
            raise TrainConfigError(f"model.load_from={load_from} {what}; give a checkpoint path or URL")
        from cvops.detector.checkpoint import load

        load(str(Path(load_from).expanduser()))  # a corrupt file fails here, before anything is written
    return load_from, notes


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's CPU set)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def build(model: ModelConfig, train: TrainConfig, classes: Sequence[str], exports: Dict[str, Path],
          work_dir: Path, vis_backends: Sequence[Dict[str, Any]], cuda: bool) -> Tuple[Any, List[str]]:
    """The mmengine Config for one training run, and notes worth telling the user."""
    from mmengine.config import Config, ConfigDict

    if not classes:
        raise TrainConfigError("the curated dataset has no classes with boxes: nothing to train")
    for split in ("train", "val"):
        import json

        n = len(json.loads(Path(exports[split]).read_text())["images"])
        if n == 0:
            raise TrainConfigError(f"the curated '{split}' split has zero images; change curate.split.ratios "
                                   "or add data")
    cfg = Config.fromfile(str(base_config_path(model.mmdet_config)))
    notes: List[str] = []

    # classes
    if _set_num_classes(cfg.model, len(classes)) == 0:
        raise TrainConfigError(f"{model.mmdet_config} has no num_classes to set; cvops cannot train it")
    metainfo = dict(classes=tuple(classes))

    if not cuda:  # SyncBN needs CUDA; plain BN on CPU (also for gloo data parallel)
        for d in _walk(cfg.model):
            if d.get("type") == "SyncBN":
                d["type"] = "BN"
        if cfg.model.get("type") == "RTMDet":  # it converts its BNs to SyncBN itself when distributed
            cfg.model["use_syncbn"] = False

    # image size
    w, h = (float(v) for v in model.image_size)
    bw, bh = _canonical_size(cfg)
    rx, ry = w / bw, h / bh
    for key in ("train_pipeline", "test_pipeline", "train_dataloader", "val_dataloader", "test_dataloader",
                "custom_hooks", "model"):
        if key in cfg:
            _rescale(cfg[key], rx, ry)
    if "img_scale" in cfg:
        cfg.img_scale = (int(w), int(h))

    # data
    workers = min(train.num_workers, usable_cores())
    if workers < train.num_workers:  # more loader processes than cores only fight over them (torch warns too)
        notes.append(f"train.num_workers={train.num_workers} is more than the {workers} usable core(s) here: "
                     f"the data loaders use {workers}")
    for split, loader in (("train", "train_dataloader"), ("val", "val_dataloader"), ("test", "test_dataloader")):
        dl = cfg[loader]
        ds = _innermost_dataset(dl["dataset"])
        ds.update(data_root="", ann_file=str(exports[split]), data_prefix=dict(img=""), metainfo=metainfo,
                  backend_args=None)
        if split == "train":
            ds["filter_cfg"] = dict(filter_empty_gt=False, min_size=1)
            dl["batch_size"] = train.batch_size
        else:
            ds["test_mode"] = True
            dl["batch_size"] = 1
        dl["num_workers"] = workers
        dl["persistent_workers"] = workers > 0
        if split != "train" or "sampler" not in dl:
            dl["sampler"] = dict(type="DefaultSampler", shuffle=split == "train")
    masked = trains_masks(cfg)
    if masked:
        _use_mask_bitmaps(cfg, model.mmdet_config, exports["train"])
    for ev, split in (("val_evaluator", "val"), ("test_evaluator", "test")):
        cfg[ev] = dict(type="CocoMetric", ann_file=str(exports[split]), metric=["bbox", "segm"] if masked else "bbox",
                       format_only=False, classwise=True, backend_args=None)

    # schedule
    epochs = train.max_epochs
    gpus = train.gpus if train.launcher != "none" else 1
    lr = train.lr * train.batch_size * gpus / train.base_batch_size
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=epochs, val_interval=train.val_interval)
    opt = dict(type=train.optimizer, lr=lr, weight_decay=train.weight_decay)
    if train.optimizer == "SGD":
        opt["momentum"] = 0.9
    wrapper = dict(type="AmpOptimWrapper" if (train.amp and cuda) else "OptimWrapper", optimizer=opt)
    if "paramwise_cfg" in cfg.get("optim_wrapper", {}):
        wrapper["paramwise_cfg"] = cfg.optim_wrapper.paramwise_cfg
    if "clip_grad" in cfg.get("optim_wrapper", {}):
        wrapper["clip_grad"] = cfg.optim_wrapper.clip_grad
    cfg.optim_wrapper = wrapper
    cfg.auto_scale_lr = dict(enable=False, base_batch_size=train.base_batch_size)
    if not 0.0 <= train.lr_decay_from < 1.0:
        raise TrainConfigError(f"train.lr_decay_from={train.lr_decay_from}: give the fraction of max_epochs at which "
                               "the cosine decay begins, 0 <= value < 1 (0: from the start, 0.5: the second half)")
    decay_from = min(epochs - 1, int(round(epochs * train.lr_decay_from)))
    if train.max_minutes is not None and epochs > 1:
        decay_from = max(1, decay_from)  # the first epoch is timed before the decay is laid over the budget
    cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=max(1, train.warmup_iters)),
        dict(type="CosineAnnealingLR", eta_min=lr * 0.05, begin=decay_from, end=epochs, T_max=epochs - decay_from,
             by_epoch=True, convert_to_iter_based=True),
    ]
    if train.scale_jitter is not None:
        _set_scale_jitter(cfg, model.mmdet_config, train.scale_jitter)
    from cvops.train.hooks import mosaic_switch_epoch, yolox_last_epochs

    strong = train.mosaic_epochs
    share = int(strong) / epochs if strong is not None else None  # the budget hook re-lays the same share
    for hook in cfg.get("custom_hooks", []) or []:  # base schedules are written for 300 epochs
        if hook.get("type") == "PipelineSwitchHook":
            hook["switch_epoch"] = mosaic_switch_epoch(epochs, share)
        if hook.get("type") == "YOLOXModeSwitchHook":
            hook["num_last_epochs"] = yolox_last_epochs(epochs, share)
    cfg.custom_hooks = list(cfg.get("custom_hooks", []) or []) + [dict(type="CvopsFiniteLossHook"),
                                                                dict(type="CvopsProgressHook")]
    if train.max_minutes is not None:
        if not train.max_minutes > 0:
            raise TrainConfigError(f"train.max_minutes={train.max_minutes}: a wall-clock budget in minutes, more than "
                                   "0 (null: none)")
        cfg.custom_hooks.append(dict(type="CvopsTimeBudgetHook", max_minutes=float(train.max_minutes),
                                     decay_from=float(train.lr_decay_from),
                                     mosaic_share=share))

    # hooks, logging, checkpoints
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=train.log_interval)
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1, max_keep_ckpts=2, save_last=True,
                                        save_best="coco/bbox_mAP", rule="greater")
    cfg.log_processor = dict(type="LogProcessor", window_size=train.log_interval, by_epoch=True)
    cfg.visualizer = dict(type="DetLocalVisualizer", name="visualizer",
                          vis_backends=[dict(type="LocalVisBackend"), *vis_backends])
    cfg.randomness = dict(seed=train.seed, deterministic=train.deterministic)
    cfg.env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                       dist_cfg=dict(backend="nccl" if cuda else "gloo"))
    cfg.launcher = train.launcher.value
    cfg.work_dir = str(work_dir)
    cfg.load_from, more = _pretrained(cfg.model, model.load_from, model.pretrained)
    notes += more
    cfg.resume = False
    cfg.default_scope = "mmdet"

    if model.cfg_options:
        from cvops.trust import NotAllowed, check_mmengine_options, registry_names

        try:  # checked again here, on the values this job really got (a sweep may have set them)
            check_mmengine_options(model.cfg_options, registry_names=registry_names())
        except NotAllowed as e:
            raise TrainConfigError(str(e)) from e
        cfg.merge_from_dict(copy.deepcopy(dict(model.cfg_options)))
        for d in _walk(cfg.model):  # an https checkpoint set here: the file the fingerprint covers, as above
            init = d.get("init_cfg")
            if isinstance(init, dict) and str(init.get("checkpoint", "")).startswith("https://"):
                local = _weights(str(init["checkpoint"]), "model.cfg_options weights", notes)
                if local is None:
                    d["init_cfg"] = None
                else:
                    init["checkpoint"] = local
    if not isinstance(cfg.model, ConfigDict):
        cfg.model = ConfigDict(cfg.model)
    return cfg, notes
