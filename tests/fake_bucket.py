"""A gs:// bucket on local disk, with no network: for the tests of gs:// data paths (and
benchmarks/bucket_read.py).

Two clients reach a bucket, and both are pointed at one local directory (and the check that
a gs:// client is installed, `paths.gcs_client_installed`, passes):
- Python code (etils.epath) through epath's mock backend, which maps `gs://bucket/...` to the
  directory for every file operation;
- ArrayRecord's C++ reader, which talks to Cloud Storage's JSON API itself, through a small
  HTTP server in a thread that serves the directory's files as that API serves objects (with
  byte ranges). google-cloud-cpp sends its requests to the address in
  CLOUD_STORAGE_EMULATOR_ENDPOINT, read whenever a reader opens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob as glob_lib
import http.server
import os
import re
import threading
import time
import urllib.parse
from unittest import mock

from cpt_jax import paths

BUCKET = "gs://bucket"
_PIECE = 64 << 10  # Bytes the server sends at a time.


@dataclasses.dataclass
class FakeBucket:
  prefix: str  # "gs://bucket": paths under it are files under `root`.
  root: str
  objects_read: list[str]  # The object names the C++ reader asked the server for, in order.


def _object_server(root: str, objects_read: list[str],
                   latency_s: float) -> http.server.ThreadingHTTPServer:
  class ObjectReads(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # The client keeps connections open between ranges.

    def log_message(self, *args):
      pass

    def do_GET(self):  # GET /storage/v1/b/<bucket>/o/<name>?alt=media, Range: bytes=...
      match = re.fullmatch(r"/storage/v1/b/bucket/o/(.+)", urllib.parse.urlparse(self.path).path)
      name = urllib.parse.unquote(match.group(1)) if match else ""
      path = os.path.join(root, name)
      if not name or not os.path.isfile(path):
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return
      objects_read.append(name)
      time.sleep(latency_s)
      size = os.path.getsize(path)
      start, stop = 0, size
      ranged = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
      if ranged:
        first, last = ranged.groups()
        if not first:  # The last N bytes.
          start = max(0, size - int(last))
        else:
          start, stop = int(first), min(size, int(last) + 1) if last else size
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
      else:
        self.send_response(200)
      self.send_header("Content-Length", str(stop - start))
      self.send_header("x-goog-generation", "1")
      self.end_headers()
      with open(path, "rb") as f:  # In pieces, as a bucket streams: a reader hangs up once it
        f.seek(start)               # has what it wanted from an open-ended range.
        while start < stop:
          piece = f.read(min(_PIECE, stop - start))
          try:
            self.wfile.write(piece)
          except ConnectionError:
            return
          start += len(piece)

  class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # Parallel reads open many connections at once (default: 5).

    def handle_error(self, request, client_address):
      pass  # Connections the reader resets.

  return QuietServer(("127.0.0.1", 0), ObjectReads)


def _epath_mock(root: str):
  from etils import epath

  def local(path):
    path = os.fspath(path)
    return root + path[len(BUCKET):] if path.startswith(BUCKET) else path

  def remote(path):
    return BUCKET + path[len(root):] if path.startswith(root) else path

  def on_local(original, path, *args, **kwargs):
    return original(local(path), *(local(arg) for arg in args), **kwargs)

  def glob(_, pattern):
    return [remote(path) for path in glob_lib.glob(local(pattern), recursive=True)]

  def walk(original, top, **kwargs):
    for directory, directories, files in original(local(top), **kwargs):
      yield remote(os.fspath(directory)), directories, files

  return epath.testing.mock_epath(
      open=on_local, exists=on_local, isdir=on_local, listdir=on_local, makedirs=on_local,
      mkdir=on_local, remove=on_local, rename=on_local, replace=on_local, rmtree=on_local,
      copy=on_local, stat=on_local, glob=glob, walk=walk)


@contextlib.contextmanager
def serve(root, latency_s: float = 0.0) -> FakeBucket:
  """gs://bucket served from the directory `root` (created) while the context lasts; each
  object read waits `latency_s` first, as a real bucket's first byte does."""
  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  bucket = FakeBucket(BUCKET, root, [])
  server = _object_server(root, bucket.objects_read, latency_s)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  endpoint = os.environ.get("CLOUD_STORAGE_EMULATOR_ENDPOINT")
  os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = f"http://127.0.0.1:{server.server_port}"
  try:
    with _epath_mock(root), mock.patch.object(paths, "gcs_client_installed", lambda: True):
      yield bucket
  finally:
    server.shutdown()
    server.server_close()
    if endpoint is None:
      del os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"]
    else:
      os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = endpoint
