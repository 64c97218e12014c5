"""Stand-ins on 127.0.0.1 for the places pretrained weights come from; no test reaches the internet.

:class:`HubStandIn` answers the Hugging Face hub's file endpoint,
``GET/HEAD /{repo_id}/resolve/{revision}/{filename}``, with the headers
``huggingface_hub`` reads (``ETag`` = the file's sha256 as the hub gives
for LFS files, ``X-Repo-Commit``, ``Content-Length``), and 404 with the
hub's ``X-Error-Code`` for anything else. :class:`FileServer` is a plain
HTTP server for URL checkpoints (mmpretrain, official releases). Both log
every request and can cut a file short (an interrupted download): they
announce the full length, send half and close the connection.
"""
from __future__ import annotations

import hashlib
import http.server
import re
import threading
from typing import Dict, List, Set, Tuple


class _Server:
    def __init__(self):
        self.requests: List[Tuple[str, str]] = []
        self.truncate: Set[str] = set()  # paths sent half, then the connection closes
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):  # noqa: N802
                outer._answer(self, body=False)

            def do_GET(self):  # noqa: N802
                outer._answer(self, body=True)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.httpd.server_port}'

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def find(self, path: str):
        """``(data, headers)`` for ``path`` or ``(None, headers)`` for a 404."""
        raise NotImplementedError

    def _answer(self, handler, body: bool) -> None:
        self.requests.append((handler.command, handler.path))
        data, headers = self.find(handler.path)
        if data is None:
            handler.send_response(404)
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.send_header('Content-Length', '0')
            handler.end_headers()
            return
        # Range requests as the hub answers them (huggingface_hub resumes a broken download)
        match = re.fullmatch(r'bytes=(\d+)-', handler.headers.get('Range', ''))
        start = int(match.group(1)) if match else 0
        handler.send_response(206 if match else 200)
        if match:
            handler.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        data = data[start:]
        handler.send_header('Content-Length', str(len(data)))
        handler.send_header('Content-Type', 'application/octet-stream')
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        if not body:
            return
        if handler.path in self.truncate:
            handler.wfile.write(data[:len(data) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)  # the rest never comes
            return
        handler.wfile.write(data)


class HubStandIn(_Server):
    """The hub's ``/{repo_id}/resolve/{revision}/{filename}``; ``files[(repo_id, filename)] = bytes``."""

    COMMIT = '0123456789abcdef0123456789abcdef01234567'

    def __init__(self):
        self.files: Dict[Tuple[str, str], bytes] = {}
        super().__init__()

    def add(self, repo_id: str, filename: str, data: bytes) -> str:
        self.files[(repo_id, filename)] = data
        return f'/{repo_id}/resolve/main/{filename}'

    def find(self, path: str):
        match = re.fullmatch(r'/([^/]+/[^/]+)/resolve/([^/]+)/(.+)', path)
        if not match:
            return None, {'X-Error-Code': 'RepoNotFound'}
        repo_id, _, filename = match.groups()
        if not any(repo == repo_id for repo, _ in self.files):
            return None, {'X-Error-Code': 'RepoNotFound'}
        data = self.files.get((repo_id, filename))
        if data is None:
            return None, {'X-Error-Code': 'EntryNotFound'}
        return data, {'ETag': f'"{hashlib.sha256(data).hexdigest()}"',
                      'X-Repo-Commit': self.COMMIT}


class FileServer(_Server):
    """A plain HTTP file server; ``files['/path/name.pth'] = bytes``."""

    def __init__(self):
        self.files: Dict[str, bytes] = {}
        super().__init__()

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url + path

    def find(self, path: str):
        return self.files.get(path), {}
