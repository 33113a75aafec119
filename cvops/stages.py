"""What a stage is: its declaration, what it receives, what it returns.

A stage is a room with one door in and one door out. It is declared once, as
a :class:`Stage`: its name, the config sections it reads, the upstream stages
whose artifacts it reads, the libraries whose versions shape its result, and
its implementation ``run(ctx: StageContext) -> StageResult``. It is keyed
(:mod:`cvops.fingerprint`) by exactly those inputs, and the runner
(:mod:`cvops.runner`) hands it exactly those inputs: ``ctx.config`` holds
only the declared sections (typed: the schema dataclasses of
:mod:`cvops.schema`), ``ctx.inputs`` only the declared upstream artifacts.
A key or artifact a stage did not declare is not there to read, so the
cache cannot miss a change to it.

The six built-in stages are declared in :data:`BUILTIN`. An installed package
adds its own through the entry-point group ``cvops.stages``::

    # the plug-in's pyproject.toml
    [project.entry-points."cvops.stages"]
    audit = "cvops_audit:STAGE"

    # cvops_audit/__init__.py
    @dataclass
    class AuditConfig:
        min_boxes_per_class: int = 1

    STAGE = Stage("audit", run="cvops_audit.stage:run", sections=("audit",), inputs=("curate",),
                  feeds=("train",), schema=AuditConfig)

The plug-in's schema becomes the config group ``audit`` (option ``default``)
and the key ``audit`` of the recipe. A recipe that selects the group
(``defaults: [{audit: default}]``, or ``audit=default`` on the command line)
puts the stage in its graph: ``feeds`` makes its artifact an input of train,
so its fingerprint enters train's; ``stages: [curate, audit, train, ...]``
runs it. A recipe that does not select it runs as if it were not installed.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from cvops.entrypoints import entry_points

log = logging.getLogger("cvops")
ENTRY_POINTS = "cvops.stages"


@dataclass(frozen=True)
class Stage:
    """A stage's declaration: everything that defines it for the cache and the runner."""

    name: str
    #: ``"module:function"`` of ``run(ctx: StageContext) -> StageResult``
    run: str
    #: config keys it reads (``"export"``, ``"project"``, or one dotted key ``"serve.log_dir"``);
    #: their values enter the fingerprint and are all that ``ctx.config`` holds
    sections: Tuple[str, ...]
    #: upstream stages whose artifacts it reads (``ctx.inputs``); their fingerprints enter its own
    inputs: Tuple[str, ...] = ()
    #: distributions whose versions enter the fingerprint
    libraries: Tuple[str, ...] = ()
    cacheable: bool = True  # serve is a process, not an artifact
    exclude: Tuple[str, ...] = ()  # keys that do not change the result (train.resume)
    resume_key: Optional[str] = None  # when this key is true, an unfinished build is kept to resume from
    #: ``"module:function"`` of ``f(config) -> str``, given the same typed view as ``ctx.config``: the state
    #: of inputs outside the recipe (a request log, a folder, the host's TensorRT/GPU), added to the
    #: fingerprint so a change there means a new build
    external: Optional[str] = None
    #: plug-ins: stages that take this stage's artifact as an extra input (so its fingerprint enters theirs)
    feeds: Tuple[str, ...] = ()
    #: plug-ins: the dataclass of the stage's own config section (key and group = ``name``)
    schema: Optional[type] = None
    #: ``"module:function"`` of ``f(metrics) -> str``: the stage's result in one line, for its finish line and
    #: the run's closing summary (:mod:`cvops.summary`); not part of the fingerprint
    summary: Optional[str] = None
    #: commands worth trying once the stage has an artifact, shown after the closing summary;
    #: ``{args}`` is the run's ``recipe=... key=value`` command line, ``{artifacts[key]}`` an artifact's path,
    #: ``{open}`` this machine's file opener (``xdg-open ``, ``open ``; none: the path alone); a leading ``cvops``
    #: is printed as the command that started this run (:func:`cvops.summary.program`)
    next: Tuple[str, ...] = ()
    #: ``"module:function"`` of ``f(config) -> None``, given the same typed view as ``ctx.config``: refuses
    #: (:class:`cvops.errors.ConfigError`, naming the key and the fix) a value the schema's types cannot, such as
    #: a negative limit or a recipe name that does not exist. The preflight runs it for every stage of the
    #: recipe's graph before any stage runs, whichever ``stages`` the run asks for; keep its module light
    check: Optional[str] = None
    issue: Optional[int] = None  # where an unimplemented built-in stage is tracked
    origin: str = "cvops"  # the distribution that declared it

    def implementation(self) -> Optional["StageFn"]:
        """The ``run`` function, or None while the module does not exist (a stage not built yet)."""
        mod, _, fun = self.run.partition(":")
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and (mod == e.name or mod.startswith(e.name + ".")):
                return None
            raise
        return getattr(module, fun)


