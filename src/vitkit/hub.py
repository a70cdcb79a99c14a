"""Weights from elsewhere: the Hugging Face Hub and plain URLs, fetched into a cache once.

    hf-hub:OWNER/REPO[@REVISION][/FILE]   a transformers or timm repo (config.json + weights),
                                          or one file of a repo, e.g. an official .npz
    https://HOST/PATH/FILE[#sha256=HEX]   one file, checked against the sha256 when given

The Hub goes through huggingface_hub, with its cache, revisions, tokens and settings
(HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_HUB_OFFLINE), read at each call so that a
notebook may set them after import. A URL is downloaded once into vitkit's download cache
($VITKIT_DOWNLOAD_DIR, else $XDG_CACHE_HOME/vitkit/downloads or ~/.cache/vitkit/downloads,
beside the feature cache) under a folder named by the URL's hash, so two files of one name from
different places never collide; it is never asked for again. VITKIT_OFFLINE=1 or
HF_HUB_OFFLINE=1 serves both from the caches only.

Every failure to fetch is one DownloadError naming the problem and the way out, and leaves nothing
half-written in either cache: downloads go to a temporary name and are checked (length,
sha256 or git hash where known, the zip or safetensors structure) before being renamed into
place, so the next call starts clean once the cause is gone. Nothing is unpickled here.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

from vitkit.errors import DownloadError
from vitkit.io import atomic_path, file_digest, user_cache_dir
from vitkit.progress import Progress, is_silenced

HUB_PREFIX = "hf-hub:"
URL_PREFIXES = ("https://", "http://")
DOWNLOAD_DIR_VARIABLE = "VITKIT_DOWNLOAD_DIR"
OFFLINE_VARIABLES = ("VITKIT_OFFLINE", "HF_HUB_OFFLINE")
# Seconds a connection or a read may stall before the download counts as failed.
TIMEOUT = 60
_CHUNK = 1 << 20
_MAX_INFLATION = 16
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")

# A transformers repo's weights, in the order they are looked for: safetensors first, the
# pickle last (read by vitkit's hardened torch reader with weights_only=True).
HUB_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def is_remote(spec: str) -> bool:
    return spec.startswith((HUB_PREFIX, *URL_PREFIXES))


def fetch(spec: str, *, prefer_cache: bool = False) -> Path:
    """The local file or folder that `spec` (hf-hub:... or a URL) names, downloaded if needed.

    With `prefer_cache`, Hub files already cached are used without asking the Hub for a newer
    commit (a fixed release); by default a branch is followed as transformers and timm follow it."""
    if spec.startswith(HUB_PREFIX):
        return fetch_hub(spec, prefer_cache=prefer_cache)
    return fetch_url(spec)


def offline() -> str | None:
    """The variable that switched offline mode on, if one did."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return name
    return None


def download_dir() -> Path:
    """vitkit's download cache (URLs; the Hub keeps its own)."""
    return user_cache_dir("downloads", DOWNLOAD_DIR_VARIABLE)


# ----------------------------------------------------------------------------- URLs

def url_cache_path(url: str) -> Path:
    """Where a URL's file is kept: a folder named by the URL's hash, holding the file's own name."""
    url = url.split("#", 1)[0]
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1]).replace("/", "_").replace("\\", "_")
    if name in ("", ".", ".."):
        name = "download"
    return download_dir() / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def fetch_url(url: str) -> Path:
    """The cached file of `url`, downloaded first if it is not there; a #sha256=HEX fragment is
    checked against the download."""
    url, _, fragment = url.partition("#")
    sha256 = None
    if fragment:
        match = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
        if match is None:
            raise DownloadError(f"{url}#{fragment}: the only fragment vitkit reads is #sha256=<64 hex digits>")
        sha256 = match.group(1).lower()
    target = url_cache_path(url)
    if target.is_file():
        return target
    switch = offline()
    if switch:
        raise DownloadError(f"{url} is not in vitkit's download cache ({target.parent}) and {switch} is set; unset it "
                            "to download, or put the file there")
    try:
        _download(url, target, sha256)
    except BaseException:
        with contextlib.suppress(OSError):
            target.parent.rmdir()  # the folder made for it, left empty
        raise
    return target


