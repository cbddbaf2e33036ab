"""`parasearch --campaign DIR`: every trial is also an execution of an expegit campaign, run
from the campaign's code at its commit and recorded in `runs/<id>/` with the group commits of
`expegit run`, so a search is versioned with its code. The search decides (SearchSource); the
campaign records (expegit's CampaignSource): one source made of the two."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from expegit import code
from expegit.campaign import Campaign
from expegit.run import script_in_code, version_of
from expegit.source import CampaignSource, RunSettings
from liborchestra.driver import Driver
from liborchestra.execution import Execution, Result
from liborchestra.journal import Row
from parasearch.search import SearchSource


def prepare(folder: Path, script: str) -> dict:
    """Check the campaign and the script in its code/, export the code at its HEAD (a dirty
    code/ is refused): what the driver's journal keeps to run and resume."""
    campaign = Campaign.open(folder)
    relative = script_in_code(campaign, script)
    version = version_of(campaign, None, dirty=False)
    tree = code.export(campaign, version)
    return {"campaign": str(campaign.root), "campaign_script": relative,
            "commit": version.commit, "tree": str(tree)}


class CampaignSearch(SearchSource):
    def __init__(self, *args, meta: dict, profile: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        campaign = Campaign.open(Path(meta["campaign"]))
        tree = Path(meta["tree"])
        if not tree.is_dir():  # a resume after the exported tree was cleaned
            code.export(campaign, code.CodeVersion(meta["commit"]))
        self.recorder = CampaignSource(campaign, RunSettings(
            name=self.store.name, profile=profile, script=meta["campaign_script"],
            commit=meta["commit"], tree=tree, duration=self.settings.duration))

    @contextlib.asynccontextmanager
    async def open(self, driver: Driver) -> AsyncIterator[None]:
        async with super().open(driver), self.recorder.open(driver):
            yield

    def execution(self, row: Row, run_id: str) -> Execution:
        return self.recorder.execution(row, run_id)

    async def done(self, row: Row, result: Result) -> float | None:
        value = await super().done(row, result)
        await self.recorder.done(row, result)
        return value
