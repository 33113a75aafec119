"""What a person sees on the terminal; everything else goes to ``<run dir>/cvops.log``.

By default the console shows the runner's lines (one per stage start and
finish, with its headline), warnings and errors cvops itself raises, progress
bars of long phases and the closing summary. Third-party logs and Python
warnings (mmengine's per-iteration lines and hook tables, FiftyOne's database
notices, deprecation warnings from mmdet and torch) go to ``cvops.log`` only;
a third-party warning reaches the console only when it says something a user
can act on (:data:`ACTIONABLE`), and then once. ``cvops -v`` (or
``hydra.verbose=true``) shows everything, as the libraries print it.

The mode travels to child processes (joblib sweep workers, torchrun) through
``CVOPS_VERBOSE``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any, Optional, Set, TextIO

ENV = "CVOPS_VERBOSE"

#: Loggers whose INFO lines are the console's: the runner and the command line. Every other ``cvops.*``
#: logger (a stage's details) reaches the console from WARNING up.
CONSOLE_LOGGERS = ("cvops",)

#: Third-party warnings worth a console line, matched on the message: a user can do something about these.
ACTIONABLE = (
    re.compile(r"out of memory|OutOfMemory", re.I),
    re.compile(r"worker processes? in total|num_workers", re.I),  # DataLoader asks for fewer workers
    re.compile(r"No space left|disk quota", re.I),
    re.compile(r"permission denied", re.I),
    re.compile(r"checkpoint .* does not match|unexpected key|missing key", re.I),
    re.compile(r"Corrupt JPEG|Premature end of JPEG", re.I),
)


def verbose() -> bool:
    """Whether the libraries' full logs are on the console (``cvops -v``)."""
    return os.environ.get(ENV, "").lower() in ("1", "true", "yes")


def set_verbose(on: bool) -> None:
    if on:
        os.environ[ENV] = "1"
    else:
        os.environ.pop(ENV, None)


def actionable(message: str) -> bool:
    return any(p.search(message) for p in ACTIONABLE)


class ConsoleFilter(logging.Filter):
    """Keeps the console readable (see the module docstring); each third-party warning once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: Set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name in CONSOLE_LOGGERS:
            return True
        if name.startswith("cvops."):
            return record.levelno >= logging.WARNING
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        if record.levelno < logging.ERROR and not actionable(message):
            return False
        key = f"{name}:{message[:200]}"
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def _console_handlers() -> list:
    return [h for h in logging.getLogger().handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and getattr(h, "stream", None) in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)]


def install() -> None:
    """Set up the console for one cvops job (called once Hydra configured logging).

    Python warnings are routed through logging (so they land in ``cvops.log``);
    in the default mode the console handler gets a :class:`ConsoleFilter`, and
    W&B's own banner is silenced (:func:`wandb_line` says where its run is).
    """
    logging.captureWarnings(True)  # shown warnings become records of "py.warnings" (Python's filters unchanged)
    logging.getLogger("py.warnings").setLevel(logging.WARNING)
    _route_prints()
    # FiftyOne gives its loggers stdout handlers of their own at import unless its destination is something
    # else: then its records reach only the root logger's handlers (cvops.log, and the console per the filter)
    os.environ.setdefault("FIFTYONE_LOGGING_DESTINATION", "cvops")
    if "fiftyone" in sys.modules:  # imported already: take its handlers off instead
        for name in ("fiftyone", "eta"):
            lg = logging.getLogger(name)
            for h in [h for h in lg.handlers if type(h) is logging.StreamHandler]:
                lg.removeHandler(h)
    if verbose():
        return
    os.environ.setdefault("WANDB_SILENT", "true")
    for h in _console_handlers():
        if not any(isinstance(f, ConsoleFilter) for f in h.filters):
            h.addFilter(ConsoleFilter())


#: Libraries that ``print()`` progress chatter (pycocotools: "loading annotations into memory...", its AP
#: table; mmengine's ``print_log(logger=None)``: "Loads checkpoint by local backend ..."): their prints become
#: INFO records of the logger of the same name (cvops.log; the console with -v); so do ONNX Runtime's
#: quantisation prints ("Collecting tensor data and making histogram ...").
PRINTERS = ("pycocotools", "mmengine", "onnxruntime")


def _route_prints() -> None:
    import builtins

    if getattr(builtins.print, "_cvops", False):
        return
    original = builtins.print

    def print_(*args: Any, **kwargs: Any) -> None:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        top = caller.partition(".")[0]
        if top in PRINTERS and kwargs.get("file") in (None, sys.stdout, sys.stderr):
            text = kwargs.get("sep", " ").join(str(a) for a in args)
            logging.getLogger(top).info("%s", text.rstrip("\n"))
            return
        original(*args, **kwargs)

    print_._cvops = True  # type: ignore[attr-defined]
    builtins.print = print_


class ForwardHandler(logging.Handler):
    """Hands a library's private logger's records to a named logger of the hierarchy (for cvops.log)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = logging.getLogger(target)

    def emit(self, record: logging.LogRecord) -> None:
        if self.target.isEnabledFor(record.levelno):
            record.name = self.target.name
            self.target.handle(record)