#: Every distribution that installs the ``cv2`` module (whichever one a machine has decides what cv2 does).
OPENCV = ("opencv-python-headless", "opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless")

#: The built-in lifecycle, in order. ``project`` is read by the stages that name things after it;
#: ``confidence`` by those whose keys default to it (``evaluate.confusion_score_thr``, ``monitor.low_confidence``).
BUILTIN: Tuple[Stage, ...] = (
    Stage("curate", "cvops.curate.stage:run", ("project", "data", "curate"),
          libraries=("fiftyone", "pillow", *OPENCV, "numpy", "pycocotools", "pyyaml"),
          external="cvops.curate.inputs:signature",
          summary="cvops.summary:curate", issue=3),
    Stage("train", "cvops.train.stage:run", ("model", "train"), ("curate",),
          ("torch", "mmcv", "mmdet", "mmengine"),
          exclude=("train.resume", "train.node_rank", "train.master_addr", "train.master_port"),
          external="cvops.train.inputs:signature",
          resume_key="train.resume", check="cvops.train.checks:check_stage",
          summary="cvops.summary:train", issue=4),
    Stage("evaluate", "cvops.evaluate.stage:run", ("model", "train.device", "evaluate", "confidence"),
          ("curate", "train"),
          ("pycocotools", "fiftyone", "torch", "mmcv", "mmdet", "mmengine", "numpy"), summary="cvops.summary:evaluate",
          next=("cvops app {args}   # predictions, TP/FP/FN in the FiftyOne App",), issue=4),
    Stage("export", "cvops.export.stage:run", ("project", "model", "export", "evaluate.confusion_score_thr",
                                               "confidence"),
          ("curate", "train"), ("torch", "mmcv", "mmdet", "mmengine", "onnx", "onnxruntime", "onnxscript", "onnxslim",
                                "tensorrt", "numpy"),
          external="cvops.export.host:signature", summary="cvops.summary:export", check="cvops.export.checks:check_stage",
          next=("cvops serve {args}   # the exported model over HTTP",), issue=5),
    Stage("serve", "cvops.serve.stage:run", ("project", "model.name", "serve", "monitor", "confidence"),
          ("curate", "train", "export"), cacheable=False, summary="cvops.summary:serve",
          check="cvops.serve.limits:check_stage", issue=6),
    Stage("monitor", "cvops.monitor.stage:run",
          ("project", "monitor", "serve.log_dir", "data.synthetic", "lock_timeout_s", "confidence"),
          ("curate", "train", "export"),
          ("onnxruntime", "numpy", "scipy", "pillow", *OPENCV, "fiftyone"),
          exclude=("lock_timeout_s",), external="cvops.monitor.source:signature", summary="cvops.summary:monitor",
          check="cvops.monitor.checks:check_stage",
          next=("cvops app {args} --review   # the monitor's edge cases, pre-labelled",
                "{open}{artifacts[report]}   # the drift report"), issue=6),
)
BUILTIN_NAMES: Tuple[str, ...] = tuple(s.name for s in BUILTIN)


class PluginError(ValueError):
    """An installed stage plug-in is declared wrongly (named, with its package)."""


_PLUGINS: Optional[Tuple[Stage, ...]] = None


