"""The agent's log shipper (smith.agent.logship) end to end against the real pipeline (uvicorn + chdb)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from smith.agent.logship import LogShipper
from smith.logs.app import create_app
from smith.logs.settings import LogsSettings
from smith.testing.servers import ThreadedServer, free_port
from smith.wire.guest import GuestEvent
from tests.logs.conftest import logs_token, operator_token


def all_lines(url: str, job_id: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    after = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {operator_token()}"}) as c:
        while True:
            r = c.get(f"/v1/jobs/{job_id}/logs", params={"after": after, "limit": 10_000})
            if r.status_code == 404:
                return out
            page = r.json()
            out += page["lines"]
            if not page["lines"]:
                return out
            after = page["next_after"]


@pytest.fixture
def pipeline(settings: LogsSettings, chdb_dir: Path) -> Iterator[str]:
    from smith.adapters.chdb import ChdbClickHouse

    with ThreadedServer(create_app(settings, clickhouse=ChdbClickHouse(chdb_dir))) as srv:
        yield srv.url


def line(text: str, stream: str = "stdout") -> GuestEvent:
    return GuestEvent(type="line", ts=time.time(), stream=stream, line=text)  # type: ignore[arg-type]


async def test_ships_jobs_in_order_and_cleans_up(pipeline: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    async with LogShipper(pipeline, lambda job: logs_token(job, "h1"), spool, host="h1", batch_lines=100) as shipper:
        await shipper.send("job-a", GuestEvent(type="started", ts=time.time()))
        for i in range(1, 501):
            await shipper.send("job-a", line(f"a {i}"))
            await shipper.send("job-b", line(f"b {i}", "stderr"), step="build")
        await shipper.send("job-a", GuestEvent(type="exit", ts=time.time(), exit_code=0))
        await shipper.close_job("job-a")
        await shipper.close_job("job-b")
    a = all_lines(pipeline, "job-a")
    assert [x["seq"] for x in a] == list(range(1, 503))
    assert a[0]["line"] == "job started" and a[0]["stream"] == "system"
    assert [x["line"] for x in a[1:-1]] == [f"a {i}" for i in range(1, 501)]
    assert a[-1]["line"] == "exit code 0" and a[-1]["last"] and a[0]["host"] == "h1"
    b = all_lines(pipeline, "job-b")
    assert [x["line"] for x in b[:-1]] == [f"b {i}" for i in range(1, 501)] and b[0]["step"] == "build"
    assert b[-1]["line"] == "smith: output closed" and b[-1]["last"]  # closed without an exit event
    assert not any(spool.iterdir())  # fully acknowledged jobs leave nothing behind


async def test_spools_while_unreachable_then_replays_exactly_once(
    settings: LogsSettings, chdb_dir: Path, tmp_path: Path
) -> None:
    from smith.adapters.chdb import ChdbClickHouse

    spool = tmp_path / "spool"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    shipper = LogShipper(url, logs_token, spool, batch_lines=50, max_backoff=0.2)
    await shipper.start()
    for i in range(1, 301):
        await shipper.send("job-r", line(f"r {i}"))
    assert await shipper.close(drain_seconds=0.5) is False  # nobody listening: all of it stays on disk
    assert (spool / "job-r" / "lines.ndjson").stat().st_size > 0
    # A torn last write (the agent died mid-line) is dropped on restart.
    with (spool / "job-r" / "lines.ndjson").open("ab") as f:
        f.write(b'{"job_id":"job-r","seq":301,"ts":1')
    with ThreadedServer(create_app(settings, clickhouse=ChdbClickHouse(chdb_dir)), port=port):
        again = LogShipper(url, logs_token, spool, batch_lines=50)
        await again.start()
        assert again.jobs["job-r"].next_seq == 301
        for i in range(301, 351):
            await again.send("job-r", line(f"r {i}"))
        await again.close_job("job-r")
        assert await again.close(drain_seconds=20) is True
        got = await asyncio.to_thread(all_lines, url, "job-r")
    assert [x["seq"] for x in got] == list(range(1, 352))
    assert [x["line"] for x in got[:-1]] == [f"r {i}" for i in range(1, 351)]


async def test_resend_after_a_lost_answer_stores_nothing_twice(pipeline: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    async with LogShipper(pipeline, logs_token, spool) as shipper:
        for i in range(1, 101):
            await shipper.send("job-d", line(f"d {i}"))
    # Pretend the acknowledgement was lost: the next shipper sends the whole spool again.
    (spool / "job-d" / "acked").write_text("0")
    async with LogShipper(pipeline, logs_token, spool) as again:
        assert again.jobs["job-d"].acked == 0
        await again.send("job-d", line("d 101"))
        await again.close_job("job-d")
    got = all_lines(pipeline, "job-d")
    assert [x["seq"] for x in got] == list(range(1, 103))


async def test_forwards_a_file_such_as_firecrackers_log(pipeline: str, tmp_path: Path) -> None:
    """What the VMM logs is forwarded as the job's lines, to the end, and the exit stays the job's last line."""
    log_file = tmp_path / "firecracker.log"
    log_file.write_text("2026-01-01T00:00:00 [anonymous-instance:main] Running Firecracker v1.16.1\n")
    async with LogShipper(pipeline, logs_token, tmp_path / "spool") as shipper:
        await shipper.follow_files("job-f", {"firecracker": log_file})
        await shipper.send("job-f", line("guest says hi"))
        with log_file.open("a") as f:
            f.write('{"utc_timestamp_ms": 1, "vcpu": {"exit_io_in": 3}}\n')
        for _ in range(100):
            if shipper.jobs["job-f"].next_seq >= 4:
                break
            await asyncio.sleep(0.05)
        await shipper.send("job-f", GuestEvent(type="exit", ts=time.time(), exit_code=0))
        with log_file.open("a") as f:  # the VM is stopped after the guest exited: the VMM logs its shutdown
            f.write("2026-01-01T00:00:09 [anonymous-instance:main] Vmm is stopping.\n")
            f.write("no newline at the end")
        await shipper.close_job("job-f")  # reads the file to its end first
    got = all_lines(pipeline, "job-f")
    fc = [x["line"] for x in got if x["step"] == "firecracker"]
    assert fc[0].endswith("Running Firecracker v1.16.1") and fc[-2].endswith("Vmm is stopping.")
    assert fc[-1] == "no newline at the end" and len(fc) == 4
    assert [x["seq"] for x in got] == list(range(1, 7))
    assert got[-1]["line"] == "exit code 0" and got[-1]["last"] and not any(x["last"] for x in got[:-1])


def test_refuses_job_ids_that_cannot_name_a_directory(tmp_path: Path) -> None:
    shipper = LogShipper("http://127.0.0.1:1", "t", tmp_path)
    with pytest.raises(ValueError, match="spool"):
        shipper.append("../etc", "x")


async def test_a_full_spool_counts_lines_and_says_so_instead_of_filling_the_disk(
    settings: LogsSettings, chdb_dir: Path, tmp_path: Path
) -> None:
    """The pipeline is down and the spool reaches its limit: later lines are counted, not spooled; once the job
    ends and the pipeline is back, the job's log says how many are missing, the exit line is still last, and the
    freed space takes the next job's lines."""
    from smith.adapters.chdb import ChdbClickHouse

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spool = tmp_path / "spool"
    shipper = LogShipper(url, logs_token, spool, max_spool_bytes=4000, min_free_bytes=0, max_backoff=0.2)
    async with shipper:
        for i in range(1, 101):
            await shipper.send("job-full", line(f"line {i:03d} " + "x" * 40))
        kept = shipper.jobs["job-full"].next_seq - 1
        assert 0 < kept < 100 and shipper.dropped_lines == 100 - kept
        assert shipper.spool_bytes <= 4000 and (spool / "job-full" / "lines.ndjson").stat().st_size <= 4000
        await shipper.send("job-full", GuestEvent(type="exit", ts=time.time(), exit_code=0))  # always kept
        await shipper.close_job("job-full")
        with ThreadedServer(create_app(settings, clickhouse=ChdbClickHouse(chdb_dir)), port=port):
            for _ in range(200):
                if "job-full" not in shipper.jobs:
                    break
                await asyncio.sleep(0.05)
            assert shipper.spool_bytes == 0
            await shipper.send("job-next", line("room again"))
            await shipper.close_job("job-next")
            for _ in range(200):
                if not shipper.jobs:
                    break
                await asyncio.sleep(0.05)
            got = all_lines(url, "job-full")
            nxt = all_lines(url, "job-next")
    assert [x["seq"] for x in got] == list(range(1, kept + 3))
    assert got[kept - 1]["line"].startswith(f"line {kept:03d}")
    marker = got[kept]["line"]
    assert marker.startswith(f"smith: {100 - kept} line(s) of this job were not shipped") and "4000" in marker
    assert got[-1]["line"] == "exit code 0" and got[-1]["last"]
    assert [x["line"] for x in nxt][:1] == ["room again"]


