"""Mapping a function over independent shards with Prefect's Dask task runner.

One mechanism for every per-shard map: a Prefect flow whose task runner is a Dask cluster, either
a temporary ``LocalCluster`` of worker processes on this machine (bound to 127.0.0.1) or an
existing cluster given by its scheduler address. Each item is one Prefect task run, so the flow's
runs show which shard ran where and which one failed. Results come back in the items' order,
whatever order the workers finish in, so a map gives the same outputs on any cluster.

Workers of an existing cluster must see the project folder at the same path (a shared
filesystem) and reach the Prefect API (``PREFECT_API_URL``); without one, a temporary local
Prefect server runs for as long as the map does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

Item = TypeVar("Item")
log = logging.getLogger(__name__)


def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


class _Here:
    """A value only this process uses (a progress callback): pickled, as the flow run's context
    is for every task, it becomes None, so it may hold what cannot cross to a worker (a stream)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[type[_Here], tuple[None]]:
        return _Here, (None,)


def _drain_prefect_workers() -> None:
    """Send the logs and events still queued in this process while the server is up: a server
    stopped under them would leave their workers retrying at exit."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for result in (APILogWorker.drain_all(), EventsWorker.drain_all()):
            if inspect.isawaitable(result):
                await result

    run_coro_as_sync(drain())


@contextmanager
def prefect_api() -> Iterator[None]:
    """A Prefect API every worker reaches: the configured one, or a temporary local server whose
    address goes into the settings the tasks carry (otherwise each worker process would start a
    server of its own), stopped when the map is done."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # for worker processes, which read their settings at start
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield
            finally:
                _drain_prefect_workers()
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        server.stop()


def task_runner(workers: int, address: str | None) -> Any:
    """Dask task runner on the cluster at ``address``, or on a temporary local one of ``workers``
    single-threaded processes (torch threads inside them are the caller's choice)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": None,
                                          "silence_logs": logging.ERROR})


def map_shards(
    fn: Callable[[Item], Any],
    items: Sequence[Item],
    workers: int,
    address: str | None = None,
    on_done: Callable[[Item], None] | None = None,
    name: str = "map-shards",
) -> list[Any]:
    """``[fn(item) for item in items]`` as Prefect tasks on a Dask cluster; ``on_done(item)`` runs
    here as each result arrives, in order. The first failure is raised once earlier items are done."""
    from prefect import flow, task, unmapped
    from prefect.cache_policies import NO_CACHE

    shard_task = task(_apply, name=f"{name}-shard", cache_policy=NO_CACHE, persist_result=False)

    callback = _Here(on_done)

    def run() -> list[Any]:
        futures = shard_task.map(unmapped(fn), list(items))
        results = []
        for item, future in zip(items, futures, strict=True):
            results.append(future.result())
            if callback.value:
                callback.value(item)
        return results

    with prefect_api():
        mapped = flow(run, name=name, task_runner=task_runner(workers, address), persist_result=False, log_prints=False)
        return mapped()
