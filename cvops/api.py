"""The Python API: what ``cvops`` runs from a shell, a notebook or another tool can call.

::

    import cvops

    run = cvops.run("quickstart", overrides=["train.lr=0.01"], stages=["curate", "train"])
    run.stages["train"].status         # 'ran', 'cached', 'skipped' or 'failed'
    run.stages["train"].metrics        # what run.json records
    run.run_dir                        # run.json, report.html, cvops.log, .hydra/

    model = cvops.load("quickstart")   # the export built for this config (or alias="production")
    model.predict("cell.jpg")          # the detections /v1/predict answers for the same bytes

Both take what the command line takes, and go the same way:
:func:`run` is ``cvops recipe=X overrides... stages=[...]`` (the same
validation by :func:`cvops.config.preflight` before anything is written, the
same compose cache, the same :class:`cvops.runner.Runner`, stage cache and run
dir), returned as a :class:`Run` instead of printed; :func:`load` opens the
export ``cvops serve`` would serve and answers as its ``/v1/predict`` does.
A mistake is the exception the command line reports as one line
(:class:`cvops.errors.UserError` and its kin: ``ConfigError`` for a recipe
value, ``UpstreamMissing`` naming the ``stages=[...]`` to run, ...).

``import cvops`` stays light: this module is imported on the first use of
``cvops.run`` or ``cvops.load``, and Hydra, ONNX Runtime and the stages' libraries
only when they are needed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Union

from cvops.errors import ConfigError, UserError
from cvops.session import compose_job, open_recipe, run_job

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: A stage name as ``stages=[...]`` takes it.
_STAGE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


# ----------------------------------------------------------------------------------------------- run
@dataclass(frozen=True)
class StageRun:
    """One stage of a run, as ``run.json`` records it.

    Attributes:
        name: the stage (``curate``, ``train``, ...).
        status: ``ran``, ``cached`` (its artifact came from the store), ``skipped`` or ``failed``.
        fingerprint: the stage's fingerprint (its artifact's key in the store).
        metrics: the stage's metrics (``{}`` when it has none).
        artifacts: name -> path of each artifact file (``dir``: the artifact's folder in the store).
        seconds: how long it took in this run.
        reason: why it was skipped, cached or failed (None when it simply ran).
    """

    name: str
    status: str
    fingerprint: Optional[str]
    metrics: Dict[str, Any] = field(default_factory=dict)
    artifacts: Dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    reason: Optional[str] = None


@dataclass(frozen=True)
class Run:
    """A finished run: each stage's status, metrics, fingerprint and artifacts, and where it wrote them.

    Attributes:
        run_dir: the run dir (``run.json``, ``report.html``, ``cvops.log``, ``.hydra/``, each stage's reports).
        manifest: ``run.json`` as a dict (recipe, overrides, versions, git commit, timings, headline).
        stages: stage name -> :class:`StageRun`, in the order the stages ran.

    Example:
        >>> run = cvops.run("quickstart", stages=["curate"])  # doctest: +SKIP
        >>> run.stages["curate"].status, run.status  # doctest: +SKIP
        ('ran', 'ok')
    """

    run_dir: Path
    manifest: Dict[str, Any]
    stages: Dict[str, StageRun]

    @property
    def status(self) -> str:
        """``ok`` or ``failed`` (``running`` while a run is still going, read with :meth:`read`)."""
        return str(self.manifest.get("status"))

    @property
    def headline(self) -> Dict[str, Any]:
        """The recipe's leaderboard metric: ``{"metric", "mode", "value"}`` (value None when no stage made it)."""
        return dict(self.manifest.get("headline") or {})

    @property
    def report(self) -> Optional[Path]:
        """The run's ``report.html``, or None when it was not written."""
        page = self.run_dir / "report.html"
        return page if page.is_file() else None

    @classmethod
    def read(cls, run_dir: Union[str, os.PathLike]) -> "Run":
        """The run a run dir records (its ``run.json``), e.g. one the command line made.

        Raises:
            FileNotFoundError: the folder has no ``run.json``.
        """
        run_dir = Path(run_dir)
        data = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        stages = {name: StageRun(name, str(s.get("status")), s.get("fingerprint"), dict(s.get("metrics") or {}),
                                 {k: Path(v) for k, v in (s.get("artifacts") or {}).items()},
                                 float(s.get("seconds") or 0.0), s.get("reason"))
                  for name, s in (data.get("stages") or {}).items()}
        return cls(run_dir, data, stages)


def run(recipe: Optional[str] = None, overrides: Sequence[str] = (), stages: Optional[Sequence[str]] = None,
        run_dir: Union[str, os.PathLike, None] = None, *, summary: bool = False, echo: bool = False) -> Run:
    """Run (or take from the cache) a recipe's stages, as ``cvops recipe=X overrides... stages=[...]`` does.

    The overrides are validated before anything is written (unknown keys, types, values that would reach
    code), composed once through the same compose cache as the command line, and run by the same runner:
    a stage whose artifact for this config is in the store is ``cached``, not run again, whichever of the
    command line or this function built it. The run dir gets what the command line's gets (``run.json``,
    ``report.html``, the stages' reports, ``.hydra/``) and the logs go to ``<run dir>/cvops.log``; nothing
    is printed unless asked.

    Args:
        recipe: the recipe's name (``recipe=X``: ``recipes/X.yaml`` or a folder on ``CVOPS_RECIPE_PATH``);
            None: no recipe (``project`` and the rest come from ``overrides``).
        overrides: Hydra overrides, as on the command line, e.g. ``["train.lr=0.01", "model=yolox_tiny"]``.
        stages: the stages to run, e.g. ``["curate", "train"]`` (None: the recipe's ``stages``). An upstream
            stage not listed is taken from the store, or named in the error if it is not there.
        run_dir: where the run's files go (None: Hydra's ``hydra.run.dir``, as for the command line:
            ``outputs/<project>/<date>/<time>`` under the working directory).
        summary: print the command line's closing summary (the stages' table and the next commands).
        echo: also show the command line's console lines (one per stage start and finish) on stderr.

    Returns:
        The :class:`Run`: each stage's status, fingerprint, metrics and artifact paths, and ``run.json``.

    Raises:
        ConfigError: a value the command line refuses (an unknown key, a wrong type, a refused
            ``_target_``, a sweep); nothing is written then.
        UpstreamMissing: a stage needs an artifact that is neither stored nor requested (the message names
            the ``stages=[...]`` to run).
        UserError: any other error the command line reports as one line (a data source, an export gate,
            the store); ``run.json`` in the run dir records it. Other errors are raised as they are.

    Example:
        >>> import cvops
        >>> run = cvops.run("quickstart", overrides=["train.max_epochs=1"], stages=["curate", "train"])  # doctest: +SKIP
        >>> {name: s.status for name, s in run.stages.items()}  # doctest: +SKIP
        {'curate': 'cached', 'train': 'ran'}
        >>> run.stages["train"].artifacts["checkpoint"]  # doctest: +SKIP
        PosixPath('outputs/store/train/3f2a.../checkpoint.pth')
    """
    from cvops.manifest import prefetch_git_sha

    line = command_line(recipe, overrides, stages)
    prefetch_git_sha()  # run.json's git commit, found while composing (as the command line does)
    cfg = compose_job(line)
    if run_dir is not None:
        _set_run_dir(cfg, run_dir)
    done: Dict[str, Any] = {}

    def task(job: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        from cvops.runner import Runner

        hc = HydraConfig.get()
        out = Path(hc.runtime.output_dir)
        done["run_dir"] = out
        try:
            with _job_logging(hc, echo):
                runner = Runner(job, out, recipe=hc.runtime.choices.get("recipe"))
                try:
                    runner.run()
                finally:
                    _write_report(runner)
                    if summary:
                        _print_summary(runner)
        except BaseException as e:  # raised again below, as it is (Hydra keeps only its message)
            done["error"] = e
            raise

    run_job(cfg, task, configure_logging=False)
    if "error" in done:
        raise done["error"]
    return Run.read(done["run_dir"])


def command_line(recipe: Optional[str], overrides: Sequence[str] = (), stages: Optional[Sequence[str]] = None
                 ) -> List[str]:
    """The ``cvops`` command line of a call: ``recipe=X``, the overrides, ``stages=[...]``, in that order.

    Raises:
        TypeError: ``overrides`` or ``stages`` is a string instead of a list of them.
        ConfigError: the recipe or the stages given twice (as an argument and in ``overrides``), or a stage
            name that is not one.
    """
    if isinstance(overrides, (str, bytes)):
        raise TypeError(f"overrides is a list of 'key=value' strings, e.g. [{overrides!r}], not a string")
    line = [str(o) for o in overrides]
    keys = {o.split("=", 1)[0].lstrip("+~") for o in line}
    if recipe is not None:
        if "recipe" in keys:
            raise ConfigError(f"the recipe is given twice: recipe={recipe!r} and in overrides ({line}); give it once")
        line.insert(0, f"recipe={recipe}")
    if stages is not None:
        if isinstance(stages, str):
            stages = [stages]
        if "stages" in keys:
            raise ConfigError(f"the stages are given twice: stages={list(stages)} and in overrides ({line}); "
                              "give them once")
        bad = [s for s in stages if not isinstance(s, str) or not _STAGE.fullmatch(s)]
        if bad:
            raise ConfigError(f"stages={list(stages)}: {bad} {'is not a stage name' if len(bad) == 1 else 'are not stage names'} "
                              "(e.g. stages=['curate', 'train'])")
        line.append(f"stages=[{','.join(stages)}]")
    return line


def _set_run_dir(cfg: Any, run_dir: Union[str, os.PathLike]) -> None:
    """``hydra.run.dir`` set to ``run_dir`` (taken literally: no ``${...}`` in it is resolved)."""
    from omegaconf import open_dict, read_write

    where = os.path.expanduser(os.fspath(run_dir)).replace("${", "\\${")
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.run.dir = where
        cfg.hydra.overrides.hydra.append(f"hydra.run.dir={where}")


@contextmanager
def _job_logging(hc: Any, echo: bool) -> Iterator[None]:
    """For the run, the records the command line writes to ``<run dir>/cvops.log`` go there too.

    The job's logging config (``hydra/job_logging``, cvops' own by default) names the file, its format and
    the root level; its handlers join the caller's on the root logger for the run only, and the root level
    is restored after it. With ``echo``, the console's lines (:class:`cvops.console.ConsoleFilter`) also
    go to stderr.
    """
    from omegaconf import OmegaConf

    from cvops import console

    spec = OmegaConf.to_container(hc.job_logging, resolve=True) if hc.get("job_logging") is not None else {}
    formats = {k: v.get("format") for k, v in (spec.get("formatters") or {}).items() if isinstance(v, dict)}
    added: List[logging.Handler] = []
    for h in (spec.get("handlers") or {}).values():
        if not isinstance(h, dict):
            continue
        if h.get("class") == "logging.FileHandler" and h.get("filename"):
            Path(h["filename"]).parent.mkdir(parents=True, exist_ok=True)
            handler: logging.Handler = logging.FileHandler(h["filename"], mode=h.get("mode", "a"),
                                                           encoding=h.get("encoding"))
        elif h.get("class") == "logging.StreamHandler" and echo:
            handler = logging.StreamHandler(sys.stderr)
            if not console.verbose():
                handler.addFilter(console.ConsoleFilter())
        else:
            continue
        handler.setFormatter(logging.Formatter(formats.get(h.get("formatter"))))
        if h.get("level"):
            handler.setLevel(h["level"])
        added.append(handler)
    root = logging.getLogger()
    level = root.level
    wanted = (spec.get("root") or {}).get("level")
    if wanted is not None:
        root.setLevel(wanted)
    for handler in added:
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in added:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)


def _write_report(runner: Any) -> None:
    try:
        page = runner.write_report()
    except Exception as e:  # the page must not hide the run's own result or error (as on the command line)
        logging.getLogger("cvops.detail").warning("run report failed: %s: %s", type(e).__name__, e)
        return
    logging.getLogger("cvops.detail").info("run report %s", page)


def _print_summary(runner: Any) -> None:
    try:
        lines = runner.summary()
    except Exception as e:
        logging.getLogger("cvops.detail").warning("closing summary failed: %s", e)
        return
    for line in lines:
        print(line)


# ----------------------------------------------------------------------------------------------- load
class Predictor:
    """An exported model, answering as the server's ``/v1/predict`` does (:func:`load` makes one).

    Attributes:
        classes: the class names, in the model's label order.
        info: what the server's ``/v1/model`` says about the model: ``project``, ``recipe``, ``model``,
            ``fingerprint`` (the export's), ``train_fingerprint``, ``dataset_version``, ``onnx`` and, when
            loaded through one, ``alias``.
        max_pixels: the largest image (width x height) :meth:`predict` decodes (``serve.max_pixels``).
        max_aspect_ratio: the most elongated one (``serve.max_aspect_ratio``).
    """

    def __init__(self, detector: Any, info: Dict[str, Any], max_pixels: int, max_aspect_ratio: Optional[float]) -> None:
        self.detector = detector
        self.info = dict(info)
        self.classes: List[str] = list(detector.classes)
        self.max_pixels, self.max_aspect_ratio = int(max_pixels), max_aspect_ratio

    def __repr__(self) -> str:
        return (f"Predictor(project={self.info.get('project')!r}, export={self.info.get('fingerprint')!r}, "
                f"classes={self.classes!r})")

    def predict(self, image: Union[str, os.PathLike, bytes, "np.ndarray"], masks: str = "rle") -> List[Dict[str, Any]]:
        """The detections of one image: the ``detections`` the server's ``/v1/predict`` answers for it.

        Args:
            image: a JPEG or PNG file (a path) or its bytes, decoded as the server decodes an upload
                (within ``serve.max_pixels`` and ``serve.max_aspect_ratio``, EXIF orientation applied);
                or an image already decoded: a ``(height, width, 3)`` BGR ``uint8`` array (as OpenCV reads it).
            masks: how an instance segmentation model's masks are given (the server's ``?masks=``): ``rle``
                (COCO compressed RLE, ``"mask"``), ``polygon`` (``"polygon"``) or ``none``; box models
                ignore it.

        Returns:
            One ``{"box": [x1, y1, x2, y2], "score", "label", "class"}`` per detection in original pixels
            (with ``"mask_area"`` and the mask for a mask model).

        Raises:
            UserError: the bytes are not a JPEG or PNG, or the image is larger or more elongated than the
                recipe's serve limits (the message names the limit and the setting).
            ValueError: an array that is not BGR ``uint8``, or an unknown ``masks``.
            OSError: the file cannot be read.

        Example:
            >>> model = cvops.load("quickstart")  # doctest: +SKIP
            >>> model.predict("shapes.png")[0]  # doctest: +SKIP
            {'box': [12.5, 30.0, 58.25, 71.0], 'score': 0.9312, 'label': 1, 'class': 'square'}
        """
        from cvops.detector.runtime import MaskFormat

        try:
            fmt = MaskFormat(masks)
        except ValueError:
            raise ValueError(f"masks={masks!r}: one of {', '.join(m.value for m in MaskFormat)}") from None
        return self.detector.predict([self._bgr(image)])[0].to_json(self.classes, fmt)

    def _bgr(self, image: Any) -> "np.ndarray":
        import numpy as np

        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
                raise ValueError(f"an image array is (height, width, 3) BGR uint8 (as cv2.imread reads it), not "
                                 f"{image.dtype} {image.shape}")
            return np.ascontiguousarray(image)
        if isinstance(image, (bytes, bytearray, memoryview)):
            data, what = bytes(image), f"the {len(image)} bytes given"
        elif isinstance(image, (str, os.PathLike)):
            data, what = Path(image).read_bytes(), os.fspath(image)
        else:
            raise TypeError(f"predict takes a path, JPEG or PNG bytes, or a BGR uint8 array, not {type(image).__name__}")
        from cvops.serve.decode import decode_image
        from cvops.serve.errors import ApiError

        try:
            bgr, _ = decode_image(data, self.max_pixels, self.max_aspect_ratio)
        except ApiError as e:
            raise UserError(f"{what}: {e.message}") from e
        return bgr


def load(recipe: Optional[str] = None, overrides: Sequence[str] = (), alias: Optional[str] = None, *,
         threads: Optional[int] = None) -> Predictor:
    """The exported model of a recipe, as ``cvops serve recipe=X overrides...`` would serve it.

    Without ``alias``: the export artifact built for this config (its fingerprint in the store), as
    ``cvops serve`` serves it. With ``alias`` (or the recipe's ``serve.alias``): the export the project's
    registry alias points at now (``cvops promote``). The overrides are validated as on the command line.

    Args:
        recipe: the recipe's name (``recipe=X``); None: no recipe.
        overrides: Hydra overrides, e.g. ``["export=onnx_int8"]`` (they select the export as they would
            build it) or ``["serve.max_pixels=1000000"]`` (the limits :meth:`Predictor.predict` applies).
        alias: a registry alias of the recipe's project, e.g. ``"production"``.
        threads: ONNX Runtime's intra-op threads (None: one per core).

    Returns:
        A :class:`Predictor` on the model (ONNX Runtime, or TensorRT with ``serve.backend=tensorrt``).

    Raises:
        ConfigError: a value the command line refuses (nothing is loaded then).
        UpstreamMissing: the export for this config is not in the store; the message names the
            ``stages=[...]`` that build it (:func:`run` them).
        UserError: the alias is not set, or points at an export that is not in this store.

    Example:
        >>> import cvops
        >>> model = cvops.load("quickstart", alias="production")  # doctest: +SKIP
        >>> model.info["fingerprint"], model.classes  # doctest: +SKIP
        ('9c41...', ['circle', 'square', 'triangle'])
        >>> model.predict(open("shapes.jpg", "rb").read(), masks="none")  # doctest: +SKIP
        [{'box': [...], 'score': 0.93, 'label': 1, 'class': 'square'}]
    """
    from cvops.serve.models import ExportSource
    from cvops.store import store_spec

    opened = open_recipe(command_line(recipe, overrides), check_missing=alias is None)
    view = opened.view("serve")
    sv = view.serve
    alias = alias if alias is not None else sv.alias
    store = opened.store
    project = str(view.project)
    source = ExportSource(str(store.root), project, opened.name, str(view.model.name),
                          backend=str(getattr(sv.backend, "value", sv.backend)), monitor=None, threads=threads,
                          alias=alias, store=store_spec(store))
    if alias is None:
        fingerprint = opened.require("export").fingerprint
    else:
        from cvops.store.registry import Registry
        from cvops.summary import command_args, program

        fingerprint = Registry(store, project).resolve(alias)
        if fingerprint is None:
            promote = " ".join(p for p in (program(), "promote", command_args(opened.name, opened.overrides),
                                           f"--alias {alias}") if p)
            raise UserError(f"alias {alias!r} of project {project} is not set in the store {store}; promote an "
                            f"export first: {promote}")
    try:
        detector, info, _ = source.load(fingerprint)
    except LookupError as e:
        raise UserError(str(e)) from e
    return Predictor(detector, info, sv.max_pixels, sv.max_aspect_ratio)


__all__ = ["run", "load", "Run", "StageRun", "Predictor", "command_line"]
