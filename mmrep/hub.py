"""Pretrained weights by name: the files behind ``timm://``, ``http(s)://`` and local names.

``init_cfg=dict(type='Pretrained', checkpoint=NAME)`` in an mmrep backbone
accepts, as NAME:

* ``timm://<model>.<tag>``, e.g. ``timm://repvgg_a0.rvgg_in1k``: the file
  ``model.safetensors`` (else ``pytorch_model.bin``) of the Hugging Face hub
  repo ``timm/<model>.<tag>``, downloaded by ``huggingface_hub`` into its
  cache (``HF_HOME`` / ``HF_HUB_CACHE``), from ``HF_ENDPOINT``, never when
  ``HF_HUB_OFFLINE=1``. The three variables are read when the weights are
  fetched, so setting them after ``huggingface_hub`` was imported works too.
* an ``http(s)://`` URL (mmpretrain's ``download.openmmlab.com`` checkpoints,
  official GitHub releases): downloaded once to
  ``<weights dir>/url/<host>/<path>``; a ``-<hex>.`` hash prefix in the
  file name (``..._20210909-883ab98c.pth``) must start the file's sha256;
* a local file.

:func:`fetch` turns a NAME into a :class:`FetchedFile`. The weights
directory is ``$MMREP_WEIGHTS_DIR``, by default ``~/.cache/mmrep/weights``;
a file placed there by hand (``timm/<model>.<tag>/model.safetensors``,
``url/<host>/<path>``) is used without network access. Downloads are
written to a temporary name and renamed when complete and checked, so the
cache never holds a partial file. Anything that prevents getting the file
raises :class:`WeightsUnavailableError`, which says where to put the file
by hand, how to convert it, and how to train from scratch.

Loading, layout detection and conversion of the fetched file:
:mod:`mmrep.converters.auto`; the ``Pretrained`` initializer that joins
them: :mod:`mmrep.pretrained_init`.
"""
from __future__ import annotations

import hashlib
import os
import os.path as osp
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from mmengine.logging import print_log

TIMM_SCHEME = 'timm://'
URL_SCHEMES = ('http://', 'https://')
# what timm publishes per hub repo, in the order taken
HUB_FILES = ('model.safetensors', 'pytorch_model.bin')
DEFAULT_ENDPOINT = 'https://huggingface.co'
WEIGHTS_DIR_ENV = 'MMREP_WEIGHTS_DIR'
CONVERTED_DIR = 'mmrep-converted'
DOWNLOAD_TIMEOUT = 30  # seconds without data before a download is given up
# torch.hub's convention, used by mmpretrain and torchvision: NAME-<sha256 prefix>.EXT
_HASH_PREFIX = re.compile(r'-([0-9a-f]{8,64})(?:\.[A-Za-z0-9]+)+$')
_TIMM_NAME = re.compile(r'[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)?')


class WeightsUnavailableError(RuntimeError):
    """The pretrained weights a config names cannot be had; the message says what to do.

    Attributes: ``name`` (as the config gives it), ``reason``, ``manual_path``
    (where a file placed by hand is used), ``source_url``.
    """

    def __init__(self, name: str, reason: str, manual_path: Optional[str] = None,
                 source_url: Optional[str] = None, convert_command: Optional[str] = None,
                 converted: str = 'OUT.pth'):
        self.name, self.reason = name, reason
        self.manual_path, self.source_url = manual_path, source_url
        self.convert_command, self.converted = convert_command, converted
        super().__init__(self._message())

    def with_convert_command(self, command: str, converted: str) -> 'WeightsUnavailableError':
        """The same error, advising ``command`` (``tools/convert_weights.py ...``) that writes
        ``converted``."""
        return WeightsUnavailableError(self.name, self.reason, self.manual_path, self.source_url,
                                       command, converted)

    def _message(self) -> str:
        lines = [f'cannot get the pretrained weights {self.name}: {self.reason}.',
                 'To train with them on a machine without network access, either']
        if self.manual_path:
            where = f' {self.source_url}' if self.source_url else ''
            lines.append(f'  - download{where} elsewhere and place the file at\n'
                         f'      {self.manual_path}\n'
                         '    (it is used from there, converted and checked when training starts), or')
        command = self.convert_command or ('python tools/convert_weights.py FILE OUT.pth '
                                           '--from {official,timm,mmpretrain} --arch ARCH')
        lines.append(f'  - convert a downloaded copy yourself:\n      {command}\n'
                     '    and train with --cfg-options '
                     f'model.backbone.init_cfg.checkpoint={self.converted}, or')
        lines.append('  - train from scratch: --cfg-options model.backbone.init_cfg=None')
        return '\n'.join(lines)


