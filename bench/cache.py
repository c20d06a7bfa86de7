"""Cache throughput on loopback: Smith, the peer and nginx in one run, through the same real clients.

    uv run python bench/cache.py [--size 256M] [--client v3|v6 ...] [--repeat N]
                                 [--peer-dir PATH | --peer-cmd "COMMAND"] [--json]

Starts a private Valkey and `smith cache serve` (a separate process, so its peak RSS can be read from
/proc/<pid>/status VmHWM), then:

- the v2 protocol driven directly, once per server (Smith and the peer): CreateCacheEntry, the entry's bytes as
  the @actions/cache v2 client sends them (64 MiB blocks, 8 in parallel, then the block list),
  FinalizeCacheEntryUpload; then GetCacheEntryDownloadURL and a curl of the signed URL to /dev/null (best of 3);
- with v6, each repetition first times the client's own transfer functions alone (``bench/cache_transfer.mjs``:
  its download of that entry from each server and of the same file from nginx (one stream; the Azure SDK's
  parallel ranges for a ``--download-host`` on ``*.blob.core.windows.net``), its upload of the file
  into a new entry on each server; no tar, no lookup), and its upload into ``bench/cache_sink.mjs`` (takes the
  blocks, keeps nothing): the nginx download and the sink upload are the client's ceiling, what no server can beat
  through that client; "best smith/peer" puts them in place of Smith's transfer in its whole save and restore;
- with ``--client v3`` / ``--client v6`` (repeatable; v6 by default when a peer is given), the real
  ``@actions/cache`` client from ``tests/cache/npm/<v>`` saves and restores a file of the entry's size
  (``bench/cache_client.mjs``; tar + zstd included, as a job sees it), ``--repeat`` times;
- the peer (falcondev's github-actions-cache-server, built from source; not on npm): ``--peer-dir`` is its built
  checkout (``node --expose-gc DIR/.output/server/index.mjs``), or ``--peer-cmd`` any shell command starting it.
  It gets a free port, a filesystem store and SQLite under the run's directory, and SKIP_TOKEN_VALIDATION (its
  tokens are GitHub's OIDC JWTs). The same clients run against it, alternating with Smith (v2 only: the peer
  has no v1 API, so v3 runs against Smith alone);
- nginx (Debian's, sendfile on, one worker; ``python -m http.server`` if nginx is missing) serving the same file,
  fetched with curl once per repetition: the raw reference.

Prints MB/s (median and range), the CPU seconds each server used per client run (what a loaded machine stretches
less than wall time), each server's RSS (idle, after, peak; summed over its processes), and
Smith / peer for save and restore per client against the issue's goals (restore >= 3x, save >= 1.5x).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

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


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait for ``url`` to answer; give up early when ``proc``, the server behind it, has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server for {url} exited with status {proc.returncode}")
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


@dataclasses.dataclass
class Server:
    """A cache server under test: its process (group leader), base URL and a runtime token it accepts."""

    name: str
    proc: subprocess.Popen[bytes]
    base: str
    token: str
    download_host: str | None = None


def tree(pid: int) -> set[int]:
    """``pid`` and its descendants (the peer runs a cluster primary and a worker)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    members, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in members]
        members.update(children)
        frontier.extend(children)
    return members


def tree_rss_mib(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) in MiB summed over ``pid`` and its descendants."""
    rss = peak = 0.0
    for member in tree(pid):
        try:
            now, hwm = peak_rss_mib(member)
        except (OSError, KeyError):
            continue  # exited meanwhile, or a zombie
        rss, peak = rss + now, peak + hwm
    return rss, peak


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, with reaped children) used so far by ``pid`` and its descendants: the
    server's own work, which a loaded machine stretches less than wall time."""
    total = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def start_smith(work: Path, size: int, download_host: str | None, stack: contextlib.ExitStack) -> Server:
    redis = EmbeddedRedis(work / "valkey", fsync="everysec")
    redis.start()
    stack.callback(redis.stop)
    port = free_port()
    env = {
        **os.environ,
        "SMITH_CACHE_SHARED_SECRET": SECRET,
        "SMITH_REDIS_URL": redis.url,
        "SMITH_DATA_DIR": str(work / "data"),
        "SMITH_CACHE_PORT": str(port),
        "SMITH_CACHE_MAX_ENTRY_BYTES": str(max(size, 1) * 2),
        "SMITH_CACHE_ORG_QUOTA_BYTES": str(max(size, 1) * 64),  # every repetition's entries stay
        "SMITH_LOG_LEVEL": "WARNING",
    }
    if download_host:
        env["SMITH_CACHE_DOWNLOAD_HOST"] = download_host
    proc = subprocess.Popen([sys.executable, "-m", "smith", "cache", "serve"], env=env, start_new_session=True)
    stack.callback(stop, proc)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz", proc=proc)
    tok = tokens.mint(SECRET, scope="cache", subject="bench", ttl_seconds=3600, org="bench", repo="r")
    return Server("smith", proc, base, tok, download_host)


