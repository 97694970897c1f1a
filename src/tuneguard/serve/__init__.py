"""``tuneguard serve``: a defended fine-tuning service that speaks the OpenAI fine-tuning API.

Users fine-tune with the official ``openai`` client (files, fine-tuning jobs, models, chat completions); every
job is screened, trained with the provider's defense and released only through the safety gate, as the
provider's policy (``policy.py``) says. Needs the ``serve`` extra: ``pip install 'tuneguard[serve]'``.

Modules: ``app`` (FastAPI app, ``run_service``), ``routes_*`` (the API), ``auth`` (hashed per-tenant keys),
``store`` (SQLite metadata and files), ``scheduler`` (statuses, FIFO queue), ``worker`` (worker interface, local
processes), ``ray_worker`` (fine-tuning jobs as Ray tasks), ``runner`` (a worker process), ``channel`` (worker ->
service messages), ``report`` (the safety report), ``engine`` (the one adapter to the tuneguard library).
"""

SERVE_MODULES = ("fastapi", "uvicorn", "python_multipart")
