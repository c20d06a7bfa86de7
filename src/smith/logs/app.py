"""The log pipeline's HTTP app: ``create_app(settings)`` is its composition root (see ``smith.wire.logs``)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
import zlib
from collections.abc import AsyncIterator, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import StreamingResponse

from smith import tokens
from smith.asyncutil import supervise
from smith.errors import InvalidInput, NotFound, PayloadTooLarge, SmithError
from smith.http import add_error_handlers, add_health_routes, api_docs, dumps, json_response, read_body
from smith.logging import get_logger
from smith.logs import ingest, metrics
from smith.logs.batcher import Batcher
from smith.logs.settings import LogsSettings
from smith.logs.store import LogStore
from smith.metrics import add_metrics_route
from smith.ports import ClickHouse
from smith.wire.logs import JOB_ID_RE, IngestResponse, LogPage, parse_time

log = get_logger("smith.logs.http")
T = TypeVar("T")
SWEEP_INTERVAL_SECONDS = 3600.0
KEEPALIVE_SECONDS = 15.0


def clickhouse_from_settings(settings: LogsSettings) -> ClickHouse:
    """The ClickHouse the settings name: a server over HTTP, else chdb in the data directory."""
    if settings.clickhouse_url:
        from smith.adapters.clickhouse_http import HttpClickHouse

        password = settings.clickhouse_password.get_secret_value() if settings.clickhouse_password else ""
        return HttpClickHouse(
            settings.clickhouse_url,
            user=settings.clickhouse_user,
            password=password,
            dialect=settings.clickhouse_dialect,
        )
    from smith.adapters.chdb import ChdbClickHouse

    assert settings.chdb_dir is not None
    return ChdbClickHouse(settings.chdb_dir, workers=settings.logs_insert_lanes + 1)  # + 1: reads never wait


async def _body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes after any gzip/deflate decoding (413 beyond)."""
    body = await read_body(request, limit)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        decoded, rest = b"", body
        while rest:  # gzip: every member, one after the other (a body may be several gzip files back to back)
            d = zlib.decompressobj(wbits)
            try:
                decoded += d.decompress(rest, limit + 1 - len(decoded))
            except (zlib.error, gzip.BadGzipFile) as exc:
                raise InvalidInput(f"body is not valid {encoding}: {exc}") from exc
            if len(decoded) > limit or d.unconsumed_tail:
                raise PayloadTooLarge(f"decoded body is over the {limit} byte limit")
            if not d.eof:
                raise InvalidInput(f"body is not valid {encoding}: it ends inside a stream")
            rest = d.unused_data
            if rest and encoding == "deflate":
                raise InvalidInput("body is not valid deflate: data after the end of the stream")
        body = decoded
    elif encoding != "identity":
        raise InvalidInput(f"unsupported Content-Encoding {encoding!r} (identity, gzip, deflate)")
    return body


def _time(name: str, value: str | None) -> float | None:
    try:
        return parse_time(value) if value else None
    except ValueError as exc:
        raise InvalidInput(f"{name}: {exc}") from exc


