"""Helpers for rootfs tests: a small base made here, a rootfs.yaml, an HTTP server that honours Range."""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tar_base(path: Path, files: dict[str, bytes]) -> Path:
    """A tar.gz of a tiny root tree holding ``files`` (plus /etc, /tmp, /work)."""
    with tarfile.open(path, "w:gz") as tar:
        for name in ("etc", "tmp", "work"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            import io

            tar.addfile(info, io.BytesIO(data))
    return path


def ext4_base(path: Path, tree: Path, mib: int = 16) -> Path:
    with path.open("wb") as f:
        f.truncate(mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(path)], check=True)
    return path


def write_config(path: Path, output_dir: Path, versions: list[dict[str, Any]], default: str | None = None) -> Path:
    doc: dict[str, Any] = {"rootfs": {"output_dir": str(output_dir)}, "versions": versions}
    if default:
        doc["default_version"] = default
    path.write_text(yaml.safe_dump(doc))
    return path


def build_tree(tmp_path: Path, tree: Path, name: str = "ci") -> tuple[Path, Path]:
    """``tree`` made into an ext4 base and built as version ``name`` with `smith rootfs build`: (config, output)."""
    from typer.testing import CliRunner

    from smith.cli import app

    image = ext4_base(tmp_path / "base.ext4", tree, 64)
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path / "rootfs.yaml", out, [{"name": name, "base_path": str(image), "sha256": sha256(image)}]
    )
    result = CliRunner().invoke(app, ["rootfs", "build", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    return cfg, out


def debugfs_cat(image: Path, path: str) -> bytes:
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, check=True)
    return done.stdout


class RangeServer:
    """Serves one file with Range support; the first ``cut_first`` GETs stop after ``cut_at`` bytes."""

    def __init__(self, data: bytes, cut_at: int | None = None, cut_first: int = 1) -> None:
        self.data = data
        self.cut_at = cut_at
        self.cut_left = cut_first if cut_at is not None else 0
        self.requests: list[dict[str, str]] = []
        self.sent = 0

    @contextmanager
    def serve(self) -> Iterator[str]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append(dict(self.headers))
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(outer.data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.data) - 1}/{len(outer.data)}")
                else:
                    self.send_response(200)
                body = outer.data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut_left > 0:
                    outer.cut_left -= 1
                    body = body[: outer.cut_at]
                self.wfile.write(body)
                outer.sent += len(body)
                self.wfile.flush()
                self.close_connection = True

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/base.ext4"
        finally:
            server.shutdown()
            server.server_close()
