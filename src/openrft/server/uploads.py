"""What the resource API needs to take files from remote clients safely.

- :class:`UploadLimits`: the server's size limits (a dataset file, an evaluator archive, what the
  archive may unpack to, how many members it may hold), from ``OPENRFT_SERVER_*`` variables or set
  on ``app.state.upload_limits``;
- :func:`check_id`: resource and account ids are one path segment of letters, digits, ``-`` and
  ``_``, so that they can name folders;
- :func:`save_stream` and :func:`limited_receive`: a request body written to a temporary file, cut off
  with a 413 as soon as it passes its limit (nothing is kept);
- :func:`extract_archive`: a ``.tar.gz`` unpacked into one folder, refusing absolute paths, ``..``,
  links, devices and archives larger than the limits, and leaving nothing behind when it refuses.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs

from openrft.errors import ConfigError
from openrft.server.errors import ApiError

MB = 1024 * 1024
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
SIGNED_UPLOAD = ":signedUpload"  # the custom method of the URLs getUploadEndpoint hands out


SIGNED_DOWNLOAD = ":signedDownload"  # ... and of the URLs the download endpoints hand out


SIGNED_URL = re.compile(
    r"/v1/accounts/[^/]+/(?:datasets|evaluators|models)/[^/:]+(:signedUpload|:signedDownload)"
)


def is_signed_upload(scope: MutableMapping[str, Any]) -> bool:
    """A PUT to a signed upload URL, or a GET of a signed download URL: it carries its own token
    (checked by its route), not an API key, as a storage service's signed URL would. Only those two
    routes' whole paths, with a ``token`` parameter, count (another route never goes keyless)."""
    signed = SIGNED_URL.fullmatch(str(scope.get("path", "")))
    wanted = {SIGNED_UPLOAD: "PUT", SIGNED_DOWNLOAD: "GET"}
    return (
        scope.get("type") == "http"
        and signed is not None
        and scope.get("method") == wanted[signed.group(1)]
        and bool(parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token"))
    )


@dataclass(frozen=True)
class UploadLimits:
    """Size limits for uploads, in bytes (and a member count for archives)."""

    max_dataset_bytes: int = 100 * MB
    max_archive_bytes: int = 50 * MB
    max_extracted_bytes: int = 200 * MB
    max_archive_members: int = 5000
    max_request_bytes: int = 16 * MB  # any other request's body (a JSON call, a form)

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None) -> UploadLimits:
        """Limits from ``OPENRFT_SERVER_MAX_DATASET_MB``, ``..._ARCHIVE_MB``, ``..._EXTRACTED_MB``,
        ``..._REQUEST_MB`` and ``OPENRFT_SERVER_MAX_ARCHIVE_MEMBERS``; unset ones keep their defaults."""
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for field, var, scale in (
            ("max_dataset_bytes", "OPENRFT_SERVER_MAX_DATASET_MB", MB),
            ("max_archive_bytes", "OPENRFT_SERVER_MAX_ARCHIVE_MB", MB),
            ("max_extracted_bytes", "OPENRFT_SERVER_MAX_EXTRACTED_MB", MB),
            ("max_archive_members", "OPENRFT_SERVER_MAX_ARCHIVE_MEMBERS", 1),
            ("max_request_bytes", "OPENRFT_SERVER_MAX_REQUEST_MB", MB),
        ):
            text = env.get(var, "").strip()
            if not text:
                continue
            try:
                number = float(text)
            except ValueError:
                raise ConfigError(f"{var}={text!r} is not a number") from None
            if number <= 0:
                raise ConfigError(f"{var} must be > 0, not {text}")
            values[field] = int(number * scale)
        return cls(**values)


