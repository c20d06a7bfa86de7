"""Cache throughput on loopback: save + restore one large entry through the real v2 protocol, against nginx.

    uv run python bench/cache.py [--size 1G] [--storage filesystem]

Starts a private Valkey and `smith cache serve` (a separate process, so its peak RSS can be read from
/proc/<pid>/status VmHWM), then:

- save: CreateCacheEntry, then the entry's bytes as the @actions/cache v2 client sends them to the signed URL
  (64 MiB blocks, 8 in parallel, then the block list), then FinalizeCacheEntryUpload;
- restore: GetCacheEntryDownloadURL, then GETs of the signed URL with curl to /dev/null (best of 3);
- the same file from nginx (Debian's, sendfile on, one worker; `python -m http.server` if nginx is missing),
  fetched with the same curl in the same run.

With ``--client v3`` / ``--client v6`` (repeatable) it also saves and restores a file of the same size with the
real ``@actions/cache`` client from ``tests/cache/npm/<v>`` (``bench/cache_client.mjs``; tar + zstd included, as a
job sees it).

Prints MB/s both ways, restore as a fraction of nginx, and the server's peak RSS before and after.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx

from smith import tokens
from smith.adapters.redis.embedded import EmbeddedRedis, free_port

BLOCK = 64 * 1024 * 1024
CONCURRENCY = 8
SECRET = "bench-secret-0123456789abcdef0123456789"
VERSION = "b" * 64
MB = 1_000_000


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def make_file(path: Path, size: int) -> None:
    chunk = os.urandom(8 * 1024 * 1024)  # incompressible, like a zstd archive; reused to save CPU
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n


def peak_rss_mib(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def file_range(path: Path, start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        left = length
        while left:
            chunk = f.read(min(1024 * 1024, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def curl_download(url: str, runs: int = 3) -> float:
    """Best of ``runs`` timings of curl fetching ``url`` to /dev/null (the machine is shared and noisy)."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(["curl", "-sSf", "-o", "/dev/null", "--connect-to", "::127.0.0.1:", url], check=True)
        best = min(best, time.perf_counter() - start)
    return best


def start_static(root: Path, work: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx:
        conf = work / "nginx.conf"
        conf.write_text(
            f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
{"user root;" if os.geteuid() == 0 else ""}
events {{ worker_connections 64; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {work}/nginx-body;
  proxy_temp_path {work}/nginx-proxy;
  fastcgi_temp_path {work}/nginx-fcgi;
  uwsgi_temp_path {work}/nginx-uwsgi;
  scgi_temp_path {work}/nginx-scgi;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""
        )
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)])
        name = "nginx"
    else:
        proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        name = "python -m http.server"
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/")
    return proc, url, name


