"""Train: configs for every model, the checkpoint allow-list, resume, NaN guard, W&B offline."""

from __future__ import annotations

import json
import pickle
import signal
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf
import torch

from cvops.config import compose_config
from cvops.recipes import CONF_DIR

TINY = ["data.synthetic.num_images=24", "data.synthetic.videos=0", "data.synthetic.empty_fraction=0",
        "model.image_size=[128,128]", "train.batch_size=4", "train.base_batch_size=4", "train.lr=0.002",
        "train.warmup_iters=5", "train.log_interval=2", "tracker=none"]


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """One tiny curated dataset shared by the tests of this module."""
    from cvops.runner import Runner

    store = tmp_path_factory.mktemp("store")
    cfg = compose_config(["project=traintest", "stages=[curate]", f"paths.store={store}", *TINY])
    m = Runner(cfg, store.parent / "curate_run").run()
    return store, m.data["stages"]["curate"]


MASKS = ["data.synthetic.masks=true", "curate.masks=true"]


@pytest.fixture(scope="module")
def curated_masks(tmp_path_factory):
    """The same tiny data with instance masks (for instance-segmentation models)."""
    from cvops.runner import Runner

    store = tmp_path_factory.mktemp("store_masks")
    cfg = compose_config(["project=traintest", "stages=[curate]", f"paths.store={store}", *TINY, *MASKS])
    m = Runner(cfg, store.parent / "curate_masks_run").run()
    return store, m.data["stages"]["curate"]


