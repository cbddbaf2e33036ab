"""Exporting the code of a commit from several runs at the same moment (found by CI: two
`expegit run` at once in one folder raced on the export folder)."""

from __future__ import annotations

import threading

from expegit import code
from expegit.campaign import Campaign
from tests.expegit.conftest import git


def test_concurrent_exports_of_one_commit_all_get_the_tree(campaign):
    camp = Campaign.open(campaign)
    version = code.CodeVersion(git(campaign / "code", "rev-parse", "HEAD").strip())
    barrier, trees, errors = threading.Barrier(6), [], []

    def export() -> None:
        barrier.wait()
        try:
            trees.append(code.export(camp, version))
        except Exception as error:  # what the test is about
            errors.append(error)

    threads = [threading.Thread(target=export) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(set(trees)) == 1 and (trees[0] / "train.sh").is_file()
    leftovers = [p for p in trees[0].parent.iterdir() if p.name.startswith(".export-")]
    assert leftovers == []