def adopt(logger: logging.Logger, name: str) -> None:
    """Replace ``logger``'s own console handlers by forwarding to ``logging.getLogger(name)``.

    mmengine's loggers are not part of logging's hierarchy and print to stdout
    themselves; forwarded, their lines go to ``cvops.log`` and, with ``-v`` or
    when they matter, to the console.
    """
    for h in list(logger.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            logger.removeHandler(h)
    if not any(isinstance(h, ForwardHandler) for h in logger.handlers):
        logger.addHandler(ForwardHandler(name))
    logging.getLogger(name).setLevel(logging.INFO)


def adopt_mmengine() -> None:
    """:func:`adopt` every mmengine logger there is, and the one its ``print_log(logger="current")`` uses.

    mmengine creates its default ``mmengine`` logger (with a stdout handler) the
    first time something logs outside a Runner, e.g. ``load_checkpoint``'s
    "Loads checkpoint by local backend" line; call this before such work.
    """
    from mmengine.logging import MMLogger

    MMLogger.get_current_instance()
    for logger in list(MMLogger._instance_dict.values()):
        adopt(logger, "mmengine")


def _fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 60}:{s % 60:02d}" if s < 3600 else f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """A progress bar for one long phase: tqdm on a terminal, a plain line now and then otherwise.

    On a terminal it is a live bar (tqdm, on stderr). In a pipe or a CI log,
    where a redrawn bar becomes a wall of carriage returns, it prints a line
    when :meth:`note` is given something new to say (a validation result), at
    least once a minute while it moves (:attr:`pipe_interval_s`), and at the
    end, each with the elapsed time and an ETA.
    """

    #: In a pipe, the longest silence between two lines of a running phase.
    pipe_interval_s = 60.0

    def __init__(self, total: int, desc: str, unit: str = "it", stream: Optional[TextIO] = None) -> None:
        self.total, self.desc, self.unit = max(1, int(total)), desc, unit
        self.stream = stream or sys.stderr
        self.n = 0
        self.t0 = time.perf_counter()
        self.postfix: dict = {}
        self._last = self.t0
        self.live = bool(getattr(self.stream, "isatty", lambda: False)()) and not os.environ.get("CI")
        self._bar: Any = None
        if self.live:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, leave=True,
                             dynamic_ncols=True, bar_format="{desc} {bar} {n_fmt}/{total_fmt} {unit} "
                             "[{elapsed}<{remaining}]{postfix}")

    def eta(self) -> float:
        elapsed = time.perf_counter() - self.t0
        return elapsed / self.n * (self.total - self.n) if self.n else float("nan")

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n = min(self.total, self.n + n)
        self.postfix.update(postfix)
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix_str(self._postfix(), refresh=False)
        elif time.perf_counter() - self._last >= self.pipe_interval_s and self.n < self.total:
            self._line()  # a pipe's heartbeat: a line a minute, so a log tail shows that it moves

    def set_total(self, total: int) -> None:
        """A new total (a training whose epochs were planned after it began: ``train.max_minutes``)."""
        self.total = max(1, int(total), self.n)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def set_desc(self, desc: str) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description_str(desc, refresh=False)

    def note(self, **postfix: Any) -> None:
        """New values worth a line (e.g. a validation result)."""
        self.postfix.update(postfix)
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix())
        elif self.n < self.total:  # at the end, close() prints the last line with these values
            self._line()

    def _postfix(self) -> str:
        return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.postfix.items())

    def _line(self, done: bool = False) -> None:
        self._last = time.perf_counter()
        elapsed = self._last - self.t0
        tail = f"in {_fmt_seconds(elapsed)}" if done else f"{_fmt_seconds(elapsed)} elapsed, ETA {_fmt_seconds(self.eta())}"
        print(f"{self.desc}  {self.n}/{self.total} {self.unit}  {self._postfix()}  ({tail})".rstrip(),
              file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        else:
            self._line(done=True)


def live() -> bool:
    """Whether redrawn progress bars make sense here (a terminal, not CI)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)()) and not os.environ.get("CI")


def track(iterable: Any, desc: str, total: Optional[int] = None, enabled: bool = True) -> Any:
    """A short-lived bar over ``iterable`` on a terminal (gone when done); nothing in a pipe or CI log."""
    if not enabled or not live():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