def peer_token() -> str:
    """A runner token as the peer reads it with SKIP_TOKEN_VALIDATION (claims decoded, signature not checked)."""
    claims = {"ac": json.dumps([{"Scope": "refs/heads/main", "Permission": 3}]), "repository_id": "1"}
    parts = [{"alg": "HS256", "typ": "JWT"}, claims]
    encoded = [base64.urlsafe_b64encode(json.dumps(p).encode()).decode().rstrip("=") for p in parts]
    return ".".join([*encoded, "unsigned"])


def start_peer(command: str, work: Path, stack: contextlib.ExitStack) -> Server:
    """Start the peer (falcondev's github-actions-cache-server build) with a filesystem store on a free port.

    ``command`` runs in a shell with the peer's settings in the environment; ``{port}`` in it is replaced too.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    home = work / "peer"
    home.mkdir()
    env = {
        **os.environ,
        "PORT": str(port),
        "NITRO_HOST": "127.0.0.1",
        "NITRO_CLUSTER_WORKERS": "1",  # as the peer's Dockerfile sets it
        "API_BASE_URL": base,
        "STORAGE_DRIVER": "filesystem",
        "STORAGE_FILESYSTEM_PATH": str(home / "storage"),
        "DB_DRIVER": "sqlite",
        "DB_SQLITE_PATH": str(home / "db.sqlite"),
        "SKIP_TOKEN_VALIDATION": "true",  # its tokens are GitHub's OIDC JWTs; the bench has none
        "DISABLE_CLEANUP_JOBS": "true",
    }
    log = open(work / "peer.log", "wb")  # noqa: SIM115 - closed by the stack
    stack.callback(log.close)
    proc = subprocess.Popen(  # noqa: S602 - a shell command line given by the person running the bench
        command.replace("{port}", str(port)),
        shell=True,
        env=env,
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack.callback(stop, proc)
    try:
        wait_http(base + "/health", timeout=60, proc=proc)
    except SystemExit:
        raise SystemExit(f"the peer did not come up; its output: {(work / 'peer.log').read_text()[-2000:]}") from None
    return Server("peer", proc, base, peer_token())


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a process this bench started in its own session, with everything it started."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def real_client(version: str, server: Server, size: int, work: Path) -> tuple[float, float]:
    """(save, restore) seconds of the real npm client from tests/cache/npm/<version> (``npm ci`` there first)."""
    modules = Path(__file__).resolve().parent.parent / "tests" / "cache" / "npm" / version
    if not (modules / "node_modules").is_dir():
        raise SystemExit(f"run: npm ci --prefix {modules}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACTIONS_", "GITHUB_", "RUNNER_"))}
    env |= {
        "ACTIONS_RUNTIME_TOKEN": server.token,
        "RUNNER_TEMP": str(work),
        "LOOPBACK_HOST": server.download_host or "",
    }
    if version == "v3":
        env["ACTIONS_CACHE_URL"] = server.base + "/"
    else:
        env |= {"ACTIONS_RESULTS_URL": server.base + "/", "ACTIONS_CACHE_SERVICE_V2": "true"}
    script = Path(__file__).resolve().parent / "cache_client.mjs"
    done = subprocess.run(["node", str(script), str(modules), str(size)], env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if done.returncode == 0 and lines else {}
    if not result.get("id") or not result.get("hit"):
        tail = (done.stdout + done.stderr)[-1500:]
        raise SystemExit(f"{version} client did not save and restore on {server.name}: {result}\n{tail}")
    return float(result["save_s"]), float(result["restore_s"])


TWIRP = "/twirp/github.actions.results.api.v1.CacheService"


def twirp_call(server: Server, method: str, body: dict[str, str]) -> dict[str, Any]:
    r = httpx.post(
        f"{server.base}{TWIRP}/{method}", json=body, headers={"Authorization": f"Bearer {server.token}"}, timeout=60
    )
    r.raise_for_status()
    return dict(r.json())


def protocol_run(server: Server, blob: Path, size: int) -> tuple[float, float, str]:
    """(save, restore) seconds of the v2 protocol driven directly (blocks as the client sends them, curl restore),
    and the entry's signed download URL."""
    t0 = time.perf_counter()
    url = twirp_call(server, "CreateCacheEntry", {"key": "bench", "version": VERSION})["signed_upload_url"]
    url += "&" if "?" in url else "?"  # the peer's signed URLs have no query
    starts = list(range(0, size, BLOCK))
    prefix = str(uuid.uuid4())  # block ids as the Azure SDK makes them (the peer reads the index from them)
    ids = [base64.b64encode(f"{prefix}{i:012d}".encode()).decode() for i in range(len(starts))]

    def put(i: int) -> None:
        n = min(BLOCK, size - starts[i])
        r = httpx.put(
            f"{url}comp=block&blockid={quote(ids[i])}",
            content=file_range(blob, starts[i], n),
            headers={"Content-Length": str(n)},
            timeout=600,
        )
        r.raise_for_status()

    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(put, range(len(starts))))
    xml = "<BlockList>" + "".join(f"<Latest>{i}</Latest>" for i in ids) + "</BlockList>"
    httpx.put(f"{url}comp=blocklist", content=xml, timeout=600).raise_for_status()
    fin = twirp_call(server, "FinalizeCacheEntryUpload", {"key": "bench", "version": VERSION, "size_bytes": str(size)})
    save_s = time.perf_counter() - t0
    assert fin["ok"], fin
    t0 = time.perf_counter()
    got = twirp_call(server, "GetCacheEntryDownloadURL", {"key": "bench", "version": VERSION})
    lookup_s = time.perf_counter() - t0
    return save_s, lookup_s + curl_download(got["signed_download_url"]), got["signed_download_url"]