def real_client(version: str, base: str, tok: str, size: int, work: Path, host: str | None) -> tuple[float, float]:
    """(save, restore) seconds of the real npm client from tests/cache/npm/<version> (``npm ci`` there first)."""
    modules = Path(__file__).resolve().parent.parent / "tests" / "cache" / "npm" / version
    if not (modules / "node_modules").is_dir():
        raise SystemExit(f"run: npm ci --prefix {modules}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACTIONS_", "GITHUB_", "RUNNER_"))}
    env |= {"ACTIONS_RUNTIME_TOKEN": tok, "RUNNER_TEMP": str(work), "LOOPBACK_HOST": host or ""}
    if version == "v3":
        env["ACTIONS_CACHE_URL"] = base + "/"
    else:
        env |= {"ACTIONS_RESULTS_URL": base + "/", "ACTIONS_CACHE_SERVICE_V2": "true"}
    script = Path(__file__).resolve().parent / "cache_client.mjs"
    out = subprocess.run(
        ["node", str(script), str(modules), str(size)], env=env, check=True, capture_output=True, text=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if not result["id"] or not result["hit"]:
        raise SystemExit(f"{version} client did not save and restore: {result}")
    return float(result["save_s"]), float(result["restore_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="entry size (e.g. 256M, 1G); default 1G")
    ap.add_argument("--storage", default="filesystem", choices=["filesystem"], help="blob store under test")
    ap.add_argument("--client", action="append", default=[], choices=["v3", "v6"], help="real npm client run")
    ap.add_argument(
        "--download-host",
        help="SMITH_CACHE_DOWNLOAD_HOST for the server (e.g. smith.blob.core.windows.net: parallel client downloads); "
        "the bench's clients resolve it to 127.0.0.1",
    )
    args = ap.parse_args()
    size = parse_size(args.size)
    if not shutil.which("curl"):
        raise SystemExit("curl is needed (apt-get install curl)")

    with tempfile.TemporaryDirectory(prefix="smith-bench-cache-") as tmp:
        work = Path(tmp)
        (work / "static").mkdir()
        blob = work / "static" / "entry.tzst"
        make_file(blob, size)
        redis = EmbeddedRedis(work / "valkey", fsync="everysec")
        redis.start()
        port = free_port()
        env = {
            **os.environ,
            "SMITH_CACHE_SHARED_SECRET": SECRET,
            "SMITH_REDIS_URL": redis.url,
            "SMITH_DATA_DIR": str(work / "data"),
            "SMITH_CACHE_PORT": str(port),
            "SMITH_CACHE_MAX_ENTRY_BYTES": str(max(size, 1) * 2),
            "SMITH_CACHE_ORG_QUOTA_BYTES": str(max(size, 1) * 4),
            "SMITH_LOG_LEVEL": "WARNING",
        }
        if args.download_host:
            env["SMITH_CACHE_DOWNLOAD_HOST"] = args.download_host
        server = subprocess.Popen([sys.executable, "-m", "smith", "cache", "serve"], env=env)
        static = None
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/healthz")
            rss_idle, _ = peak_rss_mib(server.pid)
            tok = tokens.mint(SECRET, scope="cache", subject="bench", ttl_seconds=3600, org="bench", repo="r")
            twirp = f"{base}/twirp/github.actions.results.api.v1.CacheService"
            with httpx.Client(headers={"Authorization": f"Bearer {tok}"}, timeout=600) as c:
                # -- save ------------------------------------------------------------------------------
                t0 = time.perf_counter()
                created = c.post(f"{twirp}/CreateCacheEntry", json={"key": "bench", "version": VERSION}).json()
                url = created["signed_upload_url"]
                starts = list(range(0, size, BLOCK))
                ids = [base64.b64encode(f"{i:08d}".encode()).decode() for i in range(len(starts))]

                def put(i: int) -> None:
                    n = min(BLOCK, size - starts[i])
                    r = httpx.put(
                        f"{url}&comp=block&blockid={quote(ids[i])}",
                        content=file_range(blob, starts[i], n),
                        headers={"Content-Length": str(n)},
                        timeout=600,
                    )
                    r.raise_for_status()

                with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
                    list(pool.map(put, range(len(starts))))
                xml = "<BlockList>" + "".join(f"<Latest>{i}</Latest>" for i in ids) + "</BlockList>"
                httpx.put(f"{url}&comp=blocklist", content=xml, timeout=600).raise_for_status()
                fin = c.post(
                    f"{twirp}/FinalizeCacheEntryUpload",
                    json={"key": "bench", "version": VERSION, "size_bytes": str(size)},
                ).json()
                save_s = time.perf_counter() - t0
                assert fin["ok"], fin
                # -- restore ---------------------------------------------------------------------------
                t0 = time.perf_counter()
                got = c.post(f"{twirp}/GetCacheEntryDownloadURL", json={"key": "bench", "version": VERSION}).json()
                lookup_s = time.perf_counter() - t0
                restore_s = lookup_s + curl_download(got["signed_download_url"])
            clients = {v: real_client(v, base, tok, size, work, args.download_host) for v in args.client}
            static, static_url, static_name = start_static(work / "static", work)
            static_s = curl_download(f"{static_url}/entry.tzst")
            rss_now, rss_peak = peak_rss_mib(server.pid)
        finally:
            for proc in (server, static):
                if proc and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            redis.stop()

    mbps = lambda seconds: size / MB / seconds  # noqa: E731
    print(f"entry size           {size / 1024**2:,.0f} MiB  ({args.storage} store, loopback, curl for downloads)")
    print(f"save  (v2 blocks)    {mbps(save_s):8.0f} MB/s  ({save_s:.2f} s, {CONCURRENCY} x 64 MiB blocks in flight)")
    print(f"restore (smith)      {mbps(restore_s):8.0f} MB/s  ({restore_s:.2f} s)")
    print(f"same file ({static_name:<6}) {mbps(static_s):8.0f} MB/s  ({static_s:.2f} s)")
    print(f"restore / static     {static_s / restore_s:8.0%}")
    for v, (save_c, restore_c) in clients.items():
        save_mb, restore_mb = mbps(save_c), mbps(restore_c)
        print(f"@actions/cache {v}    save {save_mb:5.0f} MB/s ({save_c:.2f} s), restore {restore_mb:5.0f} MB/s")
    print(f"server RSS           idle {rss_idle:.0f} MiB, after {rss_now:.0f} MiB, peak {rss_peak:.0f} MiB")


if __name__ == "__main__":
    main()
