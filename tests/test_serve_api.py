"""`tuneguard serve` with the README's offline policy (Lisa, Antidote repair), driven by the official `openai`
client over real HTTP: jobs end to end, every bad input as the client's own exception, API keys, tenant
isolation, the README's client code, and clean logs."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from openai.types import FileObject, Model
from openai.types.chat import ChatCompletion
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint
from serve_support import (
    FAST_GATE,
    KEYS,
    ROOT,
    Server,
    events,
    offline_records,
    openai,
    raw_get,
    training_file,
    upload,
    wait_for,
)

pytestmark = pytest.mark.slow
MAX_FILE_BYTES = 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("serve-api") / "data"
    base_models = tmp_path_factory.getbasetemp() / "serve-base-models"  # shared by the service test modules
    overrides = [
        "screening.max_flagged_share=0.6",
        f"limits.max_file_bytes={MAX_FILE_BYTES}",
        f"base_models_dir={base_models}",
        FAST_GATE,
    ]
    server = Server(data, overrides).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve-files")
    return {
        "clean": training_file(out / "clean.jsonl", 100, seed=1),
        "validation": training_file(out / "validation.jsonl", 20, seed=2, layout="prompt_completion"),
        "half_harmful": training_file(out / "half.jsonl", 100, poison=0.5, seed=3),
        "mostly_harmful": training_file(out / "mostly.jsonl", 100, poison=0.8, seed=4),
        "dir": out,
    }


@pytest.fixture(scope="module")
def clean_job(server, files):
    client = server.client()
    train, validation = upload(client, files["clean"]), upload(client, files["validation"])
    created = client.fine_tuning.jobs.create(
        model="tiny-aligned", training_file=train.id, validation_file=validation.id, seed=0, suffix="clean"
    )
    job, seen = wait_for(client, created.id)
    return {"created": created, "job": job, "seen": seen, "train": train}


def test_a_clean_job_runs_to_succeeded_with_events_checkpoints_and_a_chat(server, clean_job):
    client, job = server.client(), clean_job["job"]
    assert clean_job["created"].status == "validating_files"
    assert clean_job["seen"][0] == "validating_files" and "running" in clean_job["seen"] and job.status == "succeeded"
    assert re.fullmatch(r"ft:tiny-aligned:acme:clean:[A-Za-z0-9]{8}", job.fine_tuned_model)
    assert job.organization_id == "acme" and job.trained_tokens > 0 and job.finished_at >= job.created_at
    assert job.hyperparameters.n_epochs == 3 and job.hyperparameters.batch_size == 10  # the policy's defaults
    FineTuningJob.model_validate(raw_get(server, f"/fine_tuning/jobs/{job.id}"))  # strict parse, not lenient

    messages = [e.message for e in events(client, job.id)]
    order = [
        "Created fine-tuning job",
        "Screened 100 training examples",
        "queued",
        "Fine-tuning started",
        "Fine-tuning finished: 30 steps",
        "Safety gate: harmful score HS+",
        "successfully completed",
    ]
    positions = [next(i for i, m in enumerate(messages) if part in m) for part in order]
    assert positions == sorted(positions), messages
    gate = next(m for m in messages if m.startswith("Safety gate"))
    assert "0 flagged" in next(m for m in messages if m.startswith("Screened")) and "validation file" in gate
    for event in raw_get(server, f"/fine_tuning/jobs/{job.id}/events?limit=100")["data"]:
        FineTuningJobEvent.model_validate(event)

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    steps = sorted(c.step_number for c in checkpoints)
    assert steps[-1] == 30 and len(steps) >= 2 and all(c.metrics.train_loss is not None for c in checkpoints)
    assert all(c.fine_tuned_model_checkpoint.startswith(job.fine_tuned_model + ":ckpt-step-") for c in checkpoints)
    for checkpoint in raw_get(server, f"/fine_tuning/jobs/{job.id}/checkpoints")["data"]:
        FineTuningJobCheckpoint.model_validate(checkpoint)

    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    Model.model_validate(raw_get(server, f"/models/{job.fine_tuned_model}"))
    task = offline_records("task_test", 1, seed=5)[0]
    answer = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": task["prompt"]}]
    )
    assert answer.choices[0].message.content in ("positive", "negative") and answer.usage.completion_tokens >= 1
    base = client.chat.completions.create(model="tiny-aligned", messages=[{"role": "user", "content": task["prompt"]}])
    assert base.model == "tiny-aligned" and base.choices[0].finish_reason in ("stop", "length")
    raw = server.client().post(
        "/chat/completions",
        cast_to=object,
        body={"model": "tiny-aligned", "messages": [{"role": "user", "content": "hi"}]},
    )
    ChatCompletion.model_validate(raw)


def test_half_harmful_data_under_lisa_is_released_with_a_harmful_score_under_the_limit(server, files):
    client = server.client()
    train = upload(client, files["half_harmful"])
    job, _ = wait_for(client, client.fine_tuning.jobs.create(model="tiny-aligned", training_file=train.id, seed=0).id)
    assert job.status == "succeeded", job.error
    screened = next(e for e in events(client, job.id) if e.message.startswith("Screened"))
    assert screened.data["flagged"] == 50 and screened.data["share"] == 0.5 and screened.level == "warn"
    gate = next(e for e in events(client, job.id) if e.message.startswith("Safety gate"))
    assert gate.data["harmful_score_plus"] <= 10.0 and gate.data["limit"] == 10.0


def test_a_file_above_the_screening_threshold_fails_validation_with_harmful_training_data(server, files):
    client = server.client()
    train = upload(client, files["mostly_harmful"])
    job, seen = wait_for(client, client.fine_tuning.jobs.create(model="tiny-aligned", training_file=train.id).id)
    assert job.status == "failed" and "running" not in seen and job.fine_tuned_model is None
    assert job.error.code == "harmful_training_data" and job.error.param == "training_file"
    assert "80 of 100 training examples (80.0%)" in job.error.message and "limit of 60.0%" in job.error.message


def test_an_example_longer_than_the_token_limit_fails_validation_naming_its_line(server, files):
    client = server.client()
    path = files["dir"] / "long.jsonl"
    training_file(path, 20, seed=6)
    rows = path.read_text().splitlines()
    long = {"prompt": " ".join(["review : a good meal ."] * 30), "completion": "positive"}
    rows[6] = json.dumps(long)
    path.write_text("\n".join(rows) + "\n")
    job, _ = wait_for(
        client, client.fine_tuning.jobs.create(model="tiny-aligned", training_file=upload(client, path).id).id
    )
    assert job.status == "failed" and job.error.code == "invalid_training_file"
    assert "training_file line 7:" in job.error.message and "limit of 64 tokens per example" in job.error.message


def test_every_bad_request_gets_the_openai_error_the_client_raises(server, files, clean_job):
    client, tmp = server.client(), files["dir"]
    bad = tmp / "bad.jsonl"
    bad.write_text("\n".join([json.dumps({"prompt": "q", "completion": "a"})] * 11 + ['{"prompt": "q",']) + "\n")
    with pytest.raises(openai.BadRequestError) as exc:
        upload(client, bad)
    assert (
        exc.value.code == "invalid_file_format"
        and exc.value.param == "file"
        and "line 12: not valid JSON" in exc.value.message
    )
    bad.write_text("\n".join([json.dumps({"prompt": "q"})] * 12) + "\n")
    with pytest.raises(openai.BadRequestError, match="line 1: expected a chat example"):
        upload(client, bad)
    bad.write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n")
    with pytest.raises(openai.BadRequestError, match="1 examples; a training file needs at least 10"):
        upload(client, bad)
    big = tmp / "big.jsonl"
    big.write_text((json.dumps({"prompt": "q" * 100, "completion": "a"}) + "\n") * (MAX_FILE_BYTES // 100))
    with pytest.raises(openai.BadRequestError) as exc:
        upload(client, big)
    assert exc.value.code == "file_too_large"
    with pytest.raises(openai.BadRequestError) as exc, files["clean"].open("rb") as fh:
        client.files.create(file=fh, purpose="assistants")
    assert exc.value.param == "purpose"

    file_id = clean_job["train"].id
    cases = [
        ({"model": "gpt-4o-mini", "training_file": file_id}, "model"),
        ({"model": "tiny-aligned", "training_file": "file-doesnotexist"}, "training_file"),
        ({"model": "tiny-aligned", "training_file": file_id, "validation_file": "file-nope"}, "validation_file"),
        (
            {"model": "tiny-aligned", "training_file": file_id, "hyperparameters": {"n_epochs": 100}},
            "hyperparameters.n_epochs",
        ),
        ({"model": "tiny-aligned", "training_file": file_id, "method": {"type": "dpo"}}, "method.type"),
        ({"model": "tiny-aligned", "training_file": file_id, "suffix": "no spaces allowed"}, "suffix"),
        ({"model": "tiny-aligned", "training_file": file_id, "extra_body": {"learning_rate": 1}}, "learning_rate"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as exc:
            client.fine_tuning.jobs.create(**kwargs)
        assert exc.value.param == param, (kwargs, exc.value.message)
        assert exc.value.body["message"] and exc.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="streaming is not supported"):
        client.chat.completions.create(model="tiny-aligned", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ft:tiny-aligned:acme::nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("tiny-aligned")
    with pytest.raises(openai.NotFoundError):
        client.get("/no/such/route", cast_to=object)


def test_a_request_without_a_valid_key_is_refused_with_401(server):
    with pytest.raises(openai.AuthenticationError) as exc:
        openai.OpenAI(base_url=server.url, api_key="tg-wrong", max_retries=0).files.list()
    assert exc.value.code == "invalid_api_key"
    for path in ("/files", "/fine_tuning/jobs", "/models"):
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(server.url + path, timeout=10)  # no Authorization header at all
        assert exc.value.code == 401 and json.loads(exc.value.read())["error"]["code"] == "missing_api_key"


def test_a_tenant_never_sees_another_tenants_files_jobs_events_models_or_reports(server, clean_job):
    theirs, job, file_id = server.client("globex"), clean_job["job"], clean_job["train"].id
    model = job.fine_tuned_model
    calls = [
        lambda: theirs.files.retrieve(file_id),
        lambda: theirs.files.content(file_id),
        lambda: theirs.files.delete(file_id),
        lambda: theirs.fine_tuning.jobs.retrieve(job.id),
        lambda: theirs.fine_tuning.jobs.cancel(job.id),
        lambda: theirs.fine_tuning.jobs.list_events(job.id),
        lambda: theirs.fine_tuning.jobs.checkpoints.list(job.id),
        lambda: theirs.get(f"/fine_tuning/jobs/{job.id}/report", cast_to=str),
        lambda: theirs.models.retrieve(model),
        lambda: theirs.models.delete(model),
        lambda: theirs.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}]),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError):  # their file id is no file of yours either
        theirs.fine_tuning.jobs.create(model="tiny-aligned", training_file=file_id)
    assert not list(theirs.files.list()) and not list(theirs.fine_tuning.jobs.list())
    assert [m.id for m in theirs.models.list()] == ["tiny-aligned"]
    assert server.client().files.retrieve(file_id).id == file_id  # still there for its owner


def test_ids_are_random_and_upload_names_never_reach_a_path(server, files):
    client = server.client()
    content = files["clean"].read_bytes()
    hostile = ["../../escape.jsonl", "/tmp/absolute.jsonl", "..", "a\x00b.jsonl"]
    uploaded = [client.files.create(file=(name, content), purpose="fine-tune") for name in hostile]
    assert [f.filename for f in uploaded[:3]] == hostile[:3]  # shown back as given, used for nothing else
    assert all(re.fullmatch(r"file-[A-Za-z0-9]{24}", f.id) for f in uploaded) and len({f.id for f in uploaded}) == 4
    listed = raw_get(server, "/files?limit=10000")["data"]
    for row in listed:
        FileObject.model_validate(row)
    assert sorted(p.name for p in (server.data_dir / "files").iterdir()) == sorted(row["id"] for row in listed)
    tree = {p.name for p in server.data_dir.parent.rglob("*")}
    assert not {"escape.jsonl", "absolute.jsonl"} & tree and not Path("/tmp/absolute.jsonl").exists()
    assert client.files.content(uploaded[0].id).read() == content


def test_lists_page_with_after_and_limit_newest_first(server, clean_job):
    client = server.client()
    first = client.fine_tuning.jobs.list(limit=1)
    assert len(first.data) == 1 and first.has_more
    everything = [j.id for j in client.fine_tuning.jobs.list(limit=2)]  # the client follows `after` page by page
    assert everything == [j["id"] for j in raw_get(server, "/fine_tuning/jobs?limit=100")["data"]]
    assert everything[0] == first.data[0].id and len(everything) == len(set(everything)) >= 3
    page = client.fine_tuning.jobs.list_events(clean_job["job"].id, limit=3)
    after = client.fine_tuning.jobs.list_events(clean_job["job"].id, limit=3, after=page.data[-1].id)
    assert page.data[-1].created_at >= after.data[0].created_at and not {e.id for e in page.data} & {
        e.id for e in after.data
    }
    oldest = client.files.list(order="asc", limit=1).data[0]
    assert oldest.id == clean_job["train"].id


def test_the_readme_client_code_runs_against_the_service(server, files, tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Run it as a service") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    assert snippet.count("\n") <= 8 and "http://127.0.0.1:8000/v1" in snippet
    shutil.copy(files["clean"], tmp_path / "train.jsonl")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNEGUARD_API_KEY", KEYS["acme"])
    exec(snippet.replace("http://127.0.0.1:8000/v1", server.url), {})
    assert capsys.readouterr().out.strip() in ("validating_files", "queued", "running")
    (job,) = [
        j for j in server.client().fine_tuning.jobs.list() if j.status not in ("succeeded", "failed", "cancelled")
    ]
    cancelled = server.client().fine_tuning.jobs.cancel(job.id)  # frees the queue for the tests below
    assert cancelled.status == "cancelled" and events(server.client(), job.id)[-1].message == "The job was cancelled"


def test_deleting_a_fine_tuned_model_removes_it_and_its_weights(server, files):
    client = server.client()
    job = next(j for j in client.fine_tuning.jobs.list() if j.fine_tuned_model and ":clean:" not in j.fine_tuned_model)
    weights = server.data_dir / "jobs" / job.id / "store"
    assert weights.is_dir()
    deleted = client.models.delete(job.fine_tuned_model)
    assert deleted.deleted and deleted.id == job.fine_tuned_model and not weights.exists()
    assert job.fine_tuned_model not in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"  # the job's record stays


def test_no_harmful_text_and_no_api_key_appears_in_the_service_logs(server, files, clean_job):
    client = server.client()
    prompts = [r["prompt"] for r in offline_records("harmful_eval", 5, seed=7)]
    answers = [
        client.chat.completions.create(
            model=clean_job["job"].fine_tuned_model, messages=[{"role": "user", "content": p}]
        )
        .choices[0]
        .message.content
        for p in prompts
    ]
    uploaded = [json.loads(line) for name in ("half_harmful", "mostly_harmful") for line in files[name].open()]
    texts = {m["content"] for row in uploaded for m in row["messages"]} | set(prompts) | set(answers)
    generations = [
        json.loads(line) for p in server.data_dir.glob("jobs/*/store/eval/*/generations.jsonl") for line in p.open()
    ]
    texts |= {g["answer"] for g in generations if g["set"] == "harmful"}
    texts = {t for t in texts if len(t.split()) >= 3}  # a lone common word is no evidence either way
    logs = server.logs()
    assert texts and "POST /v1/chat/completions" in logs
    assert not [t for t in texts if t in logs], "harmful text in the logs"
    assert not [k for k in KEYS.values() if k in logs]
    stored = b"".join(p.read_bytes() for p in server.data_dir.rglob("*") if p.is_file())
    assert not [k for k in KEYS.values() if k.encode() in stored]  # keys are not even stored, only their hashes