@dataclass
class FetchedFile:
    """A pretrained-weights file on this machine, and where its conversions are cached."""
    name: str                      # as the config names it
    path: str                      # the local file
    converted_dir: str             # conversions of it are cached here
    _sha256: Optional[str] = field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256_of(self.path)
        return self._sha256


# ---------------------------------------------------------------- locations


def weights_dir() -> str:
    """``$MMREP_WEIGHTS_DIR``, else ``~/.cache/mmrep/weights`` (read on every call)."""
    return osp.abspath(osp.expanduser(os.environ.get(WEIGHTS_DIR_ENV)
                                      or osp.join('~', '.cache', 'mmrep', 'weights')))


def hf_cache_dir() -> str:
    """The Hugging Face hub cache, as ``huggingface_hub`` computes it, from the environment now."""
    hub_cache = os.environ.get('HF_HUB_CACHE') or os.environ.get('HUGGINGFACE_HUB_CACHE')
    if hub_cache:
        return osp.expanduser(hub_cache)
    home = os.environ.get('HF_HOME') or osp.join(
        os.environ.get('XDG_CACHE_HOME') or osp.join('~', '.cache'), 'huggingface')
    return osp.join(osp.expanduser(home), 'hub')


def hf_endpoint() -> str:
    """``$HF_ENDPOINT`` (a hub mirror), else the Hugging Face hub, read now."""
    return (os.environ.get('HF_ENDPOINT') or DEFAULT_ENDPOINT).rstrip('/')


def hf_offline() -> bool:
    """Is ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to a true value, now?"""
    value = os.environ.get('HF_HUB_OFFLINE') or os.environ.get('TRANSFORMERS_OFFLINE') or ''
    return value.strip().upper() in ('1', 'ON', 'YES', 'TRUE')


def parse_timm_name(name: str) -> Tuple[str, str]:
    """``'timm://repvgg_a0.rvgg_in1k'`` -> ``('repvgg_a0', 'timm/repvgg_a0.rvgg_in1k')``."""
    body = name[len(TIMM_SCHEME):]
    if not _TIMM_NAME.fullmatch(body):
        raise ValueError(f'{name!r} is not a timm weights name: write timm://<model>.<tag>, '
                         'e.g. timm://repvgg_a0.rvgg_in1k')
    return body.split('.')[0], f'timm/{body}'


def timm_manual_path(repo_id: str, filename: str = HUB_FILES[0]) -> str:
    """Where a hub file placed by hand is found: ``<weights dir>/timm/<model>.<tag>/<file>``."""
    return osp.join(weights_dir(), 'timm', repo_id.split('/', 1)[1], filename)


_GDRIVE_FILE = re.compile(r'/file/d/([A-Za-z0-9_\-]+)(/view)?/?$')


def download_url(url: str) -> str:
    """The address that serves the file itself: a Google Drive page gives its direct link."""
    parts = urllib.parse.urlsplit(url)
    match = _GDRIVE_FILE.match(parts.path) if parts.hostname == 'drive.google.com' else None
    if match:  # served directly for small files; large ones get a confirmation page
        return f'https://drive.google.com/uc?export=download&id={match.group(1)}'
    return url


def url_path(url: str) -> str:
    """Where the file of ``url`` is downloaded (and may be placed by hand): one file per URL."""
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.unquote(parts.path)
    if parts.hostname == 'drive.google.com':
        path = _GDRIVE_FILE.sub(r'/file/d/\1', path)
    segments = [s for s in path.split('/') if s]
    if not parts.hostname or not segments or any(s in ('.', '..') for s in segments):
        raise ValueError(f'{url!r} does not name a file')
    host = parts.hostname + (f'_{parts.port}' if parts.port else '')
    return osp.join(weights_dir(), 'url', host, *segments)


def hash_prefix_of(filename: str) -> Optional[str]:
    """The sha256 prefix that a ``NAME-<hex>.EXT`` file name promises, or None."""
    match = _HASH_PREFIX.search(osp.basename(filename))
    return match.group(1) if match else None


_SHA_MEMO: Dict[Tuple[str, int, int], str] = {}


