"""The content-addressed artifact store: one protocol, two implementations, and what lives beside them.

- :mod:`cvops.store.base`: the :class:`Store` and :class:`Builder` protocols, :class:`Artifact`, the
  manifest contract (``<store>/<stage>/<fingerprint>/manifest.json``, written last and atomically).
- :mod:`cvops.store.folder`: :class:`FolderStore`, a folder (local, or mounted by every machine).
- :mod:`cvops.store.s3`: :class:`ObjectStore`, ``s3://bucket/prefix`` read through a local cache.
- :mod:`cvops.store.registry`: the model registry (aliases and their history) beside the artifacts.
- :mod:`cvops.store.housekeeping`: :func:`gc`, removing what no committed artifact or alias refers to.

:func:`open_store` opens the store a recipe's ``paths`` names.
"""

from __future__ import annotations

import os
from typing import Any, Dict

from cvops.store.base import MANIFEST, Artifact, Builder, Garbage, Store, StoreError, write_json_atomic
from cvops.store.folder import FolderBuilder, FolderStore

#: A build lease's default life in seconds (``paths.lease_s``).
LEASE_S = 30.0


def open_store(paths: Any) -> Store:
    """The store ``paths`` names.

    Args:
        paths: The recipe's ``paths`` section, a :meth:`Store.spec` dict, or a store path or URL.

    Returns:
        A :class:`FolderStore` for a folder, a :class:`cvops.store.s3.ObjectStore` for ``s3://...``.

    Raises:
        StoreError: a URL that is not ``s3://``, ``paths.lease_s`` out of range (named, with the fix), or
            a folder that is a copy of another store (:attr:`FolderStore.id`).
    """
    from cvops.remote import is_url

    if isinstance(paths, (str, os.PathLike)):
        store, options, cache, lease_s = str(paths), {}, None, None
    elif isinstance(paths, dict):  # a Store.spec()
        store, options = str(paths["store"]), dict(paths.get("store_options") or {})
        cache, lease_s = paths.get("cache"), paths.get("lease_s")
    else:
        store = str(paths.store)
        options = dict(paths.get("store_options") or {})
        cache, lease_s = paths.get("cache"), paths.get("lease_s")
    if not is_url(store):
        folder = FolderStore(store)
        if (folder.root / "store-id").is_file():
            folder.id  # an existing store: refuse a copy now, before anything reads or writes through it
        return folder
    lease_s = LEASE_S if lease_s is None else float(lease_s)
    protocol = store.split("://", 1)[0].lower()
    if protocol not in ("s3", "s3a"):
        raise StoreError(f"paths.store={store}: an object store must be s3:// (S3 or an S3-compatible server such "
                         "as MinIO): its commits and build leases need S3's conditional writes; other URLs can "
                         "be data (data.path), not the store")
    if not 1.0 <= lease_s <= 86400.0:
        raise StoreError(f"paths.lease_s={lease_s}: give 1 to 86400 seconds (a build lease is renewed every "
                         "lease_s/3 s and taken over after lease_s s without renewal; default 30)")
    from cvops.store.s3 import ObjectStore

    cache = cache or os.environ.get("CVOPS_CACHE_DIR") or "~/.cache/cvops"
    return ObjectStore(store, options, cache, lease_s)


def store_spec(store: Store) -> Dict[str, Any]:
    """What :func:`open_store` needs to open ``store`` again in another process (plain data, picklable)."""
    return store.spec()


def __getattr__(name: str) -> Any:
    # the S3 store and housekeeping are imported when first named: opening a folder store stays light
    if name in ("ObjectStore", "ObjectBuilder"):
        from cvops.store.s3 import ObjectBuilder, ObjectStore

        return {"ObjectStore": ObjectStore, "ObjectBuilder": ObjectBuilder}[name]
    if name in ("gc", "GcReport"):
        from cvops.store.housekeeping import GcReport, gc

        return {"gc": gc, "GcReport": GcReport}[name]
    raise AttributeError(f"module 'cvops.store' has no attribute {name!r}")


__all__ = ["Store", "Builder", "Artifact", "Garbage", "StoreError", "MANIFEST", "FolderStore", "FolderBuilder",
           "ObjectStore", "ObjectBuilder", "open_store", "store_spec", "write_json_atomic", "gc", "GcReport"]
