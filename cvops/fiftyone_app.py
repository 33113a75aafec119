"""The FiftyOne App on a recipe's datasets: which dataset and view to open, and the App itself.

``cvops app recipe=X`` (:mod:`cvops.commands.app`) opens the dataset curated for
the recipe as configured now (the curate artifact of the current config); if
that was not built yet, the project's most recently created dataset, and says
so. When the evaluate stage ran for this config, the App opens its saved view:
predictions down to the confusion threshold (``evaluate.confusion_score_thr``)
only, since the stored ones go down to ``evaluate.score_thr`` for mAP and would
bury each image in faint boxes; the whole dataset is one click away (the view
bar's saved-view menu).
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Optional, Tuple

from cvops.errors import ConfigError


def named_dataset(name: str) -> Tuple[str, str]:
    """``(name, how it was chosen)`` for a dataset the user named.

    Raises:
        ConfigError: FiftyOne has no dataset of that name (the message lists those it has).
    """
    from cvops.fo import connect

    fo = connect()
    if not fo.dataset_exists(name):
        raise ConfigError(f"no FiftyOne dataset '{name}'; have: {', '.join(sorted(fo.list_datasets())) or 'none'}")
    return name, "as asked"


def curated_dataset(curate: Optional[Any], project: str, fingerprint: str) -> Optional[Tuple[str, str]]:
    """``(name, how it was chosen)``: the dataset of the curate artifact ``curate`` (this config's, None when
    not built), else the project's newest; None when the project has no dataset at all."""
    from cvops.fo import connect

    fo = connect()
    if curate is not None and fo.dataset_exists(curate.metrics.get("dataset_name", "")):
        return curate.metrics["dataset_name"], f"curated for this config (curate {fingerprint})"
    mine = [d for d in fo.list_datasets(info=True) if d["name"].startswith(f"{project}-")]
    if not mine:
        return None
    latest = max(mine, key=lambda d: d.get("created_at") or 0)
    return latest["name"], f"latest of project '{project}' (this config's curate {fingerprint} is not built yet)"


def confident_view(evaluate: Optional[Any], dataset: str) -> Optional[str]:
    """The evaluate artifact's saved view (its ``app_view``), if ``evaluate`` is built and the view is on ``dataset``."""
    from cvops.fo import connect

    name = evaluate.metrics.get("app_view") if evaluate is not None else None
    if name and name in connect().load_dataset(dataset).list_saved_views():
        return str(name)
    return None


def launch(name: str, saved_view: Optional[str], port: int, address: str) -> Tuple[Any, Any, str]:
    """Start the App on dataset ``name`` (with its saved view ``saved_view``, if given).

    Returns:
        ``(session, dataset, url)``: the URL opens that dataset (and view) whatever the session state (with
        ``FIFTYONE_DATABASE_URI`` the App's root page shows "No dataset selected").
    """
    from cvops.fo import connect

    fo = connect()
    ds = fo.load_dataset(name)
    view = ds.load_saved_view(saved_view) if saved_view else None
    session = fo.launch_app(ds, view=view, port=port, address=address, remote=True, auto=False)
    host = "localhost" if address in ("0.0.0.0", "::") else address
    url = f"http://{host}:{port}/datasets/{urllib.parse.quote(name)}"
    if saved_view:
        from fiftyone.core.utils import to_slug

        url += f"?view={urllib.parse.quote(to_slug(saved_view))}"
    return session, ds, url


__all__ = ["named_dataset", "curated_dataset", "confident_view", "launch"]
