"""Sticky disk labels: what a job asks for, what is refused, and that runner-class matching ignores them."""

from __future__ import annotations

import pytest

from smith.domain.jobs import default_runner_classes, match_runner_class
from smith.domain.sticky import DEFAULT_MIB, StickyLabelError, StickyRequest, requests


def test_labels_name_a_disk_a_path_and_a_size() -> None:
    labels = ["self-hosted", "sticky:docker:/var/lib/docker:20G", "sticky:deps:/cache", "STICKY:npm:/root/.npm:512m"]
    assert requests(labels) == [
        StickyRequest("docker", "/var/lib/docker", 20 * 1024),
        StickyRequest("deps", "/cache", DEFAULT_MIB),
        StickyRequest("npm", "/root/.npm", 512),
    ]


@pytest.mark.parametrize(
    "label",
    [
        "sticky:docker",
        "sticky:../x:/cache",
        "sticky:a:relative/path",
        "sticky:a:/cache/../../etc",
        "sticky:a:/proc",
        "sticky:a:/cache:0G",
        "sticky:a:/cache:lots",
        "sticky:a:/ca che",
    ],
)
def test_malformed_labels_are_refused(label: str) -> None:
    with pytest.raises(StickyLabelError):
        requests([label])


def test_at_most_four_disks() -> None:
    with pytest.raises(StickyLabelError):
        requests([f"sticky:d{i}:/d{i}" for i in range(5)])


def test_runner_class_matching_ignores_sticky_labels() -> None:
    rc = match_runner_class(["self-hosted", "sticky:docker:/var/lib/docker"], default_runner_classes())
    assert rc is not None and rc.name == "self-hosted"
    assert match_runner_class(["sticky:docker:/var/lib/docker"], default_runner_classes()) is None