@pytest.mark.parametrize("model", [p.stem for p in sorted((CONF_DIR / "model").glob("*.yaml"))])
def test_every_model_config_builds_and_runs_a_forward_pass(model, curated, curated_masks, tmp_path):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner

    from cvops.store import FolderStore
    from cvops.train import mmconfig

    register_all_modules()
    store, cur = curated
    art = FolderStore(store).get("curate", cur["fingerprint"])
    cfg_all = compose_config(["project=traintest", f"model={model}", *TINY])
    exports = {s: art.path(f"coco_{s}") for s in ("train", "val", "test")}
    from mmengine.config import Config

    masked = mmconfig.trains_masks(Config.fromfile(str(mmconfig.base_config_path(cfg_all.model.mmdet_config))))
    assert cfg_all.model.masks == masked, f"conf/model/{model}.yaml: masks must say whether its mmdet config predicts masks"
    if masked:  # an instance-segmentation model refuses boxes-only data, naming the fix; trains on masks
        with pytest.raises(mmconfig.TrainConfigError, match="curate.masks=true"):
            mmconfig.build(OmegaConf.to_object(cfg_all.model), OmegaConf.to_object(cfg_all.train),
                           art.metrics["classes"], exports, tmp_path, [], cuda=False)
        store, cur = curated_masks
        art = FolderStore(store).get("curate", cur["fingerprint"])
        exports = {s: art.path(f"coco_{s}") for s in ("train", "val", "test")}
    cfg, notes = mmconfig.build(OmegaConf.to_object(cfg_all.model), OmegaConf.to_object(cfg_all.train), art.metrics["classes"], exports, tmp_path,
                                [], cuda=False)
    assert all(n.endswith("from scratch") for n in notes)  # offline: says so instead of failing
    heads = [d for d in mmconfig._walk(cfg.model) if "num_classes" in d]
    assert heads and all(d["num_classes"] == 3 for d in heads)
    assert cfg.train_dataloader.batch_size == 4
    net = MODELS.build(cfg.model)
    loader = Runner.build_dataloader(cfg.val_dataloader)
    batch = next(iter(loader))
    net.eval()
    with torch.no_grad():
        out = net.test_step(batch)
    assert out[0].pred_instances.bboxes.shape[-1] == 4
    if masked:
        assert "masks" in out[0].pred_instances and set(cfg.val_evaluator.metric) == {"bbox", "segm"}
        loader = Runner.build_dataloader(cfg.train_dataloader)  # RLE masks load as bitmaps and train
        net.train()
        losses = net.loss(*net.data_preprocessor(next(iter(loader)), True).values())
        assert any("mask" in k for k in losses) and all(torch.isfinite(v).all() for v in
                                                        [x if torch.is_tensor(x) else torch.stack(x)
                                                         for x in losses.values()])
    assert max(out[0].metainfo["batch_input_shape"]) <= 160  # the recipe's image size, not the base config's

    # train.scale_jitter sets every random rescale of the training pipelines, or says the model has none
    train = OmegaConf.to_object(compose_config(["project=traintest", f"model={model}", *TINY,
                                                "train.scale_jitter=[0.8,1.25]"]).train)
    jittered = [d for d in mmconfig._walk([cfg.train_dataloader, cfg.get("custom_hooks", [])])
                if d.get("type") in mmconfig.JITTER_KEYS]
    if jittered:
        cfg2, _ = mmconfig.build(OmegaConf.to_object(cfg_all.model), train, art.metrics["classes"], exports, tmp_path,
                                 [], cuda=False)
        ranges = [tuple(d[mmconfig.JITTER_KEYS[d["type"]]]) for d in mmconfig._walk(
            [cfg2.train_dataloader, cfg2.get("custom_hooks", [])]) if d.get("type") in mmconfig.JITTER_KEYS]
        assert len(ranges) == len(jittered) and set(ranges) == {(0.8, 1.25)}
    else:
        with pytest.raises(mmconfig.TrainConfigError, match="without a random rescale"):
            mmconfig.build(OmegaConf.to_object(cfg_all.model), train, art.metrics["classes"], exports, tmp_path,
                           [], cuda=False)
    # train.mosaic_epochs: where the pipeline switch lands in the built config (null: the base's 20 of 300)
    for epochs, strong, switch_at, yolox_last in ((10, 1, 1, 9), (30, None, 28, 2), (30, 0, 0, 30)):
        train2 = OmegaConf.to_object(cfg_all.train)
        train2.max_epochs, train2.mosaic_epochs = epochs, strong
        cfg3, _ = mmconfig.build(OmegaConf.to_object(cfg_all.model), train2, art.metrics["classes"], exports, tmp_path,
                                 [], cuda=False)
        for h in cfg3.get("custom_hooks", []):
            if h["type"] == "PipelineSwitchHook":
                assert h["switch_epoch"] == switch_at, (model, epochs, strong, h["switch_epoch"])
            if h["type"] == "YOLOXModeSwitchHook":
                assert h["num_last_epochs"] == yolox_last, (model, epochs, strong, h["num_last_epochs"])
    train.scale_jitter = [1.5, 0.5]
    with pytest.raises(mmconfig.TrainConfigError, match="0 < low <= high"):
        mmconfig.build(OmegaConf.to_object(cfg_all.model), train, art.metrics["classes"], exports, tmp_path,
                       [], cuda=False)


def test_lr_decay_from_holds_the_peak_lr_then_decays_by_cosine(curated, tmp_path):
    from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR

    from cvops.store import FolderStore
    from cvops.train import mmconfig

    store, cur = curated
    art = FolderStore(store).get("curate", cur["fingerprint"])
    exports = {s: art.path(f"coco_{s}") for s in ("train", "val", "test")}

    def lrs(decay_from, epochs=4, per_epoch=5):
        cfg_all = compose_config(["project=traintest", *TINY, f"train.max_epochs={epochs}", "train.warmup_iters=2",
                                  f"train.lr_decay_from={decay_from}"])
        cfg, _ = mmconfig.build(OmegaConf.to_object(cfg_all.model), OmegaConf.to_object(cfg_all.train),
                                art.metrics["classes"], exports, tmp_path, [], cuda=False)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
        warm, cos = (dict(s) for s in cfg.param_scheduler)
        scheds = [LinearLR(opt, **{k: v for k, v in warm.items() if k != "type"}),
                  CosineAnnealingLR.build_iter_from_epoch(
                      opt, epoch_length=per_epoch,
                      **{k: v for k, v in cos.items() if k not in ("type", "convert_to_iter_based")})]
        out = []
        for _ in range(epochs * per_epoch):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            for s in scheds:
                s.step()
        return cfg.optim_wrapper.optimizer.lr, out

    peak, half = lrs(0.5)
    assert half[2:10] == pytest.approx([peak] * 8)  # warm-up done, flat through the first half
    assert all(a > b for a, b in zip(half[10:], half[11:]))  # then strictly decaying
    assert half[-1] < 0.2 * peak
    _, zero = lrs(0.0)
    assert zero[5] < peak and zero[10] < zero[5]  # 0.0: the decay starts at once
    with pytest.raises(mmconfig.TrainConfigError, match="lr_decay_from=1.0"):
        lrs(1.0)


