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
by HistoryBuffer itself when it is unpickled, so cvops stops writing them:
checkpoints saved by cvops need no ``getattr``. A checkpoint saved by plain
mmengine that has them is refused with a message saying so.
"""

from __future__ import annotations

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


def allow_mmengine_checkpoints() -> None:
    """Allow-list the types mmengine stores in checkpoints, and save them portably (idempotent)."""
    global _done
    if _done:
        return
    import torch
    from mmengine.logging.history_buffer import HistoryBuffer

    HistoryBuffer.__getstate__ = _portable_getstate  # type: ignore[method-assign]
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
