"""`smith image kernel`: one-line errors, and a kernel already built for this source and config is reused
(a build takes minutes: the suite never runs one)."""

from __future__ import annotations

import json
from pathlib import Path

from smith.images.kernel import kernel_key
from tests.cli.conftest import assert_one_line_error, run_smith


def test_a_missing_source_is_one_line(tmp_path: Path) -> None:
    result = run_smith("image", "kernel", "--data-dir", str(tmp_path), "--source", str(tmp_path / "none.tar.xz"))
    assert_one_line_error(result, "no kernel source at", "none.tar.xz")
    assert result.code == 1


def test_a_kernel_built_for_this_source_and_config_is_reused_and_made_current(tmp_path: Path) -> None:
    source = tmp_path / "linux-source-6.1.tar.xz"
    source.write_bytes(b"not really a kernel source")
    built = tmp_path / "data" / "kernels" / kernel_key(source)
    built.mkdir(parents=True)
    (built / "vmlinux").write_bytes(b"\x7fELF")
    (built / "manifest.json").write_text("{}")
    result = run_smith("image", "kernel", "--data-dir", str(tmp_path / "data"), "--source", str(source), "--json")
    assert result.code == 0, result.err
    out = json.loads(result.out)
    assert out["built"] is False and out["vmlinux"] == str(built / "vmlinux")
    assert (tmp_path / "data" / "kernels" / "current").resolve() == built
