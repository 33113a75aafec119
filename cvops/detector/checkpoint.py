"""Load mmengine checkpoints under torch's ``weights_only=True`` default.

torch >= 2.6 refuses to unpickle anything but tensors and plain containers
unless the type is allow-listed. mmengine checkpoints also carry numpy scalars
and dtypes (epoch counters, best scores) and the MessageHub's HistoryBuffer
objects. :func:`allow_mmengine_checkpoints` allow-lists exactly those types;
everything else (``os.system`` in a crafted file, say) is still refused.

One more thing stands in the way: mmengine pickles each HistoryBuffer's
statistics functions (``min``, ``max``, ``current``, ``mean``) as
``getattr(HistoryBuffer, "min")``, and allowing ``getattr`` would let a
crafted file reach any attribute of any allowed type. Those four are rebuilt
by HistoryBuffer itself when it is unpickled, so cvops stops writing them
(a reducer registered with :func:`copyreg.pickle`, pickle's own extension
point: the class itself is left as mmengine wrote it): checkpoints saved by
cvops need no ``getattr``. A checkpoint saved by plain mmengine that has them
is refused with a message saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

_done = False


def safe_globals() -> List[Any]:
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    try:  # numpy >= 1.25 has numpy.dtypes; the scalar reconstructor moved in numpy 2
        from numpy.core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 2 layout
        from numpy._core.multiarray import _reconstruct, scalar  # type: ignore
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [HistoryBuffer, scalar, _reconstruct, np.ndarray, np.dtype, *dtypes]


DEFAULT_STATISTICS = ("min", "max", "current", "mean")


def _portable_getstate(self: Any) -> dict:
    """HistoryBuffer state without the default statistics (rebuilt on load)."""
    state = {k: v for k, v in self.__dict__.items() if k != "statistics_methods"}
    state["statistics_methods"] = {k: v for k, v in self._statistics_methods.items() if k not in DEFAULT_STATISTICS}
    return state


def _reduce_history_buffer(buf: Any) -> tuple:
    """How a HistoryBuffer is pickled: as protocol 2 pickles any object (``cls.__new__`` and its state, which
    its ``__setstate__`` restores), with the portable state."""
    import copyreg

    return copyreg.__newobj__, (type(buf),), _portable_getstate(buf)


def allow_mmengine_checkpoints() -> None:
    """Allow-list the types mmengine stores in checkpoints, and save them portably (idempotent)."""
    global _done
    if _done:
        return
    import torch
    from mmengine.logging.history_buffer import HistoryBuffer

    import copyreg

    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)  # pickle's dispatch table: torch.save and deepcopy use it
    torch.serialization.add_safe_globals(safe_globals())
    _done = True


def load(path: str) -> Any:
    """``torch.load`` with the allow-list, ``weights_only=True``, on CPU.

    Raises:
        ValueError: naming the file, when it is not a readable checkpoint.
    """
    import torch

    allow_mmengine_checkpoints()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        detail = str(e)
        if "GLOBAL getattr" in detail or "builtins.getattr" in detail:
            raise ValueError(f"{path} was saved by plain mmengine (it pickles HistoryBuffer statistics through "
                             "getattr, which cvops does not allow-list); load it once with a trusted "
                             "torch.load(weights_only=False) and re-save its state_dict") from e
        raise ValueError(f"{path} is not a loadable checkpoint ({type(e).__name__}: {detail.splitlines()[0]})") from e


def hub_dir() -> Path:
    """torch's hub folder (``torch.hub.get_dir()``), found without importing torch."""
    import os

    if os.environ.get("TORCH_HOME"):
        return Path(os.path.expanduser(os.environ["TORCH_HOME"])) / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "torch" / "hub"


def cached_path(url: str) -> Path:
    """Where :func:`download` keeps ``url``: ``<hub>/checkpoints/<sha256(url)[:12]>-<file name>``.

    Named by the whole URL (query included), not by its file name alone: two runs' ``.../best.pth``, or
    one file behind two presigned URLs, are different downloads and never stand in for each other.
    """
    import hashlib
    import os

    name = os.path.basename(url.split("?", 1)[0]) or "checkpoint.pth"
    return hub_dir() / "checkpoints" / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def download(url: str, max_mb: float = 4096, timeout: float = 60.0) -> Path:
    """Fetch a remote checkpoint into torch's hub cache (:func:`cached_path`) and return its path.

    Only ``https://`` URLs, and only if every redirect stays on https. The
    file is written under a temporary name and renamed when complete, so a cut
    download never looks cached. The caller loads it with :func:`load`
    (``weights_only``), never with a full unpickle.

    Raises:
        ValueError: a non-https URL (or redirect), a file over ``max_mb``, or a failed download.
    """
    import os
    import tempfile
    import urllib.request

    from cvops.trust import check_load_from

    check_load_from(url)
    target = cached_path(url)
    name = target.name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    budget = int(max_mb * 2**20)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=target.parent)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
            if not resp.geturl().startswith("https://"):
                raise ValueError(f"{url} redirected to {resp.geturl()}: remote checkpoints must stay on https")
            while chunk := resp.read(1 << 20):
                budget -= len(chunk)
                if budget < 0:
                    raise ValueError(f"{url} is larger than {max_mb:g} MB; download it yourself and set "
                                     "model.load_from to the file")
                out.write(chunk)
        os.replace(tmp, target)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"cannot download {url}: {type(e).__name__}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
