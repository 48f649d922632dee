"""Download and extract ADE20K (SceneParse150) safely.

Streaming with a progress bar, resume of an interrupted download with an HTTP Range request,
retries with exponential backoff, SHA-1 verification before the archive gets its final name,
and extraction that refuses any entry escaping the destination (zip-slip) and is idempotent.
"""

from __future__ import annotations

import hashlib
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from edgeseg.atomic import commit
from edgeseg.errors import InputError

# Client errors worth a retry: request timeout and rate limiting. Any other 4xx fails at once.
RETRY_STATUSES = {408, 429}
CHUNK_BYTES = 1 << 16  # small enough that a dropped connection loses little


@dataclass(frozen=True)
class Archive:
    url: str
    sha1: str
    folder: str  # top-level folder the archive extracts to


# The published MIT Scene Parsing benchmark archives and their SHA-1 sums.
ARCHIVES = {
    "ADEChallengeData2016": Archive(
        "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
        "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7", "ADEChallengeData2016"),
    "release_test": Archive(
        "http://data.csail.mit.edu/places/ADEchallenge/release_test.zip",
        "e05747892219d10e9243933371a497e905a4860c", "release_test"),
}


class DownloadError(InputError, ValueError):
    """A download or extraction that failed; nothing corrupt is left under the final name."""


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha1: str, retries: int = 5, backoff_s: float = 1.0,
             timeout_s: float = 30.0, progress: bool = True) -> Path:
    """Download `url` to `dest`, resuming ``dest.part`` if present; verify SHA-1; rename.

    Returns at once when `dest` already exists with the right hash (idempotent).

    Raises:
        DownloadError: server errors after all retries, disk full, or a hash mismatch (the
            corrupt partial file is deleted so the next run starts clean).
    """
    dest = Path(dest)
    if dest.is_file():
        if sha1_of(dest) == sha1:
            return dest
        dest.unlink()  # a file with the wrong content under the final name is never kept
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            _fetch(url, part, timeout_s, progress)
            break
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status not in RETRY_STATUSES and 400 <= status < 500:
                part.unlink(missing_ok=True)
                raise DownloadError(f"download of {url} failed: HTTP {status} {exc.response.reason}; check the URL"
                                    " (--url) - retrying cannot help") from exc
            attempt += 1
            if attempt > retries:
                raise DownloadError(f"download of {url} failed after {retries} retries (HTTP {status}); run the same"
                                    " command again to resume") from exc
            time.sleep(backoff_s * 2 ** (attempt - 1))
        except (requests.RequestException, ConnectionError) as exc:
            attempt += 1
            if attempt > retries:
                raise DownloadError(f"download of {url} failed after {retries} retries ({exc.__class__.__name__});"
                                    f" run the same command again to resume from {part.stat().st_size if part.exists() else 0} bytes") from exc
            time.sleep(backoff_s * 2 ** (attempt - 1))
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise DownloadError(f"cannot write {part} ({exc.strerror}); free disk space or choose another --dest") from exc
    actual = sha1_of(part)
    if actual != sha1:
        part.unlink()
        raise DownloadError(f"{dest.name} has SHA-1 {actual} but {sha1} was expected; the download was"
                            " corrupt and has been deleted - run the command again")
    commit(part, dest)
    return dest


def _fetch(url: str, part: Path, timeout_s: float, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout_s) as response:
        if response.status_code == 416:  # asked past the end: the part file is already complete
            return
        response.raise_for_status()
        if have and response.status_code != 206:
            have = 0  # the server ignored Range: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as handle, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
            disable=None if progress else True, leave=False,
        ) as bar:
            received = 0
            for chunk in response.iter_content(CHUNK_BYTES):
                handle.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if length is not None and received < int(length):
            raise requests.ConnectionError(f"connection closed after {have + received} of {total} bytes")


def extract(archive: Path, dest: Path, progress: bool = True) -> Path:
    """Extract a zip into `dest`, refusing entries that would land outside it.

    Idempotent: a ``.extracted-<name>`` marker written last says the extraction completed, so
    an interrupted extraction is redone and a complete one is skipped.

    Raises:
        DownloadError: an unsafe entry (absolute path or ``..``) or a corrupt archive.
    """
    dest = Path(dest).resolve()
    marker = dest / f".extracted-{archive.name}"
    if marker.is_file():
        return dest
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            for member in members:
                target = (dest / member.filename).resolve()
                if member.filename.startswith(("/", "\\")) or (target != dest and dest not in target.parents):
                    raise DownloadError(f"{archive.name} holds an entry that escapes the destination"
                                        f" ({member.filename!r}); refusing to extract - the archive is unsafe")
            for member in tqdm(members, desc=f"extract {archive.name}", unit="file", leave=False,
                               disable=None if progress else True):
                zipped.extract(member, dest)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive} is not a valid zip ({exc}); delete it and download again") from exc
    except OSError as exc:
        raise DownloadError(f"cannot extract into {dest} ({exc.strerror}); free disk space and run again"
                            " (the extraction restarts)") from exc
    marker.write_text("ok\n")
    return dest


def fetch_dataset(dest: Path, url: str | None = None, sha1: str | None = None, name: str = "ADEChallengeData2016",
                  keep_zip: bool = True, progress: bool = True) -> Path:
    """Download (or reuse) and extract an ADE20K archive under `dest`; returns the dataset root."""
    archive = ARCHIVES[name]
    url = url or archive.url
    zip_path = Path(dest) / (url.rstrip("/").rsplit("/", 1)[-1] or f"{name}.zip")
    download(url, zip_path, sha1 or archive.sha1, progress=progress)
    root = extract(zip_path, Path(dest), progress=progress)
    if not keep_zip:
        zip_path.unlink()
    return root / archive.folder