def _download(url: str, target: Path, sha256: str | None) -> None:
    from vitkit import __version__

    host = urlsplit(url).netloc or url
    request = urllib.request.Request(url, headers={"User-Agent": f"vitkit/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        raise _http_error(url, host, e.code) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"cannot reach {host} to download {url} ({reason}); check the network and proxy, "
                            "or set VITKIT_OFFLINE=1 to use only files already cached") from None
    with response:
        declared = response.headers.get("Content-Length")
        declared = int(declared) if declared and declared.isdigit() else None
        digest = hashlib.sha256()
        received = 0
        try:
            with atomic_path(target) as tmp:
                total = -(-declared // _CHUNK) if declared is not None else None
                with open(tmp, "wb") as out, Progress(total, f"downloading {target.name}", unit="MiB") as bar:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(-(-received // _CHUNK) - bar.count)
                if declared is not None and received != declared:
                    raise DownloadError(f"the download of {url} stopped after {received:,} of {declared:,} bytes; "
                                        "run the command again")
                if sha256 and digest.hexdigest() != sha256:
                    raise DownloadError(f"the download of {url} is corrupt: its sha256 is {digest.hexdigest()}, "
                                        f"not {sha256}; run the command again, or check the address")
                _check_structure(tmp, url)
        except DownloadError:
            raise
        except (OSError, http.client.HTTPException) as e:  # the connection dropped mid-read, or the disk is full
            raise DownloadError(f"the download of {url} failed after {received:,} bytes ({e}); "
                                "run the command again") from None


def _http_error(url: str, host: str, code: int) -> DownloadError:
    if code in (404, 410):
        return DownloadError(f"{url} was not found (HTTP {code}); check the address")
    if code in (401, 403):
        return DownloadError(f"{host} refused {url} (HTTP {code}); the file has moved or needs credentials")
    if code >= 500:
        return DownloadError(f"{host} failed with a server error (HTTP {code}) for {url}; try again later")
    return DownloadError(f"{host} answered HTTP {code} for {url}")


def _check_structure(path: Path, url: str) -> None:
    """Refuse a download whose structure is broken, before it enters the cache: a zip (.npz,
    torch's own files) must be whole with every member's CRC-32 right, a .safetensors file as
    long as its header says."""
    from safetensors import SafetensorError, safe_open

    suffix = Path(urlsplit(url).path).suffix.lower()
    if suffix in (".npz", ".zip") or zipfile.is_zipfile(path):
        member = "?"
        try:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    member = info.filename
                    # Weights barely compress; a member that inflates far beyond its stored size
                    # is left to the reader, which checks declared sizes before allocating.
                    if info.file_size > _MAX_INFLATION * info.compress_size + _CHUNK:
                        continue
                    with archive.open(info) as data:  # raises at the end if the CRC-32 is wrong
                        while data.read(_CHUNK):
                            pass
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
            raise DownloadError(f"the download of {url} is corrupt ({member}: {e}); run the command again, "
                                "or check the address") from None
    elif suffix == ".safetensors":
        try:
            with safe_open(str(path), "pt"):
                pass
        except (SafetensorError, OSError, ValueError) as e:
            raise DownloadError(f"the download of {url} is not a whole safetensors file ({e}); run the "
                                "command again, or check the address") from None


# ----------------------------------------------------------------------------- the Hub

def parse_hub(spec: str) -> tuple[str, str | None, str | None]:
    """(repo id, revision or None, file or None) of hf-hub:OWNER/REPO[@REVISION][/FILE]; a
    revision holding "/" is written URL-encoded (refs%2Fpr%2F1), as in hf:// addresses."""
    match = re.fullmatch(r"([\w.-]+/[\w.-]+)(?:@([^/]+))?(?:/(.+))?", spec[len(HUB_PREFIX):])
    if match is None:
        raise DownloadError(f"{spec!r} is not a Hub address; write hf-hub:OWNER/REPO, optionally with "
                            "@REVISION and /FILE")
    repo, revision, filename = match.groups()
    return repo, unquote(revision) if revision else None, filename


def fetch_hub(spec: str, *, prefer_cache: bool = False) -> Path:
    """A repo's folder in the Hub cache holding config.json and its weights (and a transformers
    repo's preprocessor_config.json), or the one file the address names. A repo without
    config.json is taken for a file release: its one .npz."""
    from vitkit.formats.hf import read_json

    repo, revision, filename = parse_hub(spec)
    hub = _Hub(spec, repo, revision, prefer_cache)
    if filename:
        return hub.file(filename)
    config_path = hub.file("config.json", optional=True)
    if config_path is None:
        return hub.file(hub.only_npz())
    config = read_json(config_path)
    if config.get("model_type", "vit") != "vit":  # refused before gigabytes of weights are fetched
        raise DownloadError(f"{spec} holds a transformers {config['model_type']!r} model; vitkit reads ViT repos "
                            "(model_type 'vit'), timm repos and repos holding an .npz")
    for name in HUB_WEIGHTS:
        weights = hub.file(name, optional=True)
        if weights is not None:
            break
    else:
        raise DownloadError(f"{spec} has config.json but none of {', '.join(HUB_WEIGHTS)}; it holds no weights "
                            "vitkit reads")
    if name.endswith(".index.json"):
        shards = read_json(weights).get("weight_map", {})
        for shard in sorted(set(shards.values()) if isinstance(shards, dict) else ()):
            hub.file(str(shard))
    if "model_type" in config:
        hub.file("preprocessor_config.json", optional=True)
    return config_path.parent


@contextlib.contextmanager
def _hub_bars():
    """huggingface_hub draws its own download bars: none within `vitkit --quiet` (silenced)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if not is_silenced() or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


class _Hub:
    """One repo at one revision, with huggingface_hub's errors turned into DownloadErrors."""

    def __init__(self, spec: str, repo: str, revision: str | None, prefer_cache: bool):
        self.spec, self.repo, self.revision, self.prefer_cache = spec, repo, revision, prefer_cache
        # Read at each call rather than at import, where huggingface_hub reads them.
        self.endpoint = (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None
        if os.environ.get("HF_HUB_CACHE"):
            self.cache = os.environ["HF_HUB_CACHE"]
        elif os.environ.get("HF_HOME"):
            self.cache = os.path.join(os.environ["HF_HOME"], "hub")
        else:
            self.cache = None  # huggingface_hub's default
        self.switch = offline()

    def _where(self) -> str:
        return self.endpoint or "the Hugging Face Hub"

    def file(self, filename: str, optional: bool = False) -> Path | None:
        """The cached path of one file, downloaded if needed; None for an optional file the repo
        does not have."""
        from huggingface_hub import errors, hf_hub_download, try_to_load_from_cache

        from vitkit import __version__

        cached = try_to_load_from_cache(self.repo, filename, cache_dir=self.cache, revision=self.revision)
        settled = bool(self.switch) or self.prefer_cache or bool(_GIT_SHA1.fullmatch(self.revision or ""))
        if optional and settled and cached is not None and not isinstance(cached, str):
            return None  # the Hub said before that this commit has no such file
        options = dict(repo_id=self.repo, filename=filename, revision=self.revision, cache_dir=self.cache,
                       endpoint=self.endpoint, library_name="vitkit", library_version=__version__)
        if isinstance(cached, str) and self.prefer_cache:
            return Path(cached)
        try:
            with _hub_bars():
                path = hf_hub_download(**options, local_files_only=bool(self.switch))
        except errors.RemoteEntryNotFoundError:
            if optional:
                return None
            raise DownloadError(f"{self.spec} has no file {filename}"
                                + (f" at revision {self.revision}" if self.revision else "")
                                + "; check the name (the repo's files are listed on its Hub page)") from None
        except errors.LocalEntryNotFoundError as e:
            if optional and self.switch:
                return None  # not cached; whether the repo has it cannot be known offline
            raise self._unreachable(filename, e) from None
        except errors.GatedRepoError:
            raise DownloadError(f"{self.spec} is gated: accept its terms on its Hub page, then log in "
                                "(`hf auth login`) or set HF_TOKEN") from None
        except errors.RepositoryNotFoundError:
            raise DownloadError(f"{self.spec}: no repository {self.repo} on {self._where()} (a private one "
                                "needs a token: `hf auth login` or HF_TOKEN); check the name") from None
        except errors.RevisionNotFoundError:
            raise DownloadError(f"{self.spec}: {self.repo} has no revision {self.revision!r}; use a branch, tag "
                                "or commit it has") from None
        except errors.HfHubHTTPError as e:
            raise self._http(filename, e) from None
        except OSError as e:  # incomplete transfer ("Consistency check failed"), disk full
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DownloadError(f"{self.spec}: the download of {filename} failed ({detail}); run the command "
                                "again") from None
        except Exception as e:
            if not _is_transport_error(e):
                raise
            raise DownloadError(f"{self.spec}: the download of {filename} was interrupted ({type(e).__name__}: "
                                f"{e}); run the command again") from None
        if not (isinstance(cached, str) and os.path.realpath(cached) == os.path.realpath(path)):
            self._verify(Path(path), filename)
        return Path(path)

    def _unreachable(self, filename: str, error: Exception) -> DownloadError:
        if self.switch:
            where = self.cache or "the Hugging Face cache"
            return DownloadError(f"{self.spec}: {filename} is not in {where} and {self.switch} is set; unset it "
                                 "to download")
        cause = error.__cause__
        from huggingface_hub import errors

        if isinstance(cause, errors.HfHubHTTPError) and cause.response is not None:
            return self._http(filename, cause)
        if isinstance(cause, errors.FileMetadataError):
            return DownloadError(f"{self.spec}: {self._where()} does not answer as a Hugging Face Hub does "
                                 "(check HF_ENDPOINT and the proxy)")
        reason = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        return DownloadError(f"{self.spec}: cannot reach {self._where()}{reason}; check the network, or set "
                             "HF_HUB_OFFLINE=1 to use only files already cached")

    def _http(self, filename: str, error) -> DownloadError:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status is not None and status >= 500:
            return DownloadError(f"{self.spec}: {self._where()} failed with a server error (HTTP {status}) for "
                                 f"{filename}; try again later")
        return DownloadError(f"{self.spec}: {self._where()} answered HTTP {status} for {filename}")

    def _verify(self, path: Path, filename: str) -> None:
        """The Hub names a cached file's blob by its ETag: the sha256 of an LFS file, the git
        blob hash of a small one. A fresh download that does not hash to it is removed."""
        blob = Path(os.path.realpath(path))
        if _SHA256.fullmatch(blob.name):
            digest = file_digest(blob, hashlib.sha256())
        elif _GIT_SHA1.fullmatch(blob.name):
            digest = file_digest(blob, hashlib.sha1(f"blob {blob.stat().st_size}\0".encode()))
        else:
            return  # a copy instead of a link to its blob (no symlinks here): nothing to compare
        if digest != blob.name:
            for stale in (path, blob):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
            raise DownloadError(f"{self.spec}: the download of {filename} is corrupt (its hash is {digest}, the "
                                f"Hub's {blob.name}) and was removed from the cache; run the command again")

    def only_npz(self) -> str:
        """The one .npz of a repo without config.json (from the Hub, or offline from the cache)."""
        from huggingface_hub import HfApi, errors, snapshot_download

        try:
            if self.switch:
                folder = Path(snapshot_download(self.repo, revision=self.revision, cache_dir=self.cache,
                                                local_files_only=True, allow_patterns=["*.npz"]))
                names = [str(p.relative_to(folder)) for p in folder.rglob("*.npz")]
            else:
                names = HfApi(endpoint=self.endpoint).list_repo_files(self.repo, revision=self.revision)
        except errors.LocalEntryNotFoundError as e:
            raise self._unreachable("config.json", e) from None
        except errors.RepositoryNotFoundError:
            raise DownloadError(f"{self.spec}: no repository {self.repo} on {self._where()}; check the name") from None
        except errors.RevisionNotFoundError:
            raise DownloadError(f"{self.spec}: {self.repo} has no revision {self.revision!r}") from None
        except errors.HfHubHTTPError as e:
            raise self._http("its file list", e) from None
        except Exception as e:
            if not _is_transport_error(e):
                raise
            raise DownloadError(f"{self.spec}: cannot reach {self._where()} ({type(e).__name__}: {e}); check the "
                                "network, or set HF_HUB_OFFLINE=1 to use only files already cached") from None
        npz = sorted(n for n in names if n.endswith(".npz"))
        if len(npz) == 1:
            return npz[0]
        if not npz:
            raise DownloadError(f"{self.spec} has no config.json and no .npz; it is not a model repo vitkit reads")
        raise DownloadError(f"{self.spec} holds {len(npz)} .npz files ({', '.join(npz[:4])}"
                            f"{' ...' if len(npz) > 4 else ''}); name one: {HUB_PREFIX}{self.repo}/{npz[0]}")


def _is_transport_error(error: Exception) -> bool:
    """An error of huggingface_hub's HTTP client (a dropped connection, a timeout)."""
    module = type(error).__module__ or ""
    return module.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2")