async def test_a_disk_short_of_free_space_stops_the_spool(tmp_path: Path) -> None:
    """Below the free-space floor nothing but a job's last line (with the marker before it) is spooled."""
    shipper = LogShipper("http://127.0.0.1:1", logs_token, tmp_path, min_free_bytes=1 << 62)
    tmp_path.mkdir(exist_ok=True)
    assert shipper.append("job-d", "dropped") == 0 and shipper.append("job-d", "dropped too") == 0
    assert shipper.append("job-d", "exit code 1", stream="system", last=True) == 2
    shipper.jobs["job-d"].file.flush()
    spooled = [orjson.loads(x) for x in (tmp_path / "job-d" / "lines.ndjson").read_bytes().splitlines()]
    assert [x["seq"] for x in spooled] == [1, 2] and spooled[1]["last"]
    assert spooled[0]["line"].startswith("smith: 2 line(s)") and "free on its disk" in spooled[0]["line"]
    assert shipper.dropped_lines == 2
    shipper.jobs["job-d"].file.close()
    await shipper._client.aclose()


async def test_clickhouse_down_mid_stream_then_back_loses_and_doubles_nothing(
    settings: LogsSettings, chdb_dir: Path, tmp_path: Path
) -> None:
    """The pipeline stays up but its ClickHouse server (over HTTP) goes away mid-stream: POSTs get 503, the agent
    keeps its lines, and once ClickHouse is back every line is stored once, in order."""
    from smith.adapters.clickhouse_http import HttpClickHouse
    from smith.testing.clickhouse import chdb_http_app
    from tests.logs.conftest import CH_PASSWORD

    ch_port = free_port()
    clickhouse = ThreadedServer(chdb_http_app(chdb_dir, password=CH_PASSWORD), port=ch_port)
    clickhouse.__enter__()
    app = create_app(settings, clickhouse=HttpClickHouse(f"http://127.0.0.1:{ch_port}", password=CH_PASSWORD))
    with ThreadedServer(app) as logs:
        async with LogShipper(logs.url, logs_token, tmp_path / "spool", batch_lines=200, max_backoff=0.3) as ship:
            for i in range(1, 1001):
                await ship.send("job-ch", line(f"line {i}"))
            for _ in range(200):  # some of it is stored...
                if ship.jobs["job-ch"].acked > 0:
                    break
                await asyncio.sleep(0.02)
            clickhouse.__exit__(None, None, None)  # ...then ClickHouse goes away
            for i in range(1001, 2001):
                await ship.send("job-ch", line(f"line {i}"))
            await asyncio.sleep(1.0)
            assert ship.jobs["job-ch"].acked < ship.jobs["job-ch"].written  # held on the agent's disk
            async with httpx.AsyncClient() as probe:
                r = await probe.post(
                    f"{logs.url}/v1/logs",
                    content=b'{"job_id":"probe","seq":1,"ts":1.0}',
                    headers={"Authorization": f"Bearer {logs_token('probe')}"},
                )
            assert r.status_code == 503 and r.json()["retryable"] is True
            with ThreadedServer(chdb_http_app(chdb_dir, password=CH_PASSWORD), port=ch_port):
                await ship.close_job("job-ch")
                for _ in range(300):
                    if "job-ch" not in ship.jobs:
                        break
                    await asyncio.sleep(0.05)
                got = all_lines(logs.url, "job-ch")
    assert [x["seq"] for x in got] == list(range(1, 2002))
    assert [x["line"] for x in got[:2000]] == [f"line {i}" for i in range(1, 2001)] and got[-1]["last"]