def plugins() -> Tuple[Stage, ...]:
    """Stages declared by installed packages (entry points ``cvops.stages``), read once per process."""
    global _PLUGINS
    if _PLUGINS is None:
        found: List[Stage] = []
        for ep in entry_points(ENTRY_POINTS):
            where = f"entry point '{ep.name} = {ep.value}' of {ep.dist or '?'}"
            stage = ep.load()
            if not isinstance(stage, Stage):
                raise PluginError(f"{where}: must point to a cvops.stages.Stage, got {type(stage).__name__}")
            if stage.name != ep.name:
                raise PluginError(f"{where}: the entry point's name must be the stage's name '{stage.name}'")
            if stage.name in BUILTIN_NAMES or stage.name in {s.name for s in found} or stage.name in RESERVED:
                raise PluginError(f"{where}: the name '{stage.name}' is taken; choose another")
            if stage.schema is None or stage.name not in stage.sections:
                raise PluginError(f"{where}: a plug-in stage needs schema=<its config dataclass> and its own "
                                  f"section '{stage.name}' in sections")
            unknown = [u for u in (*stage.inputs, *stage.feeds) if u not in BUILTIN_NAMES]
            if unknown:
                raise PluginError(f"{where}: inputs/feeds name unknown stages {unknown}; built-in stages are "
                                  f"{list(BUILTIN_NAMES)}")
            found.append(Stage(**{**stage.__dict__, "origin": ep.dist or ep.value}))
        _PLUGINS = tuple(found)
    return _PLUGINS


#: top-level recipe keys a plug-in cannot take
RESERVED = frozenset({"project", "task", "stages", "paths", "leaderboard", "lock_timeout_s", "data", "model", "tracker",
                      "hydra", "recipe"})


_ROOT: Optional[Tuple[Tuple[Stage, ...], type]] = None


def root_schema() -> type:
    """The recipe schema: :class:`cvops.schema.CvopsConfig`, plus one optional section per plug-in stage.

    With plug-ins it is one class per process, reachable as ``cvops.stages.RecipeSchema``, so a composed
    config refers to it by name (the compose cache pickles compositions)."""
    import dataclasses

    from cvops.schema import CvopsConfig

    global _ROOT
    found = plugins()
    if not found:
        return CvopsConfig
    if _ROOT is None or _ROOT[0] is not found:
        extra = [(p.name, Optional[p.schema], dataclasses.field(default=None)) for p in found]
        cls = dataclasses.make_dataclass("CvopsConfig", extra, bases=(CvopsConfig,))
        cls.__module__, cls.__qualname__ = __name__, "RecipeSchema"
        _ROOT = (found, cls)
    return _ROOT[1]


def __getattr__(name: str) -> Any:
    if name == "RecipeSchema":
        return root_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_configs(store: Any) -> None:
    """Put the recipe schema (``cvops_schema``) and each plug-in's config group (option ``default``: its
    schema) into Hydra's ConfigStore."""
    store.store(name="cvops_schema", node=root_schema())
    for p in plugins():
        store.store(group=p.name, name="default", node=p.schema)


def declared() -> Dict[str, Stage]:
    """Every stage this installation knows (built-in and plug-in), by name."""
    return {s.name: s for s in (*BUILTIN, *plugins())}


def graph(cfg: Any) -> Dict[str, Stage]:
    """The stages of one composed recipe, in execution order, with plug-in feeds wired in.

    A plug-in is part of the graph when the recipe selects its config group
    (``cfg.<name>`` is set); it then runs after its inputs and before the
    stages it feeds, whose ``inputs`` gain it.
    """
    active = [s for s in plugins() if _selected(cfg, s.name)]
    fed: Dict[str, List[str]] = {}
    for p in active:
        for f in p.feeds:
            fed.setdefault(f, []).append(p.name)
    stages = [Stage(**{**s.__dict__, "inputs": (*s.inputs, *fed.get(s.name, ()))}) for s in BUILTIN] + active
    # topological order; ties keep declaration order (the built-in lifecycle, then plug-ins)
    order: List[Stage] = []
    pending = list(stages)
    while pending:
        ready = next((s for s in pending if all(u in {o.name for o in order} for u in s.inputs)), None)
        if ready is None:
            raise PluginError(f"stage inputs form a cycle among {[s.name for s in pending]}")
        # a plug-in goes as early as its inputs allow, so it precedes the stages it feeds
        plug = next((s for s in pending if s.origin != "cvops"
                     and all(u in {o.name for o in order} for u in s.inputs)), None)
        pick = plug or ready
        order.append(pick)
        pending.remove(pick)
    return {s.name: s for s in order}


def _selected(cfg: Any, name: str) -> bool:
    try:
        return name in cfg and cfg[name] is not None
    except Exception:
        return False