async def _unless_gone(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result, or None once the client has disconnected: then ``work`` is cancelled (and a ClickHouse
    query it was waiting on is stopped) rather than left to run for nobody."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    return task.result() if not task.cancelled() else None


def _check_job_id(job_id: str) -> str:
    if not JOB_ID_RE.match(job_id):
        raise InvalidInput("job id: letters, digits and ._:- only, 1-128 characters")
    return job_id


async def _job_writer(request: Request) -> tuple[str, str]:
    """``(job_id, host)`` of the request's ``logs`` token: one job's lines, minted with its lease."""
    return tokens.verify_logs(request.app.state.ingest_secret, request.headers.get("authorization"))


async def _operator(request: Request) -> str:
    secret = request.app.state.operator_secret
    claims = tokens.verify(secret, tokens.bearer(request.headers.get("authorization")), scope="operator")
    return str(claims["sub"])


JobWriter = Annotated[tuple[str, str], Depends(_job_writer)]
Operator = Annotated[str, Depends(_operator)]


def create_app(settings: LogsSettings, *, clickhouse: ClickHouse | None = None) -> FastAPI:
    """Build the app; the store opens and migrates on start-up (lifespan)."""
    store = LogStore(
        clickhouse or clickhouse_from_settings(settings),
        database=settings.clickhouse_database,
        retention_days=settings.log_retention_days,
        search_seconds=settings.logs_search_max_seconds,
        cluster=settings.clickhouse_cluster,
    )
    batcher = Batcher(
        store,
        batch_rows=settings.logs_batch_rows,
        min_rows=settings.logs_batch_min_rows,
        delay=settings.logs_batch_delay_seconds,
        max_pending=settings.logs_max_pending_rows,
        lanes=settings.logs_insert_lanes,
    )

    async def sweeper() -> None:
        while True:
            try:
                dropped = await store.sweep_retention()
                if dropped:
                    log.info("old partitions dropped", partitions=dropped)
            except SmithError as exc:
                log.warning("retention sweep failed", error=exc.message)
            await asyncio.sleep(SWEEP_INTERVAL_SECONDS)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await store.start()
        batcher.start()
        sweep = asyncio.create_task(supervise("retention-sweeper", sweeper)) if store.legacy else None
        log.info(
            "log pipeline ready", dialect=store.ch.dialect, clickhouse=store.ch.version, db=settings.clickhouse_database
        )
        try:
            yield
        finally:
            if sweep:
                sweep.cancel()
            await batcher.stop()
            await store.close()

    app = FastAPI(title="Smith log pipeline", version="0.1.0", lifespan=lifespan, **api_docs(settings))
    app.state.store = store
    app.state.batcher = batcher
    app.state.ingest_secret = settings.ingest_secret()
    app.state.operator_secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None

    add_error_handlers(app)

    async def clickhouse_ready() -> dict[str, Any]:
        await store.ch.select("SELECT 1 AS ok")
        return {"pending": batcher.pending}

    add_health_routes(app, clickhouse_ready, "error")
    add_metrics_route(app, settings.metrics_token)

    # -- ingestion ------------------------------------------------------------------------------------------

    @app.post("/v1/logs", tags=["ingest"], response_model=IngestResponse)
    async def ingest_lines(request: Request, writer: JobWriter) -> Response:
        """NDJSON of LogLine, all of the job the ``logs`` token names (403 otherwise; the host is the token's).
        Answered once the lines are stored; 400 lists bad lines and writes none."""
        body = await _body(request, settings.logs_max_body_bytes)
        with metrics.parsing() as parsed:
            batch = ingest.parse(
                body,
                max_line_bytes=settings.logs_max_line_bytes,
                max_lines=settings.logs_max_batch_lines,
            )
            parsed.append(batch)
        ingest.bind(batch, *writer)
        accepted, duplicates = await batcher.submit(batch.lines, batch.spans)
        return json_response({"accepted": accepted, "duplicates": duplicates, "truncated": batch.truncated})

    # -- reads ----------------------------------------------------------------------------------------------

    @app.get("/v1/jobs/{job_id}/logs", tags=["read"], response_model=LogPage)
    async def job_logs(
        request: Request,
        job_id: str,
        _: Operator,
        after: int = Query(0, ge=0, lt=2**63, description="Lines with seq above this"),
        limit: int = Query(1000, ge=1, le=10_000),
        tail: int | None = Query(None, ge=1, le=10_000, description="The last N lines instead of a page"),
        follow: bool = Query(False, description="Server-sent events until the job's last line"),
    ) -> Response:
        _check_job_id(job_id)
        if follow:
            if await store.job_state(job_id) is None:
                raise NotFound(f"no log lines for job {job_id!r}")
            last_event = request.headers.get("last-event-id", "")
            start = int(last_event) if last_event.isdigit() else after
            return StreamingResponse(
                _follow(job_id, start, tail if not last_event.isdigit() else None),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        if tail is not None:
            lines = await store.tail(job_id, limit=tail)
        else:
            lines = await store.page(job_id, after=after, limit=limit)
        if lines:  # one query: the job's last line has its highest seq, so the page reaches it iff it ends with it
            next_after, complete = lines[-1].seq, lines[-1].last
        else:
            state = await store.job_state(job_id)
            if state is None:
                raise NotFound(f"no log lines for job {job_id!r}")
            next_after, complete = after, state[1] and after >= state[0]
        return json_response({"job_id": job_id, "lines": lines, "next_after": next_after, "complete": complete})

    async def _follow(job_id: str, after: int, tail: int | None) -> AsyncIterator[bytes]:
        if tail is not None:
            first = await store.tail(job_id, limit=tail)
            after = first[0].seq - 1 if first else after
        idle = 0.0
        while True:
            lines = await store.page(job_id, after=after, limit=5000)
            for r in lines:
                yield b"event: line\nid: %d\ndata: %s\n\n" % (r.seq, dumps(r))
                after = r.seq
                if r.last:
                    yield b'event: end\ndata: {"complete": true}\n\n'
                    return
            if lines:
                idle = 0.0
                continue
            started = asyncio.get_running_loop().time()
            await batcher.wait_flush(settings.logs_follow_poll_seconds)
            idle += asyncio.get_running_loop().time() - started
            if idle >= KEEPALIVE_SECONDS:
                idle = 0.0
                yield b": keepalive\n\n"

    @app.get("/v1/jobs/{job_id}/logs/summary", tags=["read"])
    async def job_summary(job_id: str, _: Operator) -> Response:
        _check_job_id(job_id)
        summary = await store.summary(job_id)
        if summary is None:
            raise NotFound(f"no log lines for job {job_id!r}")
        return json_response(summary.model_dump())

    @app.get("/v1/logs/search", tags=["read"])
    async def search(
        request: Request,
        _: Operator,
        q: str = Query("", max_length=1000, description="Text to find (any case); empty: every line"),
        since: str | None = Query(None, description="1h, 30m, 2d... ago, or epoch seconds"),
        until: str | None = Query(None, description="Same forms as since"),
        repo: str | None = Query(None, max_length=256),
        host: str | None = Query(None, max_length=253),
        job_id: str | None = Query(None, max_length=128),
        limit: int = Query(100, ge=1, le=10_000),
    ) -> Response:
        t0, t1 = _time("since", since), _time("until", until)
        if job_id:
            _check_job_id(job_id)
        elif t0 is None:  # not the whole table: the last day (SMITH_LOGS_SEARCH_DEFAULT_WINDOW_SECONDS)
            t0 = (t1 if t1 is not None else time.time()) - settings.logs_search_default_window_seconds
        found = await _unless_gone(
            request, store.search(q, since=t0, until=t1, repo=repo, host=host, job_id=job_id, limit=limit)
        )
        if found is None:
            return Response(status_code=499)  # nobody is listening (nginx's "client closed request")
        hits, limited = found
        return json_response({"hits": hits, "limited": limited, "since": t0, "until": t1})

    @app.get("/v1/logs/volume", tags=["read"])
    async def volume(
        _: Operator,
        since: str | None = Query(None, description="1h, 30m, 2d... ago, or epoch seconds; default: the last day"),
        limit: int = Query(20, ge=1, le=1000),
    ) -> Response:
        """Log volume per job: the jobs with the most bytes of log lines since ``since``."""
        t0 = _time("since", since)
        if t0 is None:
            t0 = time.time() - settings.logs_search_default_window_seconds
        return json_response({"since": t0, "jobs": await store.volume(t0, limit)})

    @app.get("/v1/logs/stats", tags=["read"])
    async def stats(_: Operator) -> Response:
        s = batcher.stats
        return json_response(
            {
                "pending": batcher.pending,
                "max_pending": batcher.max_pending,
                "written": s.written,
                "duplicates": s.duplicates,
                "batches": s.batches,
                "rejected": s.rejected,
                "failed_batches": s.failed_batches,
                "last_batch_seconds": s.last_batch_seconds,
                "dialect": store.ch.dialect,
                "clickhouse": store.ch.version,
            }
        )

    return app
