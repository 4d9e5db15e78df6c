"""Runs a definition's cases, one after another, each from a fresh database, a clean sandbox
and a last-sent store of its own (with ``e2e``, also topics, consumer groups and a Debezium of
its own); a case stops at its first failing step, since later steps build on it. Returns one
result per case, for the terminal and for JUnit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from consumer.config import SyncDefinition
from consumer.definition_tests.cases import Case
from consumer.definition_tests.direct import DirectRun, apply_step, create_tenants, tenants_in
from consumer.definition_tests.junit import CaseResult
from consumer.definition_tests.observed import Observations
from consumer.definition_tests.pipeline import PipelineCase, for_pipeline, settle
from consumer.definition_tests.servers import Servers
from consumer.definition_tests.target import aimed
from consumer.definition_tests.verdict import differences
from consumer.errors import ConfigurationError, SyncError
from consumer.reach.auth import credential_for
from consumer.reach.client import ReachClient
from consumer.sink.dedup import LastSentStore
from consumer.sink.recompute import SourceDatabase

__all__ = ["CaseRunner", "default_cases_dir"]

Report = Callable[[CaseResult], None]
Observe = Callable[[], Any]


def default_cases_dir(definition_path: Path) -> Path:
    return definition_path.with_name(definition_path.stem + ".cases")


@dataclass(frozen=True, slots=True)
class CaseRunner:
    definition: SyncDefinition
    servers: Servers
    # The suite names its tenants: only those exist in Reach. Otherwise each is created.
    fixed_tenants: bool
    # The whole pipeline (Debezium, Kafka, router, syncer) instead of the sink called directly.
    e2e: bool = False
    state_dir: Path = Path()

    async def run_all(self, cases: Sequence[Case], report: Report) -> list[CaseResult]:
        results = []
        for number, case in enumerate(cases, 1):
            started = time.monotonic()
            try:
                failures = await self._case(number, case)
                result = CaseResult(case.name, case.path, time.monotonic() - started, failures)
            except SyncError as exc:
                result = CaseResult(
                    case.name, case.path, time.monotonic() - started, error=str(exc)
                )
            report(result)
            results.append(result)
        return results

    def _aimed(self, number: int) -> SyncDefinition:
        database = self.servers.new_database(f"case_{number}")
        endpoints = self.servers.endpoints(database, f"reach-sync-test:case-{number}")
        definition = aimed(self.definition, endpoints)
        return for_pipeline(definition, f"case{number}") if self.e2e else definition

    async def _case(self, number: int, case: Case) -> list[str]:
        definition = self._aimed(number)
        token = credential_for(definition.destination.auth, time.time).bearer()
        admin_headers = {"Authorization": f"Bearer {self.servers.admin_token}"}
        async with httpx.AsyncClient(
            base_url=self.servers.reach_url, headers={"Authorization": f"Bearer {token}"}
        ) as partner:
            with httpx.Client(base_url=self.servers.reach_url, headers=admin_headers) as admin:
                await asyncio.to_thread(lambda: admin.post("/_admin/reset").raise_for_status())
                created: set[str] = set()

                async def ensure_tenants(tenants: Sequence[str]) -> None:
                    if self.fixed_tenants:
                        return
                    new = [t for t in tenants if t not in created]
                    await create_tenants(partner, new)
                    created.update(new)

                if self.e2e:
                    pipeline = PipelineCase(
                        definition, f"case{number}", self.state_dir / f"case{number}", admin
                    )
                    with pipeline.running():
                        return await self._pipeline_steps(
                            definition, case, pipeline, ensure_tenants
                        )
                return await self._direct(definition, case, ensure_tenants)

    async def _direct(
        self, definition: SyncDefinition, case: Case, ensure_tenants: Callable[[Sequence[str]], Any]
    ) -> list[str]:
        db = SourceDatabase(definition.source.database)
        redis = definition.redis
        last_sent = LastSentStore(redis.url.get_secret_value(), redis.key_prefix)
        await db.open()
        try:
            async with ReachClient(definition.destination) as client:
                run = DirectRun(
                    definition,
                    client=client,
                    db=db,
                    last_sent=last_sent,
                    ensure_tenants=ensure_tenants,
                )
                return await self._steps(definition, case, run.step)
        finally:
            await db.close()
            await last_sent.close()

    async def _pipeline_steps(
        self,
        definition: SyncDefinition,
        case: Case,
        pipeline: PipelineCase,
        ensure_tenants: Callable[[Sequence[str]], Any],
    ) -> list[str]:
        positions: dict[str, dict[int, int]] = {}

        async def before_commit(conn: psycopg.AsyncConnection[Any]) -> None:
            # Reach must know a step's tenants before the pipeline can send their records.
            await ensure_tenants(sorted(await tenants_in(conn, definition)))
            positions.update(pipeline.positions())

        async def observe() -> Observations:
            return await settle(pipeline, positions)

        return await self._steps(definition, case, observe, before_commit)

    async def _steps(
        self,
        definition: SyncDefinition,
        case: Case,
        observe: Callable[[], Any],
        before_commit: Callable[[psycopg.AsyncConnection[Any]], Any] | None = None,
    ) -> list[str]:
        # The case's own writes; everything reach-sync does reads, as in production.
        conn = await psycopg.AsyncConnection.connect(
            definition.source.database.dsn.get_secret_value(), autocommit=True
        )
        try:
            for index, step in enumerate(case.steps):
                try:
                    await apply_step(conn, step, before_commit)
                except psycopg.Error as exc:
                    # The case's own SQL or rows: its error, not the definition's.
                    reason = (exc.diag.message_primary or str(exc)).strip()
                    raise ConfigurationError(
                        f"step {index + 1}: the database refuses its changes: {reason}"
                    ) from exc
                observed: Observations = await observe()
                problems = differences(definition, step, observed, e2e=self.e2e)
                if problems:
                    where = f"step {index + 1} of {len(case.steps)}" if len(case.steps) > 1 else ""
                    return [where, *problems] if where else problems
            return []
        finally:
            await conn.close()
