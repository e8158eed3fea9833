"""The dashboard at /ui/ in a real headless Chromium (Debian's), driven by Playwright, over
a real gateway and two real neurons serving tiny GGUF models."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import openai
import pytest
import requests
from playwright.sync_api import Error as PlaywrightError

from cortex.gateway.config import EntitlementsSection, KeyEntry, ModelEntry
from cortex.neuron.config import HubConfig
from cortex.testing.fake_hub import FakeHub
from cortex.testing.tiny_gguf import SCRIPT_HELLO, build_tiny_gguf
from cortex.testing.waiting import wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ADMIN = "admin-key-for-the-test"
# A second copy for a reader (not CORTEX_*: the gateway would read it as a config key).
SCREENSHOT_COPY = os.environ.get("HELEXA_UI_SCREENSHOT", "")


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """Debian's chromium under Playwright's sync API (never `playwright install`)."""
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing: the browser tests did NOT run (make sysdeps)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")  # empty: no state from anywhere
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 1000})
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture
def page(chromium):
    page = chromium.new_page()
    page.errors = []  # console errors and uncaught exceptions: the test asserts none
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("dialog", lambda d: d.accept())  # every action asks first; the test says yes
    yield page
    page.close()


@pytest.fixture
def fleet(neuron_factory, gateway_factory):
    n1, n2 = neuron_factory(), neuron_factory()
    n1.load("file:tiny-hello")
    n2.load("file:tiny-think")
    models = [ModelEntry(id="tiny-hello", harness="llama_cpp", keep_alive="10m"),
              ModelEntry(id="tiny-think", harness="llama_cpp", pinned_on=["n2"]),
              ModelEntry(id="tiny-tool", harness="llama_cpp")]
    gw = gateway_factory({"n1": n1, "n2": n2}, models, aliases={"hello": "tiny-hello"},
                         admin_keys=[ADMIN])
    return gw, n1, n2


def cortex_status(gw_url: str) -> dict:
    exe = Path(sys.executable).parent / "cortex"
    out = subprocess.run([str(exe), "status", "--url", gw_url, "--json"], check=True,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CORTEX_ADMIN_KEY": ADMIN})
    return json.loads(out.stdout)


def test_the_dashboard_shows_the_fleet_and_acts_on_it(fleet, page, tmp_path):
    gw, n1, n2 = fleet
    page.goto(gw.url + "/ui/")
    # Both nodes, each with its model, as the neurons report them.
    page.locator('[data-node="n1"] tr[data-model="tiny-hello"][data-status="loaded"]').wait_for()
    page.locator('[data-node="n2"] tr[data-model="tiny-think"][data-status="loaded"]').wait_for()
    assert page.locator("#conn").inner_text() == "live"
    assert "2/2 nodes healthy" in page.locator("#health").inner_text()
    hello_row = page.locator('#models tr[data-model="tiny-hello"]')
    assert "hello" in hello_row.inner_text()  # the alias
    assert "n1: loaded" in hello_row.inner_text()
    assert "n2" in page.locator('#models tr[data-model="tiny-think"]').inner_text()  # pinned
    # Read-only without a key: no buttons at all.
    assert page.locator("[data-action]").count() == 0

    # The admin key, entered once: actions appear; it never shows in the URL.
    page.fill("#key", ADMIN)
    page.click("#key-use")
    page.locator('[data-node="n2"] [data-action="load"]').wait_for()
    assert page.locator("#viewer").inner_text() == "admin"
    assert ADMIN not in page.url

    # A load started from the page happens on the neuron.
    page.select_option('[data-node="n2"] select', "tiny-tool")
    page.click('[data-node="n2"] [data-action="load"]')
    wait_for(lambda: any(m["id"] == "file:tiny-tool" and m["status"] == "loaded"
                         for m in n2.get("/models").json()), "tiny-tool loaded on n2", 30)
    page.locator('[data-node="n2"] tr[data-model="tiny-tool"][data-status="loaded"]').wait_for()

    # The chart moves while a client sends requests (the fleet's rate, from the neurons).
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)
    stop = threading.Event()
    sent = []

    def traffic() -> None:
        while not stop.is_set():
            r = client.chat.completions.create(
                model="hello", messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
            sent.append(r.usage.completion_tokens)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        legend = page.locator('#legend li[data-model="tiny-hello"]')
        legend.wait_for()
        wait_for(lambda: float(legend.get_attribute("data-rps") or 0) > 0,
                 "a non-zero request rate on the chart", 30)
        assert float(legend.get_attribute("data-tps")) > 0
        assert "req/s" in legend.inner_text()
        # Finished requests show in this worker's list, by key id, never a key.
        page.locator('#requests tbody tr[data-seq] >> text="tiny-hello"').first.wait_for()
        assert "this gateway worker only" in page.locator("#worker").inner_text()
        # A picture for a reader while the traffic flows: a few seconds of the chart.
        wait_for(lambda: page.evaluate("window.cortexUi.series.length") >= 6,
                 "six chart points", 30)
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if SCREENSHOT_COPY:
            shutil.copy(shot, SCREENSHOT_COPY)
    finally:
        stop.set()
        sender.join(30)
    assert sent

    # A drain from the page shows in the admin API and on `cortex status`.
    page.click('[data-node="n1"] [data-action="drain"]')
    page.locator('[data-node="n1"] [data-action="undrain"]').wait_for()
    nodes = {n["name"]: n for n in cortex_status(gw.url)["nodes"]}
    assert nodes["n1"]["drained"] is True and nodes["n2"]["drained"] is False
    assert n1.get("/health").json()["drained"] is True
    page.locator('[data-node="n1"] .badge >> text="drained"').wait_for()
    page.screenshot(path=str(tmp_path / "dashboard-drained.png"), full_page=True)
    # Undrain again from the page: the node takes requests once more.
    page.click('[data-node="n1"] [data-action="undrain"]')
    page.locator('[data-node="n1"] [data-action="drain"]').wait_for()
    assert n1.get("/health").json()["drained"] is False
    assert page.errors == []


def test_the_dashboard_shows_each_neurons_session_cache(fleet, page):
    gw, _, _ = fleet
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)
    system = {"role": "system", "content": "the capital of France is Paris " * 30}
    for _ in range(2):  # the second turn reuses the first one's prompt
        client.chat.completions.create(model="hello", max_tokens=3,
                                       messages=[system, {"role": "user", "content": "Hi"}])
    page.goto(gw.url + "/ui/")
    line = page.locator('[data-node="n1"] [data-cache]')
    line.wait_for()
    assert "session cache · RAM" in line.inner_text() and "disk" in line.inner_text()
    wait_for(lambda: "% of prompt tokens reused" in line.inner_text()
             and "% reused" in page.locator("#cache-ratio").inner_text(),
             "the hit ratios from the neurons' counters", 30)
    # ...and how the requests were placed: one conversation (no session key), its prefix.
    wait_for(lambda: page.locator("#routing").inner_text() == "routed: prefix 2",
             "the routing reasons", 10)
    assert page.errors == []


def test_a_load_shows_its_progress_bar(neuron_factory, gateway_factory, page, tmp_path,
                                      small_hub_chunks):
    weights = build_tiny_gguf(tmp_path / "slow.Q8_0.gguf", script=SCRIPT_HELLO, ftype="Q8_0")
    with FakeHub({"acme/slow-GGUF": {"slow.Q8_0.gguf": weights}},
                 rate=weights.stat().st_size / 5) as hub:  # about 5 s on the wire
        n1 = neuron_factory(hf=HubConfig(endpoint=hub.url))
        gw = gateway_factory({"n1": n1}, [ModelEntry(id="acme/slow-GGUF", source="hf")],
                             admin_keys=[ADMIN])
        page.goto(gw.url + "/ui/")
        page.evaluate(f"sessionStorage.setItem('cortex.key', {json.dumps(ADMIN)})")
        page.reload()
        page.select_option('[data-node="n1"] select', "acme/slow-GGUF")
        page.click('[data-node="n1"] [data-action="load"]')
        row = page.locator('[data-node="n1"] tr[data-model="acme/slow-GGUF"]')
        bar = row.locator("[data-progress]")
        seen: list[float] = []

        def progressed() -> bool:
            if row.get_attribute("data-status", timeout=30_000) == "loaded":
                return True
            if bar.count():
                with contextlib.suppress(PlaywrightError):  # re-drawn meanwhile
                    seen.append(float(bar.get_attribute("data-progress", timeout=1000)))
                if seen and 0.3 < seen[-1] < 1 and not (tmp_path / "loading.png").exists():
                    shot = tmp_path / "loading.png"  # a picture of the bar on its way
                    page.screenshot(path=str(shot), full_page=True)
                    if SCREENSHOT_COPY:
                        shutil.copy(shot, SCREENSHOT_COPY.replace(".png", "-loading.png"))
            return False

        wait_for(progressed, "the load to finish on the page", 60)
        page.screenshot(path=str(tmp_path / "loaded.png"), full_page=True)
    fractions = sorted(set(seen))
    assert len(fractions) >= 2 and seen == sorted(seen), seen  # the bar grew, never shrank
    assert page.errors == []


def test_an_unload_from_the_page_frees_the_model(fleet, page):
    gw, n1, _ = fleet
    page.goto(gw.url + "/ui/")
    page.evaluate(f"sessionStorage.setItem('cortex.key', {json.dumps(ADMIN)})")
    page.reload()
    button = page.locator('[data-node="n1"] tr[data-model="tiny-hello"] [data-action="unload"]')
    button.click()
    wait_for(lambda: not any(m["id"] == "file:tiny-hello" and m["status"] == "loaded"
                             for m in n1.get("/models").json()), "tiny-hello gone from n1", 30)
    page.locator('[data-node="n1"] >> text="no models loaded"').wait_for()
    assert page.errors == []


def test_the_event_stream_carries_state_and_never_a_key(fleet):
    gw, _, _ = fleet
    with requests.get(gw.url + "/ui/events", stream=True, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["X-Accel-Buffering"] == "no"
        events = {}
        raw = b""
        for chunk in r.iter_content(chunk_size=None):
            raw += chunk
            for block in raw.split(b"\n\n"):
                if block.startswith(b"event: "):
                    name, _, data = block.partition(b"\ndata: ")
                    events[name[7:].decode()] = data
            if {"hello", "state", "tick"} <= set(events):
                break
    assert json.loads(events["hello"])["viewer"] == {"admin": True, "key_id": "admin"}
    state = json.loads(events["state"])
    assert [n["name"] for n in state["nodes"]] == ["n1", "n2"]
    assert ADMIN.encode() not in raw


def test_with_require_auth_the_data_needs_a_client_key(neuron_factory, gateway_factory, page):
    n1 = neuron_factory()
    n1.load("file:tiny-hello")
    ent = EntitlementsSection(require_auth=True,
                              keys=[KeyEntry(key="client-key-1", account_id="acme"),
                                    KeyEntry(key="client-key-2", account_id="other")])
    gw = gateway_factory({"n1": n1}, [ModelEntry(id="tiny-hello")], entitlements=ent,
                         admin_keys=[ADMIN])
    for key in ("client-key-1", "client-key-2"):
        openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0).chat.completions \
            .create(model="tiny-hello", messages=[{"role": "user", "content": "Hi"}])
    assert requests.get(gw.url + "/ui/", timeout=10).status_code == 200  # the page itself
    for path in ("/ui/api/state", "/ui/events"):
        r = requests.get(gw.url + path, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = requests.get(gw.url + "/ui/api/state", timeout=10,
                     headers={"Authorization": "Bearer client-key-1"})
    viewer = r.json()["hello"]["viewer"]
    assert viewer["admin"] is False and viewer["key_id"] and viewer["key_id"] != "client-key-1"
    # A client key sees its own finished requests only; the admin sees all of them.
    mine = {x["key_id"] for x in r.json()["hello"]["requests"]}
    assert mine == {viewer["key_id"]}
    r = requests.get(gw.url + "/ui/api/state", timeout=10,
                     headers={"Authorization": f"Bearer {ADMIN}"})
    everyone = {x["key_id"] for x in r.json()["hello"]["requests"]}
    assert len(everyone) == 2 and viewer["key_id"] in everyone
    assert "client-key" not in r.text
    # In the browser: the page asks for a key, then shows the fleet read-only.
    page.goto(gw.url + "/ui/")
    page.locator("#notice >> text=requires an API key").wait_for()
    page.fill("#key", "client-key-1")
    page.click("#key-use")
    page.locator('[data-node="n1"]').wait_for()
    assert "read-only" in page.locator("#viewer").inner_text()
    assert page.locator("[data-action]").count() == 0


def test_recent_requests_show_the_newest_few_and_more_on_demand(fleet, page):
    gw, _, _ = fleet
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)

    def ask() -> None:
        client.chat.completions.create(model="hello", max_tokens=2,
                                       messages=[{"role": "user", "content": "Hi"}])

    for _ in range(25):
        ask()
    page.goto(gw.url + "/ui/")
    rows = page.locator("#requests tbody tr[data-seq]")
    more, fewer = page.locator("#requests-more"), page.locator("#requests-fewer")
    wait_for(lambda: rows.count() == 10, "the ten newest requests", 30)
    assert page.locator("#requests-count").inner_text() == "the newest 10 of 25"
    seqs = [int(s) for s in rows.evaluate_all("rs => rs.map(r => r.dataset.seq)")]
    assert seqs == sorted(seqs, reverse=True) and seqs[0] == max(
        page.evaluate("window.cortexUi.requests.map(r => r.seq)"))
    assert more.inner_text() == "show 10 more" and not fewer.is_visible()

    more.click()
    assert rows.count() == 20 and more.inner_text() == "show 5 more" and fewer.is_visible()
    more.click()
    assert rows.count() == 25 and not more.is_visible()
    fewer.click()
    assert rows.count() == 10 and more.is_visible() and not fewer.is_visible()

    # A new request comes in live: still ten rows, the new one on top.
    ask()
    wait_for(lambda: page.locator("#requests-count").inner_text() == "the newest 10 of 26",
             "the new request on the page", 30)
    assert rows.count() == 10
    assert int(rows.first.get_attribute("data-seq")) > seqs[0]
    assert page.errors == []
