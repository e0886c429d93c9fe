"""Safe extraction of uploaded dataset archives (zip, tar, tar.gz/bz2/xz).

An uploaded archive is untrusted. :func:`extract` refuses, with a message saying
what to fix, anything that could write outside the target folder or exhaust the
disk: absolute paths and ``..`` components, symbolic and hard links, devices and
FIFOs, encrypted members, too many files, members or totals over the size limits,
members compressed suspiciously well (zip bombs) and archives nested inside the
archive (refused, not skipped: a dataset is one archive of image folders). Sizes
are enforced on the bytes actually written, not on what the headers claim.

The dataset may sit at the archive's top (``daisy/1.jpg``) or inside one single
top-level folder (``flowers/daisy/1.jpg``); :func:`extract` returns the folder
holding the class folders.
"""

import errno
import os
import shutil
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterable, Optional, Tuple

from poets.engine.data.datasets import IGNORED_FOLDERS
from poets.engine.errors import InvalidArchive

MiB = 1024 * 1024
NESTED_SUFFIXES = (
    ".zip",
    ".tar",
    ".tgz",
    ".tbz2",
    ".txz",
    ".gz",
    ".bz2",
    ".xz",
    ".7z",
    ".rar",
    ".zst",
    ".lz",
    ".lzma",
)
# Entries archivers add that are never part of a dataset.
_IGNORED_PARTS = IGNORED_FOLDERS
_IGNORED_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")
# Members this small are not worth a ratio check: a few KiB of headers compress well.
_RATIO_MIN_BYTES = 64 * 1024
_CHUNK = 1024 * 1024
_LAYOUT = (
    "Put one folder per label at the top of the archive (or inside one top-level "
    "folder), holding that label's images."
)


def _member(raw: str) -> str:
    """A member's name as messages show it: as the archive spells it (relative), cut short."""
    return repr(raw if len(raw) <= 120 else raw[:120] + "...")


def _reason(exc: BaseException) -> str:
    """What went wrong, without the server path an OSError carries in its text."""
    if isinstance(exc, OSError) and (exc.filename is not None or exc.filename2 is not None):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


def _member_error(raw: str, exc: OSError) -> InvalidArchive:
    """InvalidArchive for a member that could not be written, naming it relative to the archive."""
    code = exc.errno
    if code == errno.ENAMETOOLONG:
        what = "has a name too long for the file system (255 bytes per folder or file name)"
        fix = "shorten it"
    elif code == errno.EEXIST:
        what = "appears twice in the archive, or as both a file and a folder"
        fix = "keep one entry of that name"
    elif code in (errno.EISDIR, errno.ENOTDIR):
        what = "is both a file and a folder in the archive"
        fix = "rename one of them"
    else:
        what = "cannot be extracted ({})".format(_reason(exc))
        fix = "check its name and create the archive again"
    return InvalidArchive("The archive member {} {}: {}.".format(_member(raw), what, fix))


@dataclass(frozen=True)
class Limits:
    """What one archive may hold; defaults match :class:`poets.engine.settings.Settings`."""

    max_extracted_bytes: int = 8192 * MiB
    max_file_bytes: int = 64 * MiB
    max_ratio: float = 200.0
    max_files: int = 50000

    @classmethod
    def from_settings(cls, settings: Any) -> "Limits":
        return cls(
            int(settings.max_extracted_bytes),
            int(settings.max_file_bytes),
            float(settings.max_archive_ratio),
            int(settings.max_archive_files),
        )


def kind(path: Path) -> str:
    """``zip`` or ``tar`` from the file's content (never its name), else InvalidArchive."""
    try:
        if zipfile.is_zipfile(str(path)):
            return "zip"
        if tarfile.is_tarfile(str(path)):
            return "tar"
    except OSError as exc:
        raise InvalidArchive("The archive cannot be read: {}.".format(_reason(exc))) from exc
    raise InvalidArchive(
        "The upload is not a zip or tar(.gz/.bz2/.xz) archive, or it is "
        "corrupt: send a .zip or .tar.gz of your dataset folder."
    )


