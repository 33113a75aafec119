"""Load mmengine checkpoints under torch's ``weights_only=True`` default.

torch >= 2.6 refuses to unpickle anything but tensors and plain containers
unless the type is allow-listed. mmengine checkpoints also carry numpy scalars
and dtypes (epoch counters, best scores) and the MessageHub's HistoryBuffer
objects. :func:`allow_mmengine_checkpoints` allow-lists exactly those types;
everything else (``os.system`` in a crafted file, say) is still refused.
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


def allow_mmengine_checkpoints() -> None:
    """Allow-list the types mmengine stores in checkpoints (idempotent)."""
    global _done
    if _done:
        return
    import torch

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
        raise ValueError(f"{path} is not a loadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from e