def test_checkpoint_allow_list_loads_mmengine_but_refuses_code(tmp_path):
    import numpy as np
    from mmengine.logging import MessageHub

    from cvops.detector.checkpoint import allow_mmengine_checkpoints, load

    allow_mmengine_checkpoints()  # what every cvops training process does before saving
    hub = MessageHub.get_instance("allowlist")
    hub.update_scalar("train/loss", 1.0)
    good = tmp_path / "good.pth"
    torch.save({"meta": {"epoch": np.int64(3), "best": np.float64(0.5)}, "message_hub": hub.state_dict(),
                "state_dict": {"w": torch.ones(2)}}, good)
    ckpt = load(str(good))
    assert int(ckpt["meta"]["epoch"]) == 3
    assert ckpt["message_hub"]["log_scalars"]["train/loss"].mean() == 1.0  # statistics rebuilt on load

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(ValueError, match="not a loadable checkpoint"):
        load(str(bad))
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="corrupt.pth"):
        load(str(tmp_path / "corrupt.pth"))


def _train_cmd(*extra):
    return ("project=traintest", "stages=[curate,train]", *TINY, *extra)


@pytest.mark.slow
def test_train_then_kill_and_resume_then_extend(cvops):
    proc = cvops.popen(*_train_cmd("train.max_epochs=3", "train.val_interval=3"))
    t0 = time.time()
    store = cvops.store
    while time.time() - t0 < 240:  # wait for the first complete checkpoint, then kill mid-training
        if list(store.glob("train/*/last_checkpoint")):
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (work,) = [p for p in store.glob("train/*") if p.is_dir()]
    assert not (work / "manifest.json").exists() and (work / "epoch_1.pth").exists()

    r = cvops(*_train_cmd("train.max_epochs=3", "train.val_interval=3", "train.resume=true"), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"resuming from {work}" in r.stdout  # the console says so; mmengine's own line is in cvops.log
    assert "resumed epoch" in cvops.logs().lower()
    m = json.loads((work / "manifest.json").read_text())["metrics"]
    assert m["epochs"] == 3
    rows = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
    assert min(r["epoch"] for r in rows if "loss" in r) == 1  # the first run's log is kept
    assert (work / "best.pth").resolve().is_file() and (work / "config.py").is_file()

    r = cvops(*_train_cmd("train.max_epochs=4", "train.val_interval=3", "train.resume=true"), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"resuming from {work}" in r.stdout
    new = [p for p in store.glob("train/*") if p.is_dir() and p != work]
    assert len(new) == 1
    m2 = json.loads((new[0] / "manifest.json").read_text())["metrics"]
    assert m2["epochs"] == 4
    trained = [json.loads(l)["epoch"] for l in (new[0] / "metrics.jsonl").read_text().splitlines() if "loss" in l]
    assert set(trained) == {4}  # only the extra epoch ran


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_and_iteration(cvops):
    r = cvops(*_train_cmd("train.max_epochs=1", "train.lr=1e12", "train.warmup_iters=1"), timeout=600)
    assert r.returncode != 0
    assert "loss is nan at epoch 1, iteration" in (r.stdout + r.stderr).replace("inf", "nan")


@pytest.mark.slow
def test_wandb_offline_run_is_readable_by_wandb(cvops):
    r = cvops(*_train_cmd("train.max_epochs=1", "tracker=wandb"), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = cvops.run_jsons()[-1]
    wandb_dir = Path(run["stages"]["train"]["artifacts"]["wandb_run"])
    (log_file,) = list(wandb_dir.glob("*.wandb"))
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from helpers.wandb_log import records

    keys, config = set(), {}
    for rec in records(log_file):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            keys.update(item.key or "/".join(item.nested_key) for item in rec.history.item)
        elif kind == "config":  # mmengine's resolved config
            config.update({item.key: item.value_json for item in rec.config.update})
        elif kind == "run":  # the run's own config: cvops' resolved recipe and dataset version
            config.update({item.key: item.value_json for item in rec.run.config.update})
    assert {"loss", "lr"} <= keys, keys
    assert any(k.startswith("coco/bbox_mAP") or k.startswith("coco/") for k in keys) or "data_time" in keys
    assert {"dataset_version", "recipe", "curate", "train_cfg", "model"} <= set(config)
    wandb_cli = Path(cvops.cmd([])[0]).parent / "wandb"
    sync = __import__("subprocess").run([str(wandb_cli), "sync", "--dry-run", str(wandb_dir)],
                                        capture_output=True, text=True, env=cvops.env)
    assert sync.returncode == 0 and "Would sync 1 run" in sync.stdout + sync.stderr

@pytest.mark.slow
def test_two_job_training_sweep_shares_curate_and_ranks_by_val_map(cvops):
    import csv

    r = cvops("-m", "project=traintest", "stages=[curate,train,evaluate]", *TINY, "train.max_epochs=1",
              "train.lr=0.001,0.003", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (sweep,) = list(cvops.workdir.glob("outputs/traintest/multirun/*/*"))
    rows = list(csv.DictReader(open(sweep / "leaderboard.csv")))
    assert len(rows) == 2 and {row["status"] for row in rows} == {"ok"}
    scores = [float(row["evaluate.val_mAP"]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    runs = [json.loads((sweep / j / "run.json").read_text()) for j in ("0", "1")]
    assert {r["stages"]["curate"]["status"] for r in runs} == {"ran", "cached"}
    for run in runs:
        ev = run["stages"]["evaluate"]["metrics"]
        assert {"mAP", "mAP50", "mAP75", "per_class_AP", "val_mAP"} <= set(ev)
        assert ev["contract_abs_diff"] <= 1e-3


@pytest.mark.slow
def test_distributed_training_on_cpu_with_gloo(cvops):
    r = cvops(*_train_cmd("train.max_epochs=1", "train.launcher=pytorch", "train.gpus=2"), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "torch.distributed.run --standalone --nproc_per_node=2" in cvops.logs()
    run = cvops.run_jsons()[-1]
    assert run["stages"]["train"]["status"] == "ran"
    assert run["stages"]["train"]["metrics"]["epochs"] == 1


def test_two_node_training_on_loopback(cvops):
    """Multi-node training (issue #12): node 0 runs the train stage with train.nnodes=2, node 1 joins it with
    `cvops train-worker` (same command line, its own process; torchrun's static rendezvous on loopback). One
    artifact is committed; its checkpoint has the structure of a one-node run's."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from helpers.net import free_port

    port = free_port()
    cvops(*_train_cmd("stages=[curate]"), timeout=300)
    multi = ("train.max_epochs=1", "train.launcher=pytorch", "train.nnodes=2", f"train.master_port={port}")
    node0 = cvops.popen(*_train_cmd(*multi))
    worker = cvops.popen("train-worker", *_train_cmd(*multi, "train.node_rank=1"))
    out0, _ = node0.communicate(timeout=900)  # (stderr is in stdout)
    out1, _ = worker.communicate(timeout=300)
    assert node0.returncode == 0, out0[-3000:]
    assert worker.returncode == 0, out1[-3000:]
    assert "--nnodes=2 --node_rank=1" in out1 and "--nnodes=2 --node_rank=0" in cvops.logs()
    run = cvops.run_jsons()[-1]["stages"]["train"]
    assert run["status"] == "ran" and run["metrics"]["epochs"] == 1
    r = cvops(*_train_cmd("train.max_epochs=1"), timeout=900)  # the same training on one machine
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    single = cvops.run_jsons()[-1]["stages"]["train"]
    assert single["fingerprint"] != run["fingerprint"]

    def structure(stage):
        ckpt = torch.load(Path(stage["artifacts"]["dir"]) / "best.pth", map_location="cpu", weights_only=False)
        return {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}

    assert structure(run) == structure(single)
    # a worker for a build that is done has nothing to join; node 0's own rank is refused
    r = cvops("train-worker", *_train_cmd(*multi, "train.node_rank=1"), timeout=120)
    assert r.returncode == 2 and "already built" in r.stderr
    r = cvops("train-worker", *_train_cmd(*multi, "train.node_rank=0"), timeout=120)
    assert r.returncode == 2 and "node 1..1" in r.stderr


def test_two_node_training_with_an_s3_store(cvops, tmp_path, monkeypatch, s3):
    """The same with the store in a bucket (a real S3-compatible server): node 0 publishes its training config
    there (train/<fp>.pending/config.py), the worker fetches it and the curate artifact, both join, node 0
    commits the artifact to the bucket."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from helpers.net import free_port

    env = {**s3.env, "CVOPS_STORE": f"s3://{s3.bucket()}/store", "CVOPS_CACHE_DIR": str(tmp_path / "cache")}
    multi = ("train.max_epochs=1", "train.launcher=pytorch", "train.nnodes=2", f"train.master_port={free_port()}")
    worker = cvops.popen("train-worker", *_train_cmd(*multi, "train.node_rank=1"), env=env)
    node0 = cvops.popen(*_train_cmd(*multi), env=env)
    out0, _ = node0.communicate(timeout=900)
    out1, _ = worker.communicate(timeout=300)
    assert node0.returncode == 0, out0[-3000:]
    assert worker.returncode == 0, out1[-3000:]
    assert "--nnodes=2 --node_rank=1" in out1
    run = cvops.run_jsons()[-1]["stages"]
    assert run["curate"]["status"] == "ran" and run["train"]["status"] == "ran"
    from helpers.s3 import use

    from cvops.store.s3 import ObjectStore

    use(s3, monkeypatch)  # (this process reads the bucket too)
    store = ObjectStore(env["CVOPS_STORE"], {}, tmp_path / "probe")
    fp = run["train"]["fingerprint"]
    assert store.is_complete("train", fp) and store.fs.exists(f"{store.key}/train/{fp}.pending/config.py")
    assert store.get("train", fp).path("checkpoint").is_file()


def test_corrupt_load_from_is_refused_before_training(tmp_path):
    from cvops.train.mmconfig import TrainConfigError, _pretrained

    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights.pth"):
        _pretrained({}, str(bad))
    with pytest.raises(TrainConfigError, match="does not exist"):
        _pretrained({}, str(tmp_path / "missing.pth"))
    url, notes = _pretrained({"backbone": {"init_cfg": {"type": "Pretrained", "checkpoint": "https://invalid.invalid/x.pth"}}},
                             "https://invalid.invalid/y.pth")
    assert url is None and len(notes) == 2 and all("from scratch" in n for n in notes)



def test_pretrained_false_trains_from_scratch_without_asking_the_network(monkeypatch):
    """model.pretrained=false drops the base config's backbone weights before any download or HEAD request,
    so a recipe gives the same model on a machine with and without internet access."""
    from cvops.train import mmconfig

    def no_network(*args, **kwargs):
        raise AssertionError(f"asked the network for {args}")

    monkeypatch.setattr("cvops.detector.checkpoint.download", no_network)
    monkeypatch.setattr("urllib.request.urlopen", no_network)
    model = {"backbone": {"init_cfg": {"type": "Pretrained", "checkpoint": "https://example.org/x.pth"}},
             "neck": {"init_cfg": {"type": "Kaiming"}}}
    url, notes = mmconfig._pretrained(model, None, pretrained=False)
    assert url is None and notes == []
    assert model["backbone"]["init_cfg"] is None and model["neck"]["init_cfg"] == {"type": "Kaiming"}


def test_resume_lineage_covers_code_libraries_and_weights():
    """``train.resume`` continues a checkpoint of the same lineage only: other cvops code, another mmdet (both in
    the code version) or other starting weights (train's external state) start a new lineage."""
    from types import SimpleNamespace

    from cvops.schema import ModelConfig, TrainConfig
    from cvops.train.stage import _lineage

    def ctx(code="c1", external="w1", epochs=10):
        config = SimpleNamespace(train=TrainConfig(max_epochs=epochs), model=ModelConfig(name="m", mmdet_config="x"))
        return SimpleNamespace(config=config, inputs={"curate": SimpleNamespace(fingerprint="f")}, code=code,
                               external=external)

    assert _lineage(ctx()) == _lineage(ctx(epochs=80))  # more epochs continue the same lineage
    assert _lineage(ctx(code="c2")) != _lineage(ctx())
    assert _lineage(ctx(external="w2")) != _lineage(ctx())



def test_resume_takes_a_lineage_checkpoint_only_when_it_is_short_of_max_epochs(tmp_path):
    """A 1-epoch run of the lineage of a finished 12-epoch run starts fresh (resuming epoch 12 would make it the
    12-epoch model), a 24-epoch run continues epoch 12, and a killed run's own checkpoint comes first."""
    import os
    from types import SimpleNamespace

    from cvops.train.stage import LINEAGE, _resume_point

    def run(name, epoch, mtime):
        d = tmp_path / name
        d.mkdir()
        (d / LINEAGE).write_text(json.dumps({"lineage": "L"}))
        (d / f"epoch_{epoch}.pth").write_bytes(b"x")
        (d / "last_checkpoint").write_text(str(d / f"epoch_{epoch}.pth"))
        os.utime(d / "last_checkpoint", (mtime, mtime))
        return d

    run("done12", 12, 200)
    run("other", 3, 100)
    me = tmp_path / "me"
    me.mkdir()

    def ctx(epochs, resuming=False):
        return SimpleNamespace(workdir=me, resuming=resuming, config=SimpleNamespace(train=SimpleNamespace(max_epochs=epochs)))

    assert _resume_point(ctx(24), "L") == str(tmp_path / "done12" / "epoch_12.pth")
    assert _resume_point(ctx(1), "L") is None  # both are at or past one epoch
    assert _resume_point(ctx(12), "L") == str(tmp_path / "other" / "epoch_3.pth")
    (me / "epoch_2.pth").write_bytes(b"x")
    (me / "last_checkpoint").write_text(str(me / "epoch_2.pth"))
    assert _resume_point(ctx(12, resuming=True), "L") == str(me / "epoch_2.pth")

def test_max_minutes_plans_again_from_later_epochs_until_the_decay_begins(tmp_path, monkeypatch):
    """A first epoch slowed by start-up (or a busy machine) plans too few epochs: the later epochs' mean time
    plans again, moving the decay and the end; once the decay has begun, its start stays and its end moves."""
    from types import SimpleNamespace

    from cvops.train.hooks import TimeBudgetHook

    clock = [0.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])
    cos = SimpleNamespace(begin=10 * 4, end=100 * 4, T_max=90 * 4)
    class Loop(SimpleNamespace):  # mmengine's loop: max_epochs reads _max_epochs
        max_epochs = property(lambda self: self._max_epochs)

    loop = Loop(_max_epochs=100, _max_iters=400, dataloader=[0] * 4, val_begin=1, val_interval=1)
    runner = SimpleNamespace(train_loop=loop, param_schedulers=[cos], hooks=[], iter=4, epoch=1, work_dir=str(tmp_path), rank=0,
                             val_loop=object())
    hook = TimeBudgetHook(max_minutes=10, decay_from=0.5)
    hook.before_train(SimpleNamespace(**{**vars(runner), "epoch": 0}))
    clock[0] = 60.0  # the first epoch and its validation: a slow minute
    hook.after_val_epoch(runner, {})
    assert hook.planned == 1 + int((570 - 60) // 60) == 9 and cos.begin == 4 * 4 and cos.end == 9 * 4
    for done in range(2, 5):  # the next epochs take 20 s each: room for many more
        clock[0] = 60.0 + 20 * (done - 1)
        runner.epoch, runner.iter = done - 1, done * 4
        hook.after_train_epoch(runner)
    assert hook.planned == 4 + int((570 - 120) // 20) == 26 and cos.end == 26 * 4 and cos.begin == 13 * 4
    assert hook.replans >= 1
    begin = cos.begin
    runner.iter, runner.epoch = begin + 8, 14  # the decay has begun: its start stays, its end follows the clock
    clock[0] = 60.0 + 20 * 14 + 100  # 100 s lost to something else
    hook.after_train_epoch(runner)
    assert cos.begin == begin and hook.planned == 15 + int((570 - 440) // (380 / 14)) and cos.end == hook.planned * 4
    assert cos.T_max == cos.end - cos.begin


def test_max_minutes_keeps_the_mosaic_share_of_the_planned_epochs():
    """train.mosaic_epochs is a share of max_epochs when the budget plans the epochs: one of 300 stays about
    one epoch, null keeps the base schedule's share (all but the last 20 of 300), 0 none. (The share used to
    be read as the epochs *without* mosaic, so mosaic_epochs=1 ran mosaic to the last epoch.)"""
    from types import SimpleNamespace

    from cvops.train.hooks import TimeBudgetHook, mosaic_switch_epoch

    assert mosaic_switch_epoch(48, 1 / 300) == 1
    assert mosaic_switch_epoch(48, 150 / 300) == 24
    assert mosaic_switch_epoch(48, None) == 45 and mosaic_switch_epoch(5, None) == 4
    assert mosaic_switch_epoch(48, 0.0) == 0 and mosaic_switch_epoch(3, 1.0) == 3
    from mmdet.engine.hooks import PipelineSwitchHook, YOLOXModeSwitchHook

    switch, yolox = PipelineSwitchHook(switch_epoch=299, switch_pipeline=[]), YOLOXModeSwitchHook(num_last_epochs=15)
    loop = SimpleNamespace(_max_epochs=300, _max_iters=1200, dataloader=[0] * 4)
    for share, first, last in ((1 / 300, 1, 29), (None, 28, 2)):
        hook = TimeBudgetHook(max_minutes=10, mosaic_share=share)
        hook._relay(SimpleNamespace(train_loop=loop, param_schedulers=[], hooks=[hook, switch, yolox], iter=4), 30)
        assert (switch.switch_epoch, yolox.num_last_epochs) == (first, last), (share, switch, yolox)


@pytest.mark.slow
def test_max_minutes_lays_the_schedule_over_the_budget_and_ends_within_it(cvops):
    """train.max_minutes: the first epoch is timed, the epochs that fit are planned (far fewer than
    max_epochs), the cosine decay ends with them (the last lr is the floor, not a cut-off peak), and
    training ends within the budget."""
    budget_min = 0.25
    r = cvops(*_train_cmd("train.max_epochs=200", f"train.max_minutes={budget_min}", "train.lr_decay_from=0.0"),
              timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (work,) = [p for p in cvops.store.glob("train/*") if p.is_dir()]
    m = json.loads((work / "manifest.json").read_text())["metrics"]
    tb = m["time_budget"]
    assert 1 <= tb["planned_epochs"] < 200, tb
    assert tb["train_s"] <= budget_min * 60 + 2 * tb["first_epoch_s"], tb  # at worst one epoch past it
    assert f"train.max_minutes={budget_min:g}: {tb['planned_epochs']} planned" in r.stdout
    lrs = [row["lr"] for row in (json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines())
           if "lr" in row]
    peak = max(lrs)
    if tb["stopped_at_budget"]:  # the machine slowed after the timed epoch: cut, and said so
        assert m["epochs"] <= tb["planned_epochs"] and "the budget ran out, stopped" in r.stdout
    else:  # the planned end: the cosine decayed to (near) its floor, 0.05 x peak
        assert m["epochs"] == tb["planned_epochs"] and lrs[-1] < 0.15 * peak, (lrs[-1], peak, tb)
    r = cvops(*_train_cmd("train.max_epochs=2", "train.max_minutes=0"), timeout=300)
    assert r.returncode == 2 and "train.max_minutes=0" in r.stderr, r.stderr
