"""Ids in a table are never cut: not on a narrow terminal (see test_operator_cli for a pipe)."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from smith.cli.common import whole


def test_an_id_column_stays_whole_on_a_narrow_terminal() -> None:
    job_id = "9123456789012345678"
    table = Table("id", "state", "repo", "name", "reason")
    table.add_row(job_id, "queued", "an-organisation/a-repository", "build and test", "waiting for a runner")
    out = io.StringIO()
    Console(width=50, file=out).print(whole(table, 0, [job_id]))
    assert job_id in out.getvalue()
