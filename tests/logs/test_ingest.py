"""The NDJSON parser: all-or-nothing batches, bad lines by number, truncation, agreement with the wire model."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from smith.errors import InvalidInput
from smith.logs.ingest import BadBatchError, encode_lines, encode_rows, parse, spans, truncate, ts_us
from smith.wire.logs import LogLine, parse_time


def line(**fields: object) -> bytes:
    base: dict[str, object] = {"job_id": "job-1", "seq": 1, "ts": 1_700_000_000.25, "line": "hello"}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def test_good_batch_becomes_lines_and_both_encodings() -> None:
    body = b"\n".join(line(seq=i, stream="stderr" if i % 2 else "stdout") for i in range(1, 4)) + b"\n"
    batch = parse(body, host_default="agent-7")
    assert [x.seq for x in batch.lines] == [1, 2, 3] and batch.spans == {"job-1": (1, 3)}
    x = batch.lines[0]
    assert x.host == "agent-7" and x.stream == "stderr" and not x.truncated and not x.last
    modern = orjson.loads(encode_lines(batch.lines))
    assert modern[0] == {
        "job_id": "job-1",
        "seq": 1,
        "ts": 1_700_000_000.25,
        "stream": "stderr",
        "line": "hello",
        "host": "agent-7",
    }
    assert "stream" not in modern[1]  # stdout is the column's default: left out
    legacy = [orjson.loads(raw) for raw in encode_rows(batch.lines).split(b"\n")]
    assert legacy[0]["ts_us"] == 1_700_000_000_250_000 and legacy[0]["day"] == "2023-11-14"
    assert legacy[1]["stream"] == "stdout" and legacy[0]["truncated"] == 0 and legacy[0]["last"] == 0
    assert ts_us(1_700_000_000.25) == 1_700_000_000_250_000


def test_the_agent_cannot_say_a_line_was_truncated_or_add_columns() -> None:
    body = line(seq=1, truncated=True, ts_us=5, day="1999-01-01")
    x = parse(body).lines[0]
    assert not x.truncated
    assert set(orjson.loads(encode_lines([x]))[0]) == {"job_id", "seq", "ts", "line"}


def test_a_repeated_key_counts_once_the_last_one() -> None:
    """ClickHouse refuses a JSON object with a key twice; the pipeline re-encodes, so it never sees one."""
    body = b'{"job_id":"job-1","seq":1,"ts":1.5,"line":"a","line":"b"}'
    x = parse(body).lines[0]
    assert x.line == "b" and encode_lines([x]).count(b'"line"') == 1


def test_spans_per_job_or_none_when_seqs_do_not_increase() -> None:
    lines = parse(b"\n".join([line(seq=1), line(seq=5, job_id="job-2"), line(seq=2), line(seq=9, job_id="job-2")]))
    assert lines.spans == {"job-1": (1, 2), "job-2": (5, 9)}
    assert parse(b"\n".join([line(seq=2), line(seq=2)])).spans is None
    assert parse(b"\n".join([line(seq=3), line(seq=1, job_id="job-2"), line(seq=2)])).spans is None
    assert spans([]) == {}


def test_crlf_and_blank_lines_are_fine() -> None:
    body = line(seq=1) + b"\r\n\r\n" + line(seq=2) + b"\r\n"
    assert [x.seq for x in parse(body).lines] == [1, 2]


def test_bad_lines_are_reported_by_number_and_nothing_is_kept() -> None:
    body = b"\n".join(
        [
            line(seq=1),
            b"{not json",
            line(seq=3, stream="stdin"),
            line(seq=-1),
            line(job_id="bad id!"),
            line(ts="yesterday"),
            line(seq=True),
            b"[1, 2]",
            line(seq=9),
        ]
    )
    with pytest.raises(BadBatchError) as info:
        parse(body)
    bad = {b.line: b.error for b in info.value.bad_lines}
    assert sorted(bad) == [2, 3, 4, 5, 6, 7, 8]
    assert bad[2].startswith("not JSON") and "stream" in bad[3] and "seq" in bad[4] and "job_id" in bad[5]
    assert "ts" in bad[6] and "seq" in bad[7] and "object" in bad[8]
    assert info.value.status_code == 400 and info.value.to_dict()["bad_line_count"] == 7


def test_two_json_values_on_one_line_is_malformed() -> None:
    with pytest.raises(BadBatchError) as info:
        parse(line(seq=1) + b" " + line(seq=2) + b"\n" + line(seq=3))
    assert [b.line for b in info.value.bad_lines] == [1]


def test_too_many_lines_refused() -> None:
    with pytest.raises(InvalidInput, match="at most 2"):
        parse(b"\n".join(line(seq=i) for i in range(3)), max_lines=2)


def test_oversized_line_is_cut_at_a_character_boundary_with_a_marker() -> None:
    text = "é" * 1000  # 2000 bytes
    batch = parse(line(line=text), max_line_bytes=512)
    x = batch.lines[0]
    assert batch.truncated == 1 and x.truncated
    assert len(x.line.encode()) <= 512
    kept, marker = x.line.split(" …[smith: truncated ")
    assert set(kept) == {"é"} and marker == f"{2000 - len(kept.encode())} bytes]"
    assert truncate("short", 512) is None


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"stream": "system", "last": True, "step": "build", "repo": "a/b", "vm": "vm-1", "host": "h"},
        {"seq": 0},
        {"seq": 2**63},
        {"ts": -1},
        {"stream": "stdin"},
        {"line": 5},
        {"last": "yes"},
        {"host": "h" * 254},
        {"job_id": ""},
        {"job_id": "a" * 129},
        {"job_id": ...},
        {"seq": ...},
        {"ts": ...},
    ],
)
def test_parser_agrees_with_the_wire_model(fields: dict[str, object]) -> None:
    raw = line(**fields)
    try:
        LogLine.model_validate_json(raw)
        model_ok = True
    except ValidationError:
        model_ok = False
    try:
        parse(raw)
        parser_ok = True
    except BadBatchError:
        parser_ok = False
    assert parser_ok == model_ok


def test_parse_time() -> None:
    assert parse_time("1h", now=10_000) == 10_000 - 3600
    assert parse_time("90s", now=100) == 10
    assert parse_time("1700000000") == 1_700_000_000
    with pytest.raises(ValueError, match="duration"):
        parse_time("yesterday")