def safe_name(raw: str) -> Optional[Tuple[str, ...]]:
    """The member's path parts, None for entries to ignore; InvalidArchive when unsafe."""
    name = raw.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InvalidArchive(
            "The archive member {!r} has an absolute path: archive the dataset "
            "with relative paths (e.g. `cd parent && zip -r data.zip "
            "flowers`).".format(raw)
        )
    parts = tuple(part for part in PurePosixPath(name).parts if part not in ("", "."))
    if ".." in parts:
        raise InvalidArchive(
            "The archive member {!r} points outside the archive ('..'): "
            "archive the dataset folder itself.".format(raw)
        )
    if "\x00" in name:
        raise InvalidArchive("The archive member {!r} has a NUL in its name.".format(raw))
    if not parts or any(part in _IGNORED_PARTS for part in parts):
        return None
    if parts[-1] in _IGNORED_FILES or parts[-1].startswith("._"):
        return None
    return tuple(unicodedata.normalize("NFC", part) for part in parts)


def _check_nested(raw: str, parts: Tuple[str, ...]) -> None:
    lowered = parts[-1].lower()
    if lowered.endswith(NESTED_SUFFIXES):
        raise InvalidArchive(
            "The archive contains another archive, {!r}: nested archives are not "
            "read. Extract it and put its images in the label folders.".format(raw)
        )


