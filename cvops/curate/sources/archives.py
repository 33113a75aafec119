"""Archives (zip, tar): extracted safely into the curate work folder, which then is the dataset root."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Set

from cvops.curate.sources.ledger import Ledger
from cvops.curate.sources.paths import is_file, is_junk
from cvops.errors import SourceError
from cvops.media import ARCHIVE_SUFFIXES


def is_archive(path: Path) -> bool:
    return is_file(path) and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def extract(archive: Path, dest: Path, max_mb: float, max_members: int = 200_000,
            ledger: Optional[Ledger] = None) -> Path:
    """Extract safely: no absolute paths, no ``..`` (the archive is refused), no links or devices
    (rows, not extracted), and at most ``max_mb`` megabytes written (counted while writing, not
    trusted from headers). A corrupt, encrypted or unreadable zip member is a row naming it (with
    ``ledger``; without one, a :class:`SourceError`) and the other members are extracted; a tar
    that cannot be read further raises a :class:`SourceError` naming the last member read."""
    import tarfile
    import zipfile

    dest.mkdir(parents=True, exist_ok=True)
    x = _Extraction(archive, dest.resolve(), max_mb, ledger)
    try:
        kind = "zip" if zipfile.is_zipfile(archive) else "tar" if tarfile.is_tarfile(archive) else None
    except (OSError, EOFError, ValueError):
        kind = None
    if kind is None:
        raise SourceError(f"{archive}: cannot be read as a zip or tar archive (truncated, corrupt or another format "
                          "such as 7z/rar); re-download it, or extract it yourself and point data.path at the folder")
    if kind == "zip":
        x.zip(max_members)
    else:
        x.tar(max_members)
    return x.root


class _Extraction:
    def __init__(self, archive: Path, root: Path, max_mb: float, ledger: Optional[Ledger]) -> None:
        self.archive, self.root, self.max_mb, self.ledger = archive, root, max_mb, ledger
        self.budget = int(max_mb * 1024 * 1024)
        self.written: Set[str] = set()

    def target(self, name: str) -> Path:
        p = Path(name)
        if p.is_absolute() or ".." in p.parts or not name.strip("/"):
            raise SourceError(f"{self.archive}: member '{name}' would extract outside the folder; archive refused")
        out = (self.root / p).resolve()
        if self.root not in out.parents and out != self.root:
            raise SourceError(f"{self.archive}: member '{name}' escapes the extraction folder; archive refused")
        return out

    def skip(self, name: str, reason: str, detail: str) -> None:
        if self.ledger is None:
            raise SourceError(f"{self.archive}: member '{name}': {reason} ({detail})")
        self.ledger.add("file", f"{self.archive}!{name}", reason, detail)

    def spend(self, n: int) -> None:
        self.budget -= n
        if self.budget < 0:
            raise SourceError(f"{self.archive}: more than curate.max_archive_mb={self.max_mb:g} MB uncompressed; "
                              "raise the limit if this archive is expected to be that large")

    def copy(self, name: str, src: Any, out: Path) -> None:
        """Write one member; a file that cannot be created is a row, a read error propagates."""
        if str(out) in self.written:
            self.skip(name, "archive member listed twice", "the first copy was kept")
            return
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            f = open(out, "wb")
        except OSError as e:
            self.skip(name, "archive member cannot be extracted", f"{type(e).__name__}: {e.strerror}")
            return
        self.written.add(str(out))
        with f:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                self.spend(len(chunk))
                f.write(chunk)

    def mkdir(self, name: str, out: Path) -> None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.skip(name, "archive member cannot be extracted", f"{type(e).__name__}: {e.strerror}")

    def zip(self, max_members: int) -> None:
        import zipfile

        try:
            z = zipfile.ZipFile(self.archive)
        # NotImplementedError is zipfile's answer to an unsupported compression method (a member it cannot read)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
            raise SourceError(f"{self.archive}: the zip directory cannot be read ({type(e).__name__}: {e}); "
                              "re-create or re-download the archive") from e
        with z:
            members = z.infolist()
            if len(members) > max_members:
                raise SourceError(f"{self.archive}: {len(members)} members, more than {max_members}")
            for m in members:
                self.zip_member(z, m)

    def zip_member(self, z: Any, m: Any) -> None:
        import lzma
        import zipfile
        import zlib

        name = zip_name(m)
        out = self.target(name)
        if m.is_dir():
            self.mkdir(name, out)
        elif (m.external_attr >> 16) & 0o170000 == 0o120000:
            self.skip(name, "link inside an archive (not extracted)", "archives may hold only files and folders")
        elif m.flag_bits & 0x1:
            self.skip(name, "encrypted archive member (not extracted)",
                      "cvops reads no passwords: re-create the archive without one")
        else:
            try:
                with z.open(m) as src:
                    self.copy(name, src, out)
            except SourceError:
                raise
            except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, RuntimeError,
                    NotImplementedError, ValueError) as e:
                if str(out) in self.written:
                    self.written.discard(str(out))
                    out.unlink(missing_ok=True)
                self.skip(name, "archive member is corrupt or cannot be extracted", f"{type(e).__name__}: {e}")

    def tar(self, max_members: int) -> None:
        import lzma
        import tarfile
        import zlib

        last = None
        try:
            with tarfile.open(self.archive) as t:
                for n, m in enumerate(t):
                    if n >= max_members:
                        raise SourceError(f"{self.archive}: more than {max_members} members")
                    last = m.name
                    self.tar_member(t, m)
                self.tar_end(t, last)
        except SourceError:
            raise
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as e:
            where = f"at or after member '{last}'" if last else "from its start"
            raise SourceError(f"{self.archive}: reading stopped {where} ({type(e).__name__}: {e}); the archive is "
                              "truncated or corrupt and the members after it cannot be read: re-create or "
                              "re-download it") from e

    def tar_member(self, t: Any, m: Any) -> None:
        out = self.target(m.name)
        if m.isdir():
            self.mkdir(m.name, out)
        elif not m.isfile():
            self.skip(m.name, "link or special file inside an archive (not extracted)",
                      "archives may hold only files and folders")
        else:
            self.copy(m.name, t.extractfile(m), out)

    def tar_end(self, t: Any, last: Optional[str]) -> None:
        """Iteration stops quietly at a corrupt header: what follows the last member must be the end marker."""
        t.fileobj.seek(t.offset)
        zeros = 0
        while True:
            chunk = t.fileobj.read(1 << 16)
            if not chunk:
                break
            if chunk.count(0) != len(chunk):
                raise SourceError(f"{self.archive}: the data after member '{last}' cannot be read as tar members "
                                  "(a corrupt header); the members after it are lost: re-create or re-download it")
            zeros += len(chunk)
            self.spend(len(chunk))
        if zeros == 0 and last is not None:
            self.skip(last, "tar archive has no end marker (it may be truncated)",
                      f"the last member read was '{last}'; compare the archive with its source")


def find_in(root: Path, patterns: Sequence[str], what: str) -> Path:
    """The one file matching ``patterns`` inside an extracted archive (the shallowest)."""
    hits = sorted({p for pat in patterns for p in root.rglob(pat) if not is_junk(p.relative_to(root))},
                  key=lambda p: (len(p.parts), str(p)))
    if not hits:
        raise SourceError(f"archive extracted to {root} has no {what} ({', '.join(patterns)})")
    return hits[0]


def zip_name(m: Any) -> str:
    """A zip member's name. Without the UTF-8 flag the format says CP437, but most zippers (macOS Finder,
    Windows Explorer, Java) write UTF-8 there anyway: a name whose bytes are valid UTF-8 is read as UTF-8,
    so ``café.png`` is not extracted as ``caf├⌐.png`` (and then missing)."""
    if m.flag_bits & 0x800 or m.filename.isascii():
        return m.filename
    try:
        return m.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):  # a real CP437 name
        return m.filename