# --------------------------------------------------------------------------- what a stage receives
class Sections:
    """The typed config a stage declared: ``ctx.config.export.gate.max_map_drop``.

    Only declared keys are attributes; anything else raises, naming the fix
    (declare it in the stage's ``sections``), so a stage cannot read a key
    that is not in its fingerprint.
    """

    def __init__(self, stage: str, values: Dict[str, Any], path: str = "") -> None:
        self._stage, self._path = stage, path
        self.__dict__.update(values)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        raise AttributeError(f"stage '{self._stage}' did not declare config key '{self._path}{key}': add it to the "
                             f"stage's sections (cvops.stages.Stage.sections) so it enters the fingerprint")

    def __repr__(self) -> str:
        keys = ", ".join(k for k in self.__dict__ if not k.startswith("_"))
        return f"Sections({self._path or self._stage}: {keys})"


def typed_view(stage: str, cfg: Any, sections: Sequence[str]) -> Sections:
    """``cfg`` cut down to ``sections``, each node converted to its schema dataclass."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    tree = _Node()
    for key in sections:
        node = OmegaConf.select(cfg, key, throw_on_missing=True)
        if isinstance(node, DictConfig):
            value = OmegaConf.to_object(node)
        elif isinstance(node, ListConfig):
            value = OmegaConf.to_container(node, resolve=True)
        else:
            value = node
        *parents, leaf = key.split(".")
        d = tree
        for p in parents:
            d = d.setdefault(p, _Node())
        d[leaf] = value

    def build(d: "_Node", path: str) -> Sections:
        return Sections(stage, {k: build(v, f"{path}{k}.") if isinstance(v, _Node) else v for k, v in d.items()}, path)

    return build(tree, "")


class _Node(dict):
    """A partial section, made from dotted keys (``serve.log_dir``): not a config value."""


@dataclass
class StageContext:
    """What a stage gets: its declared config, its declared inputs, a directory to write into."""

    name: str
    config: Sections  # the declared sections only, typed (see :class:`Sections`)
    workdir: Path  # artifact directory (empty unless resuming)
    inputs: Dict[str, Any]  # upstream artifacts by stage name (cvops.store.Artifact)
    fingerprint: str
    store: Any  # the artifact store (cvops.store.Store: a folder or an s3:// bucket)
    tracker: Any  # the recipe's tracker for this stage (cvops.track.StageTracker): log / summary
    run_dir: Path  # the run's directory (logs of processes a stage starts; reports are published by the runner)
    resuming: bool = False
    code: str = ""  # the code version in the fingerprint (cvops.fingerprint.code_version)
    external: str = ""  # the state of what the stage reads from outside the recipe (its ``external`` signature)

    @property
    def store_id(self) -> str:
        """The artifact store's identity: names what this build owns elsewhere (a FiftyOne dataset)."""
        return self.store.id


@dataclass
class StageResult:
    """What a stage returns. ``artifacts`` maps names to paths inside ``workdir``."""

    artifacts: Dict[str, str] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    #: set when part of the stage could not run on this host (e.g. no GPU for TensorRT): the artifact is
    #: kept and used downstream, the stage is recorded ``skipped`` with this reason
    skipped: Optional[str] = None
    #: files or folders (relative to ``workdir``) a person looks at: the runner publishes them into
    #: ``<run dir>/<stage>/`` whether the stage ran or came from the cache
    reports: List[str] = field(default_factory=list)


StageFn = Callable[[StageContext], StageResult]

#: Implementations registered in this process (:func:`register_stage`), in place of the declared ones.
_REGISTRY: Dict[str, StageFn] = {}


def register_stage(name: str, fn: Optional[StageFn]) -> None:
    """Use ``fn`` as the implementation of stage ``name`` in this process (None: back to the declared one).

    For tests and notebooks; an installed package adds stages through entry points (see the module docstring).
    The registered function's own module is then the stage's code (:func:`cvops.fingerprint.code_version`).

    Raises:
        KeyError: no stage of that name is declared (the message lists those that are).
    """
    if name not in declared():
        raise KeyError(f"unknown stage '{name}'; stages: {', '.join(declared())}")
    if fn is None:
        _REGISTRY.pop(name, None)
    else:
        _REGISTRY[name] = fn


def registered(name: str) -> Optional[StageFn]:
    """The function :func:`register_stage` put in place of stage ``name`` in this process, or None."""
    return _REGISTRY.get(name)


def implementation(name: str) -> Optional[StageFn]:
    """The stage's ``run`` function (a registered one first), or None while it is not implemented."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    return declared()[name].implementation()


__all__ = ["Stage", "StageContext", "StageResult", "StageFn", "Sections", "BUILTIN", "BUILTIN_NAMES", "declared",
           "graph", "plugins", "typed_view", "PluginError", "register_stage", "registered", "implementation"]
