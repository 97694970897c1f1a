"""The FastAPI application and ``run_service``, which ``tuneguard serve CONFIG`` calls.

The API process answers requests, keeps the metadata and runs the scheduler thread; every task that loads a
model for training or judging runs in a worker process (``worker.py``) or, with ``workers.type: ray``, a
fine-tuning job runs as a Ray task (``ray_worker.py``). Only chat completions load models here.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tuneguard.serve import routes_files, routes_jobs, routes_models
from tuneguard.serve.auth import KeyRing
from tuneguard.serve.deps import Service
from tuneguard.serve.engine import atomic_write, check_policy
from tuneguard.serve.errors import install_error_handlers
from tuneguard.serve.inference import ChatModels
from tuneguard.serve.policy import ServePolicy
from tuneguard.serve.scheduler import Scheduler
from tuneguard.serve.store import ServiceStore
from tuneguard.serve.worker import LocalWorker, Worker

logger = logging.getLogger("tuneguard.serve")
SERVICE_FILE = "service.json"


def create_app(policy: ServePolicy, keys: KeyRing, store: ServiceStore, screening: Worker, training: Worker) -> FastAPI:
    """The service's app; its lifespan starts the scheduler on the workers and stops them (a running job is
    queued again at the next start and resumes from its last checkpoint)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler = Scheduler(store, screening, training)
        scheduler.start()
        chat = ChatModels(policy.finetune.template, policy.inference.max_loaded_models)
        app.state.service = Service(policy, keys, store, scheduler, chat)
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="tuneguard serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    for module in (routes_files, routes_jobs, routes_models):
        app.include_router(module.router)

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def make_workers(policy: ServePolicy, store: ServiceStore) -> tuple[Worker, Worker]:
    """The screening worker (a process on this machine) and the training worker of the policy's backend: local
    processes, one per device, or Ray tasks (which connects to Ray now: an unreachable cluster is a ConfigError)."""
    policy_file = store.root / "run" / "policy.json"
    # What the policy file said (unset keys stay unset, so the worker validates it exactly as the service did)
    atomic_write(policy_file, policy.model_dump_json(exclude_unset=True).encode("utf-8"))
    workers, logs, threads = policy.workers, store.root / "logs", policy.workers.torch_threads
    screening = LocalWorker("screening", [workers.screening_device or workers.devices[0]], policy_file, logs, threads)
    if workers.type == "ray":
        from tuneguard.serve.ray_worker import RayWorker

        assert workers.ray is not None  # the policy fills it in
        return screening, RayWorker(workers.ray, policy, logs)
    return screening, LocalWorker("training", workers.devices, policy_file, logs, threads)


def run_service(policy: ServePolicy) -> None:
    """Check the policy, start the workers, bind the port (0: a free one), write ``<data_dir>/service.json`` and
    serve until stopped."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = KeyRing.load(policy.keys_file)
    check_policy(policy)
    if policy.workers.torch_threads:
        import torch

        torch.set_num_threads(policy.workers.torch_threads)
    store = ServiceStore(policy.data_dir)
    screening, training = make_workers(policy, store)
    listener = socket.create_server((policy.host, policy.port))
    host, port = listener.getsockname()[:2]
    url = f"http://{host}:{port}/v1"
    info = {"pid": os.getpid(), "url": url, "data_dir": str(store.root), "tenants": sorted(keys.tenants)}
    atomic_write(store.root / SERVICE_FILE, json.dumps(info, indent=2).encode("utf-8"))
    logger.info("tuneguard serve: %s (%d tenants, data in %s)", url, len(keys.tenants), store.root)
    app = create_app(policy, keys, store, screening, training)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info"))
    server.run(sockets=[listener])
