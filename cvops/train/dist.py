"""Worker entry for distributed training: ``torchrun ... -m cvops.train.dist config.py``.

mmengine's launcher (``launcher='pytorch'``) reads the rank and world size
torchrun sets; each process builds the same Runner from the dumped config.
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--resume", default=None)
    args = ap.parse_args()
    import logging

    from mmengine.config import Config

    from cvops.console import install, verbose

    # a worker's console: mmengine's lines with -v (CVOPS_VERBOSE), else warnings; the parent's cvops.log
    # does not see this process (mmengine writes its own log into the work dir)
    logging.basicConfig(level=logging.INFO if verbose() else logging.WARNING, format="%(message)s")
    install()

    from cvops.train import hooks  # noqa: F401  (registers CvopsFiniteLossHook)
    from cvops.detector.checkpoint import allow_mmengine_checkpoints

    allow_mmengine_checkpoints()
    cfg = Config.fromfile(args.config)
    cfg.launcher = "pytorch"
    import torch

    if not torch.cuda.is_available():
        # CPU data parallel (gloo): mmengine's pytorch launcher always calls
        # torch.cuda.set_device and gives DDP a CUDA device id; neither exists here.
        torch.cuda.set_device = lambda *_: None  # type: ignore[assignment]
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False,
                                     find_unused_parameters=False)
    if args.resume:
        cfg.load_from, cfg.resume = args.resume, True
    from cvops.train.stage import quiet_runner

    quiet_runner(cfg).train()


if __name__ == "__main__":
    main()