def check_id(value: str, what: str) -> str:
    """``value`` if it is a valid id (one path segment), else a 400 naming ``what``."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise ApiError(
            400,
            f"invalid {what} {value!r}: use 1-63 ASCII letters, digits, '-' or '_', starting with a letter or digit",
        )
    return value


TEXT_LIMITS = {"displayName": 1000, "description": 20000}  # characters: names shown in every list
MAX_FIELD_JSON = 64 * 1024  # any other stored field, as JSON (inline code, "criteria", is apart)


def check_texts(fields: dict[str, Any], where: str = "") -> None:
    """A 400 for a ``displayName`` or ``description`` that is not text or longer than
    :data:`TEXT_LIMITS` allows, and for any other field (but ``criteria``) over :data:`MAX_FIELD_JSON`."""
    for key, value in fields.items():
        if key in TEXT_LIMITS and value is not None and not isinstance(value, str):
            raise ApiError(400, f"{where}{key} must be a string, not {type(value).__name__}")
        limit = TEXT_LIMITS.get(key)
        if limit is not None and len(value or "") > limit:
            raise ApiError(400, f"{where}{key} is {len(value)} characters long; at most {limit} are accepted")
        if limit is None and key != "criteria" and len(json.dumps(value, default=str)) > MAX_FIELD_JSON:
            raise ApiError(400, f"{where}{key} is larger than {MAX_FIELD_JSON // 1024} KB")


def now_rfc3339() -> str:
    """The current time as the service writes timestamps (``2026-01-02T03:04:05.678901Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def human_size(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n} bytes"


def too_large(what: str, limit: int) -> ApiError:
    return ApiError(413, f"{what} is larger than the server's limit of {human_size(limit)}")


# ----------------------------------------------------------------------------- request bodies


async def save_stream(chunks: AsyncIterator[bytes], target: Path, limit: int, what: str) -> int:
    """Write ``chunks`` to ``target`` (via a temporary file beside it); 413 past ``limit`` bytes.

    Returns the number of bytes written. On any failure nothing is left at ``target``'s folder.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    size = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise too_large(what, limit)
                handle.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return size


Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


def limited_receive(receive: Receive, limit: int, what: str) -> Receive:
    """An ASGI ``receive`` that raises a 413 once the request body passes ``limit`` bytes
    (multipart bodies are parsed from it, so an oversized upload is never spooled in full)."""
    seen = 0

    async def wrapped() -> MutableMapping[str, Any]:
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large(what, limit)
        return message

    return wrapped


def check_declared_sizes(
    filename_to_size: Any, limit: int, what: str, suffixes: tuple[str, ...], max_files: int
) -> dict[str, int]:
    """``{file name: size}`` of a ``getUploadEndpoint`` body's ``filenameToSize``, in its order: at
    most ``max_files`` plain file names ending with one of ``suffixes``, ``limit`` bytes in all."""
    if not isinstance(filename_to_size, dict) or not 1 <= len(filename_to_size) <= max_files:
        many = "one file name" if max_files == 1 else f"1 to {max_files} file names"
        raise ApiError(400, f"filenameToSize must map {many} to sizes in bytes")
    sizes = {
        name: _declared_size(name, size, limit, what, suffixes) for name, size in filename_to_size.items()
    }
    if sum(sizes.values()) > limit:
        raise too_large(f"{what} ({len(sizes)} files, {human_size(sum(sizes.values()))})", limit)
    return sizes


def _declared_size(name: Any, size_text: Any, limit: int, what: str, suffixes: tuple[str, ...]) -> int:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ApiError(400, f"filenameToSize: {name!r} is not a plain file name")
    if "\0" in name or len(name.encode()) > 200:
        raise ApiError(400, f"filenameToSize: {name[:80]!r} has a NUL byte or is longer than 200 bytes")
    if not name.lower().endswith(suffixes):
        raise ApiError(400, f"filenameToSize: {name!r} must end with {' or '.join(suffixes)}")
    try:
        size = int(str(size_text))
    except ValueError:
        raise ApiError(
            400, f"filenameToSize[{name!r}] must be a whole number of bytes, not {size_text!r}"
        ) from None
    if size < 0:
        raise ApiError(400, f"filenameToSize[{name!r}] must be >= 0, not {size}")
    if size > limit:
        raise too_large(f"{what} {name!r} ({human_size(size)})", limit)
    return size


# ----------------------------------------------------------------------------- archives


class ArchiveError(Exception):
    """An archive that is refused: its message says which member and why."""


MAX_NAME_BYTES, MAX_PART_BYTES = 1024, 255  # a member's path, and one of its folder or file names
# A long-name or pax header is read whole before its member, and Python before 3.11.10 parses pax
# headers with a regular expression whose time grows with the square of the header (CVE-2024-6232):
# 20 KB took 0.4 s, 150 KB 24 s, holding every request. So, while the members are listed, one such
# header may hold 4 KB (a 1,024-byte name needs about 1.1 KB), and at most 64 of them more than a block.
MAX_HEADER_BYTES, MAX_LARGE_HEADERS = 4096, 64


def check_member_name(name: str) -> str:
    """``name`` if it is a relative path that stays inside its folder, else an :class:`ArchiveError`."""
    shown = repr(name[:80] + "..." if len(name) > 80 else name)
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ArchiveError(f"member {shown} has an absolute path")
    if ".." in parts:
        raise ArchiveError(f"member {shown} points outside the archive ('..')")
    if (
        "\0" in name
        or len(name.encode()) > MAX_NAME_BYTES
        or any(len(p.encode()) > MAX_PART_BYTES for p in parts)
    ):
        raise ArchiveError(f"member {shown} has a NUL byte or a name longer than a file system allows")
    return name


def write_files(files: dict[str, str], dest: Path, limits: UploadLimits) -> None:
    """Write inline source files (``{relative name: text}``) into the new folder ``dest``, with the
    archive rules: names stay inside ``dest``, within the member and size limits."""
    try:
        if not files:
            raise ArchiveError("no files given")
        if len(files) > limits.max_archive_members:
            raise ArchiveError(f"more than {limits.max_archive_members} files")
        total = 0
        for name, text in files.items():
            data = str(text).encode()
            total += len(data)
            if total > limits.max_extracted_bytes:
                raise ArchiveError(f"the files hold more than {human_size(limits.max_extracted_bytes)}")
            path = dest / check_member_name(name)
            if path.resolve() == dest.resolve():  # "." or "./": the folder itself
                raise ArchiveError(f"{name!r} is not a file name")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            except OSError as exc:  # a name that is both a file and a folder ("a", "a/b.py"), ...
                raise ArchiveError(f"file {name!r} cannot be written: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def check_members(archive: tarfile.TarFile, limits: UploadLimits) -> list[tarfile.TarInfo]:
    """The archive's members if every one is a plain file or folder inside the archive, within limits."""
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in archive:
        members.append(member)
        if len(members) > limits.max_archive_members:
            raise ArchiveError(f"the archive holds more than {limits.max_archive_members} members")
        name = check_member_name(member.name)
        if member.issym() or member.islnk():
            raise ArchiveError(f"member {name!r} is a link; only plain files and folders are accepted")
        if not (member.isfile() or member.isdir()):
            raise ArchiveError(f"member {name!r} is a device, pipe or other special file")
        total += max(member.size, 0)
        if total > limits.max_extracted_bytes:
            raise ArchiveError(f"the archive unpacks to more than {human_size(limits.max_extracted_bytes)}")
    if not any(m.isfile() for m in members):
        raise ArchiveError("the archive holds no files")
    return members


class _Bounded:
    """The decompressed archive as tarfile reads it, refused once it goes past ``budget`` bytes; and
    while ``listing`` (the members' headers are read, their data skipped), a read larger than a block
    is a long-name or pax header, bounded by :data:`MAX_HEADER_BYTES` and :data:`MAX_LARGE_HEADERS`.
    A small gzip can hold gigabytes, and those headers are not members: no member count or size sees them."""

    def __init__(self, raw: Any, budget: int):
        self.raw, self.budget = raw, budget
        self.listing, self.large_headers = True, 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or (self.listing and size > MAX_HEADER_BYTES):
            raise ArchiveError("the archive holds a header (a long name or pax record) larger than 4 KB")
        if self.listing and size > tarfile.BLOCKSIZE:
            self.large_headers += 1
            if self.large_headers > MAX_LARGE_HEADERS:
                raise ArchiveError(f"the archive holds more than {MAX_LARGE_HEADERS} long-name or pax headers "
                                   "larger than a block")  # fmt: skip
        data = self.raw.read(size)
        self._check()
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self.raw.seek(offset, whence)
        self._check()
        return position

    def tell(self) -> int:
        return self.raw.tell()

    def _check(self) -> None:
        if self.raw.tell() > self.budget:
            raise ArchiveError(f"the archive unpacks to more than {human_size(self.budget)}")


def extract_archive(archive_path: Path, dest: Path, limits: UploadLimits) -> None:
    """Unpack the ``.tar.gz`` at ``archive_path`` into the empty folder ``dest``.

    Every member is checked first (:func:`check_members`); tarfile's ``data`` filter checks again
    while extracting. Raises :class:`ArchiveError`, after which ``dest`` is removed.
    """
    # what tarfile may decompress: the members' data, a header block per member and the padding
    budget = limits.max_extracted_bytes + 2048 * (limits.max_archive_members + 1) + 64 * 1024
    try:
        with gzip.open(archive_path, "rb") as raw:
            bounded = _Bounded(raw, budget)
            with tarfile.open(fileobj=bounded, mode="r:") as archive:
                members = check_members(archive, limits)
                bounded.listing = False  # now the members' data, in blocks of tarfile's own size
                archive.extractall(dest, members=members, filter="data")
    except ArchiveError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except RecursionError:  # thousands of chained long-name headers: tarfile recurses once per header
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveError("the archive chains too many long-name or pax headers") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)  # no server paths
        raise ArchiveError(f"not a valid .tar.gz archive: {why[:300]}") from None
    with contextlib.suppress(OSError):
        dest.chmod(0o755)


__all__ = [
    "ID_RE", "SIGNED_UPLOAD", "ArchiveError", "UploadLimits", "check_declared_sizes", "check_id",
    "check_member_name", "check_texts", "extract_archive", "is_signed_upload", "write_files", "limited_receive", "now_rfc3339", "save_stream", "too_large",
]  # fmt: skip