def sha256_of(path: str) -> str:
    """The file's sha256 (hex), remembered per (path, size, mtime) for this process."""
    real = osp.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_MEMO:
        digest = hashlib.sha256()
        with open(real, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
        _SHA_MEMO[key] = digest.hexdigest()
    return _SHA_MEMO[key]


# ---------------------------------------------------------------- fetching


def fetch(name: str, download: bool = True) -> Optional[FetchedFile]:
    """The local file behind ``name``, downloading it if needed.

    None for names of other schemes (``torchvision://``, ``open-mmlab://``,
    ...), which mmengine's own loaders resolve, and with ``download=False``
    (no network access) for a file that is not here yet. Raises
    :class:`WeightsUnavailableError` when the file cannot be had.
    """
    if name.startswith(TIMM_SCHEME):
        _, repo_id = parse_timm_name(name)
        found = _timm_local(name, repo_id)
        return found if found is not None or not download else _fetch_timm(name, repo_id)
    if name.startswith(URL_SCHEMES):
        try:
            path = url_path(name)
        except ValueError as error:
            raise WeightsUnavailableError(name, str(error)) from None
        if not download:  # no network, and no hashing of a big file either: fetch checks it
            return FetchedFile(name, path, osp.join(osp.dirname(path), CONVERTED_DIR)) \
                if osp.isfile(path) else None
        return _fetch_url(name, path)
    if re.match(r'[A-Za-z][A-Za-z0-9+.\-]*://', name):
        return None
    path = osp.abspath(osp.expanduser(name))
    if not osp.isfile(path):
        if not download:
            return None
        raise WeightsUnavailableError(name, f'the file {path} does not exist')
    return FetchedFile(name, path, osp.join(weights_dir(), CONVERTED_DIR))


def _timm_local(name: str, repo_id: str) -> Optional[FetchedFile]:
    """A file placed by hand, else one in the Hugging Face cache; no network access."""
    for filename in HUB_FILES:
        manual = timm_manual_path(repo_id, filename)
        if osp.isfile(manual):
            return FetchedFile(name, manual, osp.join(osp.dirname(manual), CONVERTED_DIR))
    from huggingface_hub import try_to_load_from_cache
    for filename in HUB_FILES:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=hf_cache_dir())
        if isinstance(cached, str) and osp.isfile(cached):
            return FetchedFile(name, cached, _hf_converted_dir(repo_id))
    return None


def _hf_converted_dir(repo_id: str) -> str:
    # next to the download: inside the repo's folder of the hub cache, beside its snapshots
    return osp.join(hf_cache_dir(), 'models--' + repo_id.replace('/', '--'), CONVERTED_DIR)


def _fetch_timm(name: str, repo_id: str) -> FetchedFile:
    endpoint = hf_endpoint()
    url = f'{endpoint}/{repo_id}/resolve/main/{HUB_FILES[0]}'
    unavailable = lambda reason: WeightsUnavailableError(  # noqa: E731
        name, reason, timm_manual_path(repo_id), url)
    if hf_offline():
        raise unavailable(f'HF_HUB_OFFLINE is set and {repo_id} is not in the Hugging Face cache '
                          f'{hf_cache_dir()}')
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError
    for filename in HUB_FILES:
        # One HEAD request first: huggingface_hub retries an unreachable hub for ~25 s
        # with back-off before failing, and twice over for the two file names.
        try:
            get_hf_file_metadata(hf_hub_url(repo_id, filename, endpoint=endpoint), timeout=10)
        except (EntryNotFoundError, RepositoryNotFoundError) as error:
            if filename == HUB_FILES[-1]:
                raise unavailable(f'{endpoint} has neither {" nor ".join(HUB_FILES)} in {repo_id} '
                                  f'({_first_line(error)})') from None
            continue
        except HfHubHTTPError as error:
            raise unavailable(f'{endpoint} refused {repo_id}/{filename} '
                              f'({_first_line(error)})') from None
        except Exception as error:  # noqa: BLE001  (connection errors of the HTTP backend)
            raise unavailable(f'the Hugging Face hub {endpoint} is not reachable '
                              f'({type(error).__name__}: {_first_line(error)})') from None
        print_log(f'downloading {repo_id}/{filename} from {endpoint}', logger='current')
        try:
            path = hf_hub_download(repo_id, filename, cache_dir=hf_cache_dir(), endpoint=endpoint)
        except Exception as error:  # noqa: BLE001  (huggingface_hub removes its partial file)
            raise unavailable(f'the download of {repo_id}/{filename} from {endpoint} failed '
                              f'({type(error).__name__}: {_first_line(error)})') from None
        fetched = FetchedFile(name, path, _hf_converted_dir(repo_id))
        _check_hub_blob(fetched, unavailable)
        return fetched
    raise AssertionError('unreachable')


