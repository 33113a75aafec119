"""What train reads from outside the recipe: the state of its weights and config files enters its
fingerprint.

A recipe names weights and configs by path or URL, so the name alone cannot say what training
starts from. :func:`signature` (train's ``external``) covers:

- ``model.load_from`` and every local ``checkpoint`` in ``model.cfg_options``: the file's state
  (size and modification time; content hash up to 4 MiB), so a checkpoint replaced in place retrains;
- a model config outside the mmdet package (``$CVOPS_TRUSTED_CONFIGS``): it and its ``_base_`` files
  by content (the mmdet package's own configs are covered by its version);
- pretrained weights behind an https URL (the base config's backbone with ``model.pretrained``, a
  ``load_from`` or ``cfg_options`` URL): the file cvops downloaded for that URL
  (:func:`cvops.detector.checkpoint.cached_path`). The download happens here, once per machine,
  so the fingerprint says which weights training will use. When it fails (offline) the weights
  are ``unavailable``: training starts from scratch, says so, and that model is cached under its
  own fingerprint; the first run that can download them trains again with them.

Training (:func:`cvops.train.mmconfig._pretrained`) uses a URL's weights exactly when its cached
file exists, the same rule, and never downloads itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from cvops import filestate

log = logging.getLogger(__name__)

#: URL -> why it could not be downloaded, once per process (an offline machine pays one failed attempt)
_UNAVAILABLE: Dict[str, str] = {}
#: Seconds a fingerprint waits for a weights download to answer.
CONNECT_TIMEOUT = 10.0


def weights_file(url: str) -> Optional[Path]:
    """The local file of an https checkpoint URL: downloaded once (into torch's hub cache), None if it
    cannot be (offline, refused)."""
    from cvops.detector.checkpoint import cached_path, download

    local = cached_path(url)
    if local.is_file():
        return local
    if url in _UNAVAILABLE:
        return None
    try:
        return download(url, timeout=CONNECT_TIMEOUT)
    except ValueError as e:  # offline, refused redirect, too large: train says what it does instead
        _UNAVAILABLE[url] = str(e)
        log.warning("weights %s are unavailable (%s): training starts without them", url, e)
        return None


def _weights_state(url: str) -> str:
    local = weights_file(url)
    if local is None:
        return "unavailable"
    return filestate.stamp_file(str(local), os.stat(local))


def _file_state(path: str) -> str:
    """A local checkpoint's stamp. Only a regular file is read: a folder (``load_from=/``, ``~``) or anything
    else is stamped by its kind, never walked; training then refuses it, naming the key."""
    import stat

    try:
        st = os.stat(os.path.expanduser(path))
    except OSError:
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "not-a-file"
    return filestate.stamp_file(os.path.expanduser(path), st)


def walk(node: Any) -> Iterable[Any]:
    """Every dict in a nested config (the dict itself first)."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from walk(v)


def _checkpoints_in(options: Any) -> List[str]:
    """Every ``checkpoint`` value in ``model.cfg_options`` (flat dotted keys or nested dicts)."""
    found = []
    for key, value in (options or {}).items():
        if str(key).split(".")[-1] == "checkpoint" and isinstance(value, str):
            found.append(value)
        for d in walk(value):
            if isinstance(d.get("checkpoint"), str):
                found.append(d["checkpoint"])
    return found


def config_files(mmdet_config: str) -> List[Path]:
    """A model config outside the mmdet package and its ``_base_`` files, recursively (mmengine reads them)."""
    from mmengine.config import Config

    from cvops.trust import mmdet_config_path

    start = mmdet_config_path(mmdet_config)
    files, todo = [], [start]
    while todo:
        f = todo.pop()
        if f in files:
            continue
        files.append(f)
        for base in Config._get_base_files(str(f)):
            if "::" in base:  # a package's config: covered by that package's version
                continue
            todo.append(Path(os.path.realpath(f.parent / base)))
    return sorted(files)


def _pretrained_urls(mmdet_config: str) -> List[str]:
    """The https checkpoints of the model config's ``Pretrained`` initialisations and ``load_from``."""
    from mmengine.config import Config

    from cvops.trust import mmdet_config_path

    cfg = Config.fromfile(str(mmdet_config_path(mmdet_config))).to_dict()
    urls = {str(d["checkpoint"]) for d in walk(cfg.get("model", {}))
            if d.get("type") == "Pretrained" and isinstance(d.get("checkpoint"), str)}
    return sorted(u for u in urls if u.startswith("https://"))


def signature(config: Any, store_root: Any = None) -> str:
    """The state of the weights and config files training reads (``config``: train's typed view)."""
    model = config.model
    states: List[str] = []
    name = str(model.mmdet_config)
    try:
        if "::" not in name:  # the user's own config and its bases, by content
            states += [f"config:{f}={filestate.root_state(str(f), None)}" for f in config_files(name)]
        if model.pretrained:
            states += [f"pretrained:{u}={_weights_state(u)}" for u in _pretrained_urls(name)]
    except Exception as e:  # refused or unreadable: train says what is wrong when it runs
        states.append(f"config-unreadable:{type(e).__name__}")
    for ckpt in _checkpoints_in(model.cfg_options) + ([str(model.load_from)] if model.load_from else []):
        if ckpt.startswith("https://"):
            states.append(f"weights:{ckpt}={_weights_state(ckpt)}")
        elif "://" not in ckpt:  # a local file (other schemes are refused by the trust checks)
            states.append(f"weights:{ckpt}={_file_state(ckpt)}")
    return hashlib.sha256("\n".join(states).encode()).hexdigest()[:16] if states else ""