class _Budget:
    """Counts files and bytes written across the whole archive."""

    def __init__(self, limits: Limits, archive_bytes: int) -> None:
        self.limits = limits
        self.archive_bytes = max(1, archive_bytes)
        self.files = 0
        self.total = 0

    def precheck(self, sizes: Iterable[int]) -> None:
        """Refuse, from the headers alone and before writing anything, an archive whose file
        count, total size or overall compression ratio is over the limits.

        Consumes ``sizes`` (declared sizes of the files to extract) only until a limit trips,
        so a bomb's headers are not all read either.
        """
        total = 0
        for files, size in enumerate(sizes, 1):
            total += size
            if files > self.limits.max_files:
                raise InvalidArchive(
                    "The archive holds more than {} files: split the dataset or "
                    "raise POETS_MAX_ARCHIVE_FILES.".format(self.limits.max_files)
                )
            if total > self.limits.max_extracted_bytes:
                raise InvalidArchive(
                    "The archive expands to more than {} bytes: send a smaller dataset.".format(
                        self.limits.max_extracted_bytes
                    )
                )
            if total > _RATIO_MIN_BYTES and total / self.archive_bytes > self.limits.max_ratio:
                raise InvalidArchive(
                    "The archive expands more than {:g} times its size, which looks like a "
                    "compression bomb: images do not compress like that.".format(self.limits.max_ratio)
                )

    def add_file(self, raw: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise InvalidArchive(
                "The archive holds more than {} files: split the dataset or "
                "raise POETS_MAX_ARCHIVE_FILES.".format(self.limits.max_files)
            )

    def check_declared(self, raw: str, size: int) -> None:
        if size > self.limits.max_file_bytes:
            raise InvalidArchive(
                "The archive member {!r} is {} bytes, over the limit of {} per "
                "file: remove or shrink it.".format(raw, size, self.limits.max_file_bytes)
            )
        if self.total + size > self.limits.max_extracted_bytes:
            raise InvalidArchive(
                "The archive expands to more than {} bytes: send a smaller dataset.".format(
                    self.limits.max_extracted_bytes
                )
            )

    def copy(
        self, raw: str, source: IO[bytes], target: Path, declared: int, compressed: Optional[int]
    ) -> None:
        """Copy one member, enforcing the limits on the bytes really read."""
        written = 0
        limit = min(self.limits.max_file_bytes, declared)
        try:
            out = open(str(target), "xb")  # noqa: SIM115 - closed by `with` below
        except OSError as exc:
            raise _member_error(raw, exc) from exc
        with out:
            while True:
                chunk = source.read(_CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                if written > limit:
                    raise InvalidArchive(
                        "The archive member {!r} is larger than its header says or than the "
                        "limit of {} bytes per file: the archive is corrupt or "
                        "unsafe.".format(raw, self.limits.max_file_bytes)
                    )
                if self.total + written > self.limits.max_extracted_bytes:
                    raise InvalidArchive(
                        "The archive expands to more than {} bytes: send a smaller dataset.".format(
                            self.limits.max_extracted_bytes
                        )
                    )
                if (
                    compressed is not None
                    and written > _RATIO_MIN_BYTES
                    and written / max(1, compressed) > self.limits.max_ratio
                ):
                    raise InvalidArchive(
                        "The archive member {!r} is compressed more than {:g}:1, which looks like "
                        "a zip bomb: images do not compress like that.".format(raw, self.limits.max_ratio)
                    )
                out.write(chunk)
        if written != declared:
            raise InvalidArchive(
                "The archive member {!r} is truncated: the archive is corrupt; create it again.".format(raw)
            )
        self.total += written


def _prepare_target(target: Path, parts: Tuple[str, ...], raw: str, folder: bool = False) -> Path:
    """Where member ``raw`` goes (its folders made, and itself too when ``folder``)."""
    path = target.joinpath(*parts)
    # Belt and braces: the parts are clean, but never write outside the target.
    resolved_parent = os.path.realpath(str(path.parent))
    root = os.path.realpath(str(target))
    if resolved_parent != root and not resolved_parent.startswith(root + os.sep):
        raise InvalidArchive("The archive member {!r} points outside the archive.".format("/".join(parts)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            path.mkdir(exist_ok=True)
    except OSError as exc:
        raise _member_error(raw, exc) from exc
    return path


def _extract_zip(path: Path, target: Path, budget: _Budget) -> None:
    try:
        archive = zipfile.ZipFile(str(path))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidArchive(
            "The zip archive is corrupt ({}): create it again.".format(_reason(exc))
        ) from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > budget.limits.max_files:
            budget.files = len(infos) - 1
            budget.add_file("")
        budget.precheck(info.file_size for info in infos if not info.is_dir())
        for info in infos:
            parts = safe_name(info.filename)
            mode = (info.external_attr >> 16) & 0xFFFF
            if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                kind_name = "a symbolic link" if stat.S_ISLNK(mode) else "a special file"
                raise InvalidArchive(
                    "The archive member {!r} is {}: archive the files "
                    "themselves (e.g. `zip -r` without -y).".format(info.filename, kind_name)
                )
            if parts is None:
                continue
            if info.is_dir():
                _prepare_target(target, parts, info.filename, folder=True)
                continue
            if info.flag_bits & 0x1:
                raise InvalidArchive(
                    "The archive member {!r} is encrypted: send an archive without a password.".format(
                        info.filename
                    )
                )
            _check_nested(info.filename, parts)
            budget.add_file(info.filename)
            budget.check_declared(info.filename, info.file_size)
            if (
                info.file_size > _RATIO_MIN_BYTES
                and info.file_size / max(1, info.compress_size) > budget.limits.max_ratio
            ):
                raise InvalidArchive(
                    "The archive member {!r} is compressed more than {:g}:1, which looks like a "
                    "zip bomb: images do not compress like that.".format(
                        info.filename, budget.limits.max_ratio
                    )
                )
            out = _prepare_target(target, parts, info.filename)
            try:
                with archive.open(info) as source:
                    budget.copy(info.filename, source, out, info.file_size, info.compress_size)
            except InvalidArchive:
                raise
            except (
                zipfile.BadZipFile,
                EOFError,
                OSError,
                ValueError,
                RuntimeError,
                NotImplementedError,
            ) as exc:
                raise InvalidArchive(
                    "The archive member {} cannot be extracted ({}): the "
                    "archive is corrupt or uses an unsupported compression; "
                    "create it again.".format(_member(info.filename), _reason(exc))
                ) from exc


def _extract_tar(path: Path, target: Path, budget: _Budget) -> None:
    try:
        archive = tarfile.open(str(path), mode="r:*")  # noqa: SIM115 - closed by `with` below
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidArchive(
            "The tar archive is corrupt ({}): create it again.".format(_reason(exc))
        ) from exc
    with archive:
        try:
            # Headers first (a tar has no central directory: this reads the stream once).
            budget.precheck(member.size for member in archive if member.isfile())
            for member in archive.getmembers():
                parts = safe_name(member.name)
                if member.issym() or member.islnk():
                    raise InvalidArchive(
                        "The archive member {!r} is a {} link: archive the files "
                        "themselves (e.g. `tar -h`).".format(
                            member.name, "symbolic" if member.issym() else "hard"
                        )
                    )
                if not (member.isfile() or member.isdir()):
                    raise InvalidArchive(
                        "The archive member {!r} is a device, FIFO or other "
                        "special file: archive only folders and "
                        "images.".format(member.name)
                    )
                if parts is None:
                    continue
                if member.isdir():
                    _prepare_target(target, parts, member.name, folder=True)
                    continue
                _check_nested(member.name, parts)
                budget.add_file(member.name)
                budget.check_declared(member.name, member.size)
                source = archive.extractfile(member)
                if source is None:
                    continue
                out = _prepare_target(target, parts, member.name)
                with source:
                    # The stream is compressed as a whole: bound it against the archive size.
                    budget.copy(member.name, source, out, member.size, None)
                if (
                    budget.total / budget.archive_bytes > budget.limits.max_ratio
                    and budget.total > _RATIO_MIN_BYTES
                ):
                    raise InvalidArchive(
                        "The archive expands more than {:g} times its size, which looks like a "
                        "compression bomb: images do not compress like that.".format(budget.limits.max_ratio)
                    )
        except InvalidArchive:
            raise
        except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error) as exc:
            raise InvalidArchive(
                "The tar archive is corrupt or truncated ({}): create it again.".format(_reason(exc))
            ) from exc


def dataset_root(target: Path) -> Path:
    """The folder holding the label folders: the top, or its one single folder."""
    visible = [p for p in target.iterdir() if not p.name.startswith(".") and p.name not in _IGNORED_PARTS]
    if len(visible) == 1 and visible[0].is_dir():
        inner = visible[0]
        if any(p.is_dir() and not p.name.startswith(".") for p in inner.iterdir()):
            return inner
    return target


def extract(path: Path, target: Path, limits: Optional[Limits] = None) -> Path:
    """Extract the archive at ``path`` into the new folder ``target``; return the dataset root.

    On any error ``target`` is removed and :class:`InvalidArchive` says what to fix.
    """
    limits = limits or Limits()
    path, target = Path(path), Path(target)
    archive_kind = kind(path)
    target.mkdir(parents=True, exist_ok=False)
    budget = _Budget(limits, path.stat().st_size)
    try:
        if archive_kind == "zip":
            _extract_zip(path, target, budget)
        else:
            _extract_tar(path, target, budget)
        if budget.files == 0:
            raise InvalidArchive("The archive holds no files. " + _LAYOUT)
        return dataset_root(target)
    except InvalidArchive:
        shutil.rmtree(str(target), ignore_errors=True)
        raise
    except (OSError, UnicodeError) as exc:
        shutil.rmtree(str(target), ignore_errors=True)
        raise InvalidArchive(
            "The archive cannot be extracted ({}): check its file names and create it again.".format(
                _reason(exc)
            )
        ) from exc
    except BaseException:
        shutil.rmtree(str(target), ignore_errors=True)
        raise