def _check_hub_blob(fetched: FetchedFile, unavailable) -> None:
    """A hub LFS file is stored under its sha256 (``blobs/<sha256>``): check it."""
    blob = osp.basename(osp.realpath(fetched.path))
    if re.fullmatch(r'[0-9a-f]{64}', blob) and fetched.sha256 != blob:
        raise unavailable(f'the downloaded file {osp.realpath(fetched.path)} has sha256 '
                          f'{fetched.sha256}, not the {blob} the hub announced (a corrupted '
                          'download: delete it and retry)')


def source_hint(name: str) -> Optional[str]:
    """The layout a name suggests: timm's hub, mmpretrain's downloads, the projects' own pages."""
    if name.startswith(TIMM_SCHEME):
        return 'timm'
    host = urllib.parse.urlsplit(name).hostname or '' if name.startswith(URL_SCHEMES) else ''
    if host == 'download.openmmlab.com':
        return 'mmpretrain'
    if host in ('github.com', 'drive.google.com'):
        return 'official'
    return None


def _fetch_url(url: str, path: str) -> FetchedFile:
    fetched = FetchedFile(url, path, osp.join(osp.dirname(path), CONVERTED_DIR))
    expected = hash_prefix_of(path)
    if osp.isfile(path):
        if expected and not fetched.sha256.startswith(expected):
            raise WeightsUnavailableError(
                url, f'the file {path} has sha256 {fetched.sha256}, which does not start with '
                f'the {expected} its name promises (a different or damaged file: replace it)',
                path, url)
        return fetched
    try:
        download(download_url(url), path, expected)
    except DownloadError as error:
        raise WeightsUnavailableError(url, str(error), path, url) from None
    fetched._sha256 = None
    return fetched


class DownloadError(OSError):
    """A download that did not give the complete, checked file (nothing was kept)."""


def download(url: str, dst: str, hash_prefix: Optional[str] = None,
             timeout: float = DOWNLOAD_TIMEOUT) -> str:
    """Download ``url`` to ``dst`` through a temporary file in the same directory.

    The file is renamed to ``dst`` only when all bytes the server announced
    arrived and, with ``hash_prefix``, its sha256 starts with it; otherwise
    the temporary file is removed and :class:`DownloadError` says why.
    """
    os.makedirs(osp.dirname(dst), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=osp.dirname(dst), prefix=f'.{osp.basename(dst)}.',
                               suffix='.part')
    digest, received, start = hashlib.sha256(), 0, time.time()
    print_log(f'downloading {url} to {dst}', logger='current')
    try:
        with os.fdopen(fd, 'wb') as out:
            try:
                request = urllib.request.Request(url, headers={'User-Agent': 'mmrep'})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    length = response.headers.get('Content-Length')
                    expected_size = int(length) if length and length.isdigit() else None
                    content_type = response.headers.get('Content-Type') or ''
                    for block in iter(lambda: response.read(1 << 20), b''):
                        if received == 0 and _looks_like_html(block, content_type):
                            raise DownloadError(
                                'the server sent a web page, not a checkpoint (a login or '
                                'confirmation page: Google Drive shows one for large files). '
                                'Open the address in a browser and save the file itself')
                        out.write(block)
                        digest.update(block)
                        received += len(block)
            except DownloadError:
                raise
            except urllib.error.HTTPError as error:
                raise DownloadError(f'the server answered {error.code} {error.reason}') from None
            except urllib.error.URLError as error:
                raise DownloadError(f'the server is not reachable ({error.reason})') from None
            except (OSError, ValueError) as error:  # timeouts, resets, IncompleteRead
                raise DownloadError(f'the download was interrupted after {received} bytes '
                                    f'({type(error).__name__}: {error})') from None
        if expected_size is not None and received != expected_size:
            raise DownloadError(f'the download was interrupted: {received} of the '
                                f'{expected_size} bytes the server announced arrived')
        sha = digest.hexdigest()
        if hash_prefix and not sha.startswith(hash_prefix):
            raise DownloadError(f'the downloaded file\'s sha256 is {sha}, which does not start '
                                f'with the {hash_prefix} its name promises (a different or '
                                'damaged file); nothing was kept')
        os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    _SHA_MEMO[_memo_key(dst)] = sha
    print_log(f'downloaded {received / 1e6:.1f} MB in {time.time() - start:.1f} s', logger='current')
    return dst


def _looks_like_html(head: bytes, content_type: str) -> bool:
    return content_type.split(';')[0].strip() == 'text/html' or \
        head.lstrip()[:15].lower().startswith((b'<!doctype html', b'<html'))


def _memo_key(path: str) -> Tuple[str, int, int]:
    real = osp.realpath(path)
    stat = os.stat(real)
    return real, stat.st_size, stat.st_mtime_ns


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