def client_transfer(version: str, way: str, url: str, file: Path) -> float:
    """Seconds of one upload or download through the real client's own function alone (no tar, no lookup):
    ``bench/cache_transfer.mjs``."""
    modules = Path(__file__).resolve().parent.parent / "tests" / "cache" / "npm" / version
    script = Path(__file__).resolve().parent / "cache_transfer.mjs"
    env = {**os.environ, "LOOPBACK_HOST": urlsplit(url).hostname or ""}  # a download host resolves to the server
    argv = ["node", str(script), str(modules), way, url, str(file)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise SystemExit(f"the {version} client's {way} of {url} failed: {(done.stdout + done.stderr)[-1500:]}")
    return float(json.loads(lines[-1])["seconds"])


def upload_alone(version: str, server: Server, blob: Path, key: str) -> float:
    """Seconds of the client's upload function alone into a new entry (reserved and finalized around it)."""
    url = twirp_call(server, "CreateCacheEntry", {"key": key, "version": VERSION})["signed_upload_url"]
    seconds = client_transfer(version, "upload", url, blob)
    size = str(blob.stat().st_size)
    assert twirp_call(server, "FinalizeCacheEntryUpload", {"key": key, "version": VERSION, "size_bytes": size})["ok"]
    return seconds


ALONE = "v6 transfer alone"
GOALS = {"restore": 3.0, "save": 1.5}  # Smith / peer through the same client, issue 14


def ratios(results: dict[str, dict[str, dict[str, list[float]]]]) -> dict[str, dict[str, dict[str, object]]]:
    """Smith / peer of the median MB/s, per client and direction, with the goal and whether it is met."""
    out: dict[str, dict[str, dict[str, object]]] = {}
    for client, peer_runs in results.get("peer", {}).items():
        smith_runs = results["smith"].get(client)
        if not smith_runs:
            continue
        out[client] = {}
        for way, goal in GOALS.items():
            ratio = statistics.median(smith_runs[way]) / statistics.median(peer_runs[way])
            out[client][way] = {"ratio": round(ratio, 2), "goal": goal, "met": ratio >= goal}
    return out


def ceiling_ratios(results: dict[str, dict[str, dict[str, list[float]]]], size: int) -> dict[str, float]:
    """The best Smith / peer a v6 save or restore could show through this client: Smith's whole run with its
    transfer (the client's function alone) swapped for the client's ceiling (its upload into the sink, its
    download from nginx), against the peer's whole run."""
    smith, peer, alone = results["smith"].get("v6"), results["peer"].get("v6"), results["smith"].get(ALONE)
    ceilings = {"save": results.get("sink", {}).get(ALONE, {}), "restore": results["nginx"].get(ALONE, {})}
    if not smith or not peer or not alone:
        return {}

    def seconds(runs: list[float]) -> float:
        return size / MB / statistics.median(runs)

    out = {}
    for way, ceiling in ceilings.items():
        if ceiling.get(way):
            rest = max(0.0, seconds(smith[way]) - seconds(alone[way]))  # tar + zstd, lookup, finalize
            out[way] = round(seconds(peer[way]) / (rest + seconds(ceiling[way])), 2)
    return out


def start_sink(stack: contextlib.ExitStack) -> str:
    """``bench/cache_sink.mjs``: an upload URL that takes blocks and keeps nothing (the client's upload ceiling)."""
    script = Path(__file__).resolve().parent / "cache_sink.mjs"
    proc = subprocess.Popen(["node", str(script)], stdout=subprocess.PIPE, start_new_session=True)
    stack.callback(stop, proc)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return f"http://127.0.0.1:{port}/sink/entry?sp=w"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256M", help="entry size (e.g. 256M, 1GiB); default 256M")
    ap.add_argument("--storage", default="filesystem", choices=["filesystem"], help="blob store under test")
    ap.add_argument("--client", action="append", default=[], choices=["v3", "v6"], help="real npm client run")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions of the client runs, servers alternated")
    ap.add_argument("--peer-cmd", help="shell command starting the peer (PORT etc. in its environment, {port} too)")
    ap.add_argument("--peer-dir", help="checkout of the built peer: runs node --expose-gc DIR/.output/server/index.mjs")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument(
        "--download-host",
        help="SMITH_CACHE_DOWNLOAD_HOST for the server (e.g. smith.blob.core.windows.net: parallel client downloads); "
        "the bench's clients resolve it to 127.0.0.1",
    )
    args = ap.parse_args()
    size = parse_size(args.size)
    if not shutil.which("curl"):
        raise SystemExit("curl is needed (apt-get install curl)")
    peer_cmd = args.peer_cmd
    if args.peer_dir:
        entry = Path(args.peer_dir).resolve() / ".output" / "server" / "index.mjs"
        if not entry.is_file():
            raise SystemExit(f"{entry} is missing: build the peer first (pnpm install, pnpm run build)")
        peer_cmd = f"exec node --expose-gc {shlex.quote(str(entry))}"
    clients = args.client or (["v6"] if peer_cmd else [])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the servers run in their own sessions
    load_before = os.getloadavg()

    results: dict[str, dict[str, dict[str, list[float]]]] = {"smith": {}, "peer": {}, "nginx": {}, "sink": {}}
    rss: dict[str, dict[str, float]] = {}

    def mbps(seconds: float) -> float:
        return size / MB / seconds

    with tempfile.TemporaryDirectory(prefix="smith-bench-cache-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        (work / "static").mkdir()
        blob = work / "static" / "entry.tzst"
        make_file(blob, size)
        servers = [start_smith(work, size, args.download_host, stack)]
        if peer_cmd:
            servers.append(start_peer(peer_cmd, work, stack))
        servers_by = {s.name: s for s in servers}
        idle = {s.name: tree_rss_mib(s.proc.pid)[0] for s in servers}
        download_urls = {}
        for server in servers:
            save_s, restore_s, download_urls[server.name] = protocol_run(server, blob, size)
            results[server.name]["protocol"] = {"save": [mbps(save_s)], "restore": [mbps(restore_s)]}
        static, static_url, static_name = start_static(work / "static", work)
        stack.callback(stop_static, static)
        download_urls["nginx"] = f"{static_url}/entry.tzst"
        sink_url = start_sink(stack) if "v6" in clients else ""
        for rep in range(args.repeat):
            if "v6" in clients:  # the client's transfer functions alone, the same bytes from each server and nginx
                sink_runs = results.setdefault("sink", {}).setdefault(ALONE, {"save": []})
                sink_runs["save"].append(mbps(client_transfer("v6", "upload", sink_url, blob)))
                for name, url in download_urls.items():
                    ways: dict[str, list[float]] = {"restore": []} if name == "nginx" else {"save": [], "restore": []}
                    runs = results[name].setdefault(ALONE, ways)
                    if name in servers_by:
                        runs["save"].append(mbps(upload_alone("v6", servers_by[name], blob, f"bench-upload-{rep}")))
                    runs["restore"].append(mbps(client_transfer("v6", "download", url, work / "download.bin")))
                    (work / "download.bin").unlink()
            for server in servers if rep % 2 == 0 else servers[::-1]:
                for version in clients:
                    if version == "v3" and server.name == "peer":
                        continue  # the peer has no v1 (ACTIONS_CACHE_URL) API
                    cpu = tree_cpu_s(server.proc.pid)
                    save_c, restore_c = real_client(version, server, size, work)
                    runs = results[server.name].setdefault(version, {"save": [], "restore": [], "server_cpu_s": []})
                    runs["save"].append(mbps(save_c))
                    runs["restore"].append(mbps(restore_c))
                    runs["server_cpu_s"].append(tree_cpu_s(server.proc.pid) - cpu)
            results["nginx"].setdefault("curl", {"restore": []})["restore"].append(
                mbps(curl_download(f"{static_url}/entry.tzst", runs=1))
            )
        for s in servers:
            now, peak = tree_rss_mib(s.proc.pid)
            rss[s.name] = {"idle_mib": round(idle[s.name]), "after_mib": round(now), "peak_mib": round(peak)}
    report = {
        "size_bytes": size,
        "storage": args.storage,
        "repeat": args.repeat,
        "static_server": static_name,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "mb_per_s": {name: runs for name, runs in results.items() if runs},
        "rss": rss,
        "smith_over_peer": ratios(results),
        "best_smith_over_peer_v6": ceiling_ratios(results, size),
    }
    if args.download_host:  # Smith's download took another path than nginx's one stream: no like-for-like ceiling
        report["best_smith_over_peer_v6"].pop("restore", None)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


def stop_static(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def spread(values: list[float], digits: int = 0) -> str:
    low, high = min(values), max(values)
    text = f"{statistics.median(values):6.{digits}f}"
    return text + (f" ({low:.{digits}f}-{high:.{digits}f})" if len(values) > 1 else "")


def print_report(report: dict[str, Any]) -> None:
    size = report["size_bytes"]
    print(f"entry {size / 1024**2:,.0f} MiB, {report['storage']} store, loopback, {report['repeat']} repetition(s)")
    print(f"load average before {report['load_before']}, after {report['load_after']}")
    print("MB/s (server_cpu_s: the server's CPU seconds for the save + restore), median (min-max):")
    for name, by_client in report["mb_per_s"].items():
        for client, runs in by_client.items():
            label = {
                "protocol": "v2 protocol (httpx blocks, curl)",
                ALONE: "@actions/cache v6 upload/download fn" if name != "sink" else "@actions/cache v6 upload fn",
                "curl": f"curl, same file ({report['static_server']})",
            }
            what = label.get(client, f"@actions/cache {client}")
            ways = "  ".join(
                f"{way} {spread(values, 1 if way == 'server_cpu_s' else 0)}" for way, values in runs.items()
            )
            print(f"  {name:<6} {what:<38} {ways}")
    for name, r in report["rss"].items():
        print(f"  {name:<6} RSS idle {r['idle_mib']} MiB, after {r['after_mib']} MiB, peak {r['peak_mib']} MiB")
    for client, ways in report["smith_over_peer"].items():
        for way, r in ways.items():
            met = "met" if r["met"] else "NOT met"
            print(f"  smith/peer {client} {way:<7} {r['ratio']:5.2f}x  (goal >= {r['goal']}x: {met})")
    for way, best in report["best_smith_over_peer_v6"].items():
        print(
            f"  best smith/peer v6 {way:<7} {best:5.2f}x through this client (Smith's transfer at the client's ceiling:"
            f" {'nginx download' if way == 'restore' else 'upload sink'})"
        )


if __name__ == "__main__":
    main()
