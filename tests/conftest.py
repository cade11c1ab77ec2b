"""Shared fixtures: the real MovieLens zip, a loopback zip server, a real MLflow tracking server."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import struct
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import REPO_ROOT, VENV_BIN, free_port, stop_process, venv_env, wait_http  # noqa: E402

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SHARED_ZIP = Path(__file__).resolve().parents[2] / "shared/data/ml-latest-small.zip"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    """With workers (``-n 2``), the controller finds the data before it starts them (workers
    collect on their own, so it cannot tell which tests need it): a missing copy then stops
    the session with one message, and the workers are handed the path."""
    config = session.config
    if not hasattr(config, "workerinput") and (getattr(config.option, "numprocesses", None) or 0):
        os.environ["MFREC_TEST_ZIP"] = str(_data_zip())


def pytest_collection_modifyitems(session, config, items):
    """Find the data before the first test when any collected test needs it: without it the
    session stops there, before any "passed" line could read like success."""
    if any("shared_zip" in getattr(item, "fixturenames", ()) for item in items):
        _data_zip()


@pytest.fixture(scope="session")
def shared_zip() -> Path:
    """The real ml-latest-small zip (:func:`_data_zip`)."""
    return _data_zip()


_FOUND: list[Path] = []


def _data_zip() -> Path:
    """The real ml-latest-small zip: ``$MFREC_TEST_ZIP``, else a copy beside the repository
    (``../shared/data``), else the project's own verified download (GroupLens, or
    ``$MFREC_BASE_URL``, cached in ``$MFREC_CACHE_DIR``). Without any of them the session
    stops with one message instead of failing every test that needs the data."""
    if not _FOUND:
        _FOUND.append(_find_data_zip())
    return _FOUND[0]


def _find_data_zip() -> Path:
    if os.environ.get("MFREC_TEST_ZIP"):
        path = Path(os.environ["MFREC_TEST_ZIP"])
        if not path.is_file():
            pytest.exit(f"MFREC_TEST_ZIP={path} is not a file", returncode=4)
        return path
    if SHARED_ZIP.is_file():
        return SHARED_ZIP
    from mfrec.data.download import fetch
    from mfrec.errors import DataError

    try:
        return fetch("ml-latest-small", progress=False)
    except DataError as exc:
        reason = str(exc).split(". If you are offline")[0]
        pytest.exit(f"the tests need MovieLens ml-latest-small: set MFREC_TEST_ZIP to a copy of "
                    f"ml-latest-small.zip, put one at {SHARED_ZIP}, or set MFREC_BASE_URL to a mirror that serves "
                    f"it (the download failed: {reason})", returncode=4)


def corrupt_member(data: bytes, member: str) -> bytes:
    """Same bytes with a few flipped inside ``member``'s compressed data (length unchanged)."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(member)
    header = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[header + 26:header + 30])
    start = header + 30 + name_len + extra_len
    buf = bytearray(data)
    for offset in (info.compress_size // 2, info.compress_size // 2 + 7, info.compress_size // 3):
        buf[start + offset] ^= 0xFF
    return bytes(buf)


def tamper_ratings(data: bytes) -> bytes:
    """A valid zip whose ratings.csv differs by one rating (CRCs fine, contents not)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename.endswith("ratings.csv"):
                body = body.replace(b"1,1,4.0,964982703", b"1,1,3.0,964982703", 1)
            dst.writestr(info, body)
    return out.getvalue()


@dataclass
class ZipServer:
    """Loopback HTTP server; ``base(kind)`` is a base URL whose zips behave as ``kind`` says."""

    url: str
    hits: list[str] = field(default_factory=list)

    def base(self, kind: str) -> str:
        return f"{self.url}/{kind}"

    def count(self, path: str) -> int:
        return sum(1 for h in self.hits if h == path)


@pytest.fixture(scope="session")
def zip_server(shared_zip):
    """Serves ``/good/``, ``/corrupt/``, ``/tampered/``, ``/truncated/``, ``/missing/`` (404).

    Also ``/sidecar/ml-32m.zip`` (+ a correct ``.md5``), ``/badsidecar/ml-32m.zip`` (+ a wrong
    ``.md5``) and ``/good/ml-100k.zip`` (bytes that do not match ml-100k's published md5).
    """
    real = shared_zip.read_bytes()
    md5 = hashlib.md5(real).hexdigest()
    files = {
        "/good/ml-latest-small.zip": real,
        "/corrupt/ml-latest-small.zip": corrupt_member(real, "ml-latest-small/ratings.csv"),
        "/tampered/ml-latest-small.zip": tamper_ratings(real),
        "/truncated/ml-latest-small.zip": real,
        "/sidecar/ml-32m.zip": real,
        "/sidecar/ml-32m.zip.md5": f"MD5 (ml-32m.zip) = {md5}\n".encode(),
        "/badsidecar/ml-32m.zip": real,
        "/badsidecar/ml-32m.zip.md5": f"{'0' * 32}  ml-32m.zip\n".encode(),
        "/good/ml-100k.zip": real,
    }
    server_state = ZipServer(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            server_state.hits.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path.startswith("/truncated/"):
                # Promise the whole file, send half, hang up.
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args):  # keep test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server_state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory):
    """A real ``mlflow server`` (sqlite store, proxied artifacts) on a free loopback port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [
        str(VENV_BIN / "mlflow"), "server", "--workers", "1", "--host", "127.0.0.1",
        "--port", str(port), "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            env=venv_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    uri = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{uri}/health", timeout=60, proc=proc)
        except RuntimeError as exc:
            log.flush()
            tail = (root / "server.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"mlflow server did not start: {exc}\n{tail}")
        yield uri
    finally:
        stop_process(proc, timeout=15)
        log.close()


@pytest.fixture(scope="session")
def prepared_small(shared_zip, tmp_path_factory):
    """The real ml-latest-small, prepared with the default seeded random 72/8/20 split."""
    from mfrec.data.prepare import PrepareConfig, load_prepared, prepare

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare(PrepareConfig(data_path=str(shared_zip)), out, progress=False)
    return load_prepared(out)


@pytest.fixture(scope="session")
def small_split(prepared_small):
    p = prepared_small
    return p.train, p.val, p.test, p.movies


@pytest.fixture(scope="session")
def trained_small(small_split):
    """The default model trained once per session (validation epoch choice, refit on 80%)."""
    from mfrec.training.config import TrainConfig
    from mfrec.workflow import train_and_evaluate

    train, val, test, movies = small_split
    return train_and_evaluate(train, val, test, movies, TrainConfig(progress=False))


@pytest.fixture(scope="session")
def served_recommender(trained_small, small_split):
    """The model the pipeline serves for ``trained_small``: the same recipe fit on every
    prepared rating (train + validation + test)."""
    from mfrec.workflow import served_model

    rec, _ = served_model(trained_small, *small_split)
    return rec


@pytest.fixture(scope="session")
def served_model(served_recommender, trained_small, tmp_path_factory):
    """``served_recommender`` logged, registered as ``models:/mfrec@champion`` in a sqlite store
    and served by a real ``mlflow models serve --env-manager local`` on a free loopback port.

    Yields a :class:`benchmarks.served.ServedModel` (``.url``, ``.invocations``, ``.proc``).
    """
    from benchmarks.served import register_recommender, start_model_server, stop_model_server

    root = tmp_path_factory.mktemp("served-model")
    uri = register_recommender(served_recommender, root, test_rmse=trained_small.metrics["test_rmse"])
    try:
        served = start_model_server(root, uri)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield served
    finally:
        stop_model_server(served)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """How many fuzz requests ran, by HTTP status (tests/test_fuzz_serving.py records each
    test's in its report; output written during tests is captured, this is not)."""
    tried, examples = {}, None
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "teardown":
                continue
            for key, value in getattr(report, "user_properties", ()):
                if key == "fuzz_requests":
                    for status, count in value.items():
                        tried[int(status)] = tried.get(int(status), 0) + count
                elif key == "fuzz_examples":
                    examples = value
    if tried:
        terminalreporter.section("mfrec summary")
        terminalreporter.write_line(f"fuzz_serving: {sum(tried.values())} HTTP requests tried "
                                    f"({dict(sorted(tried.items()))}), MFREC_FUZZ_EXAMPLES={examples} per property")
