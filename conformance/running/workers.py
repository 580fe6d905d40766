"""Where ``--jobs`` worker processes come from: a fork server that imported the runner and the
model libraries once. Nothing here imports torch, so that the command line can start the
server before it imports torch itself (``conformance/__main__.py``): both imports, seconds each,
then run on two cores at once."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context

__all__ = ["WORKER_MODULES", "start_worker_server", "worker_context"]

#: What every worker imports: loaded once by the fork server the workers are forked from (the
#: model libraries of the built-in zoos too: each worker would otherwise import them for its
#: first model, seconds that no core can share).
WORKER_MODULES = ("conformance.running.runner", "torchvision.models.feature_extraction", "timm")


def worker_context() -> multiprocessing.context.BaseContext:
    """Where worker processes come from: forked from a fork server, a process that imported
    :data:`WORKER_MODULES` and ran nothing else (no tensor op, no thread, no CUDA), so each
    worker starts clean without importing torch again; spawned where there is no fork server."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_MODULES))
    return context


def start_worker_server() -> None:
    """Start the fork server now (once per process), so that it imports the runner while this
    process still imports and resolves the models."""
    if worker_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()
