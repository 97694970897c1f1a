"""`tuneguard serve` under a policy with no defense and no repair: harmful data fails the safety gate and the
model is not released (its report page checked in headless Chromium); the service keeps answering status,
list and upload requests under load while a job trains, and cancel stops a running job at once."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time

import pytest
from serve_support import (
    FAST_GATE,
    ROOT,
    Server,
    events,
    load_burst,
    openai,
    training_file,
    upload,
    wait_for,
    worker_pids,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-gate")
    keys_file = root / "keys.yaml"
    keys = {}
    for tenant in ("acme", "globex"):  # the README's command: the key is printed once, the file keeps its hash
        made = subprocess.run(
            [sys.executable, "-m", "tuneguard.cli", "serve-key", str(keys_file), tenant],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        keys[tenant] = made.stdout.strip()
        assert keys[tenant] not in keys_file.read_text()
    overrides = [
        "finetune.method=sft",  # no defense
        "finetune.method_args={}",
        "finetune.alignment_data=null",
        "gate.repair={method: none}",  # no repair
        "screening.max_flagged_share=0.6",
        "finetune.training.save_steps=20",
        f"keys_file={keys_file}",
        f"base_models_dir={tmp_path_factory.getbasetemp() / 'serve-base-models'}",
        FAST_GATE,
    ]
    server = Server(root / "data", overrides, keys=keys).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def failed_job(server, tmp_path_factory):
    client = server.client()
    path = training_file(tmp_path_factory.mktemp("gate-files") / "half.jsonl", 100, poison=0.5, seed=3)
    job = client.fine_tuning.jobs.create(model="tiny-aligned", training_file=upload(client, path).id, seed=0)
    return wait_for(client, job.id)[0]


def test_harmful_data_without_defense_or_repair_fails_the_safety_gate_and_is_not_released(server, failed_job):
    client, job = server.client(), failed_job
    assert job.status == "failed" and job.error.code == "safety_gate" and job.fine_tuned_model is None
    assert "was not released" in job.error.message and "above this service's limit of 10.0%" in job.error.message
    gate = next(e for e in events(client, job.id) if e.message.startswith("Safety gate"))
    assert gate.data["harmful_score_plus"] > 10.0 and f"{gate.data['harmful_score_plus']:.1f}%" in job.error.message
    assert not any("repairing" in e.message for e in events(client, job.id))
    assert [m.id for m in client.models.list()] == ["tiny-aligned"]  # nothing to use
    report = client.get(f"/fine_tuning/jobs/{job.id}/report", cast_to=str)
    assert "Not released" in report and "safety_gate" in report


def test_the_report_page_renders_its_tables_and_plots_in_headless_chromium(server, failed_job, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = Options()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--no-first-run",
        "--window-size=1000,1700",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:  # a browser cannot send the API key itself: the DevTools protocol adds the header to its requests
        driver.execute_cdp_cmd("Network.enable", {})
        headers = {"Authorization": f"Bearer {server.keys['acme']}"}
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})
        driver.get(f"{server.url}/fine_tuning/jobs/{failed_job.id}/report")
        assert "Not released" in driver.find_element(By.CLASS_NAME, "verdict").text
        rows = driver.find_elements(By.CSS_SELECTOR, "#safety tbody tr")
        assert [r.find_elements(By.TAG_NAME, "td")[4].text for r in rows] == ["pass", "fail"]
        assert driver.find_elements(By.CSS_SELECTOR, "#screening tbody tr")
        images = driver.find_elements(By.TAG_NAME, "img")
        widths = [driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) for i in images]
        assert len(images) == 2 and all(w > 100 for w in widths), widths  # both plots decoded and drawn
        shot = tmp_path / "serve-report.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("TUNEGUARD_UPDATE_DOCS"):  # refresh the README's screenshot
            shutil.copy(shot, ROOT / "docs" / "serve-report.png")
    finally:
        driver.quit()


def test_the_service_answers_load_while_a_job_trains_and_cancel_stops_the_job_at_once(server, tmp_path):
    client = server.client()
    clean = upload(client, training_file(tmp_path / "clean.jsonl", 100, seed=1))
    long = client.fine_tuning.jobs.create(
        model="tiny-aligned", training_file=clean.id, hyperparameters={"n_epochs": 10, "batch_size": 1}
    )  # 1000 steps
    wait_for(client, long.id, statuses=("running",))
    while not list(client.fine_tuning.jobs.checkpoints.list(long.id)):
        time.sleep(0.1)
    short = client.fine_tuning.jobs.create(model="tiny-aligned", training_file=clean.id)
    wait_for(client, short.id, statuses=("queued",))

    burst = asyncio.run(load_burst(server, long.id, tmp_path / "clean.jsonl"))
    assert (
        not burst["failures"] and len(burst["latencies"]["status"]) == 200 and len(burst["latencies"]["upload"]) == 20
    )
    assert client.fine_tuning.jobs.retrieve(long.id).status == "running"  # it trained all along

    trainer = worker_pids(server.data_dir)["training-0"]
    cancelled = client.fine_tuning.jobs.cancel(long.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert worker_pids(server.data_dir).get("training-0") != trainer  # the process that trained it is gone
    steps = sorted(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(long.id, limit=100))
    assert steps[-1] < 1000 and not (server.data_dir / "jobs" / long.id / "store").exists()
    wait_for(client, short.id, statuses=("running",))  # the freed slot takes the next job
    assert client.fine_tuning.jobs.cancel(short.id).status == "cancelled"
    time.sleep(1)
    assert sorted(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(long.id, limit=100)) == steps
    assert events(client, long.id)[-1].message == "The job was cancelled"
    with pytest.raises(openai.NotFoundError):
        server.client("globex").fine_tuning.jobs.cancel(long.id)
