"""The pack inside a real ComfyUI (skipped unless COMFYUI_PATH points at a ComfyUI checkout).

Starts ``python main.py --cpu`` on a free loopback port with the pack linked into custom_nodes/,
checks that /object_info lists every node of the pack, queues every API-format workflow over HTTP
and checks that each one finishes with the files it should write.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMFY = os.environ.get("COMFYUI_PATH")
pytestmark = [pytest.mark.comfyui,
              pytest.mark.skipif(not COMFY, reason="COMFYUI_PATH is not set (path of a ComfyUI checkout)")]


def _ui_workflows() -> list[Path]:
    """The shipped UI-format workflows (example_workflows/, what the Templates browser lists)."""
    return sorted((ROOT / "example_workflows").glob("*.json"))


def _api_twin(wf: Path) -> Path:
    return next(p for p in (ROOT / "workflows" / "api" / wf.name, ROOT / "workflows" / "native" / "api" / wf.name)
                if p.is_file())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _post(url, body, timeout=30):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    comfy = Path(COMFY)
    assert (comfy / "main.py").is_file(), f"COMFYUI_PATH={COMFY} has no main.py"
    # the pack as installed there (e.g. custom_nodes/comfyui-dual-adapter linked to this checkout), else a link of
    # our own: never both, or ComfyUI would load the pack twice
    mine = [p for p in (comfy / "custom_nodes").iterdir() if p.resolve() == ROOT.resolve()]
    link = comfy / "custom_nodes" / f"zz_dual_adapter_test_{os.getpid()}"
    if mine:
        link = None
    else:
        link.symlink_to(ROOT, target_is_directory=True)
    module = mine[0].name if mine else link.name
    base = tmp_path_factory.mktemp("comfy")
    out, inp, tmp = base / "output", base / "input", base / "temp"
    for d in (out, inp, tmp):
        d.mkdir()
    args = ["--output-directory", str(out), "--input-directory", str(inp), "--temp-directory", str(tmp)]
    try:
        with comfy_server([sys.executable, "main.py"], args, comfy, base / "comfyui.log",
                          "/object_info/DualAdapterSampler") as url:
            yield {"url": url, "out": out, "log": base / "comfyui.log", "module": module}
    finally:
        if link is not None:
            link.unlink()


@contextlib.contextmanager
def comfy_server(cmd: list[str], args: list[str], cwd: Path, log_path: Path, probe: str, env: dict | None = None):
    """Run ``cmd + --cpu --listen 127.0.0.1 --port P --disable-auto-launch + args`` (ComfyUI's main.py) in ``cwd`` with
    its output in ``log_path``; yield its URL once ``probe`` answers (3 min at most); stop it afterwards."""
    port = _free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([*cmd, "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
                             *args], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                _get(url + probe)
                break
            except Exception:
                if proc.poll() is not None or time.time() - t0 > 180:
                    raise RuntimeError("ComfyUI did not start:\n" + log_path.read_text()[-3000:])
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run_prompt(url: str, prompt: dict, what: str, limit_s: float = 900) -> dict:
    """Queue an API-format ``prompt`` over HTTP, wait until it finishes (``limit_s`` at most) and return its history
    entry; fails on node errors at queueing."""
    code, r = _post(url + "/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
    assert code == 200 and not r.get("node_errors"), r
    pid = r["prompt_id"]
    t0 = time.time()
    while True:
        h = _get(f"{url}/history/{pid}")
        if pid in h and h[pid].get("status", {}).get("completed") is not None and \
                h[pid]["status"].get("status_str") in ("success", "error"):
            return h[pid]
        assert time.time() - t0 < limit_s, f"{what} did not finish in {limit_s:.0f} s"
        time.sleep(1)


def output_files(entry: dict, out: Path) -> list[Path]:
    """The files a finished prompt's history entry says it wrote in the output folder ``out``."""
    return [out / i.get("subfolder", "") / i["filename"]
            for o in entry["outputs"].values() for i in o.get("images", []) if i.get("type") == "output"]


def test_object_info_lists_every_node(server):
    sys.path.insert(0, str(ROOT))
    import nodes

    info = _get(server["url"] + "/object_info", timeout=60)
    missing = [n for n in nodes.NODE_CLASS_MAPPINGS if n not in info]
    assert not missing, f"ComfyUI does not list {missing}; log:\n{server['log'].read_text()[-3000:]}"
    failed = [l for l in server["log"].read_text().splitlines() if "IMPORT FAILED" in l and "dual_adapter" in l]
    assert not failed, failed


@pytest.mark.parametrize("wf", sorted((ROOT / "workflows" / "api").glob("*.json")), ids=lambda p: p.stem)
def test_api_workflow_runs_in_comfyui(server, wf):
    h = run_prompt(server["url"], json.loads(wf.read_text()), wf.name)
    st = h["status"]
    assert st["status_str"] == "success", json.dumps(st["messages"])[-3000:]
    files = output_files(h, server["out"])
    assert files and all(f.stat().st_size > 0 for f in files), h["outputs"]


_CHECK_JS = """async ([wf, api]) => {
    await window.app.loadGraphData(wf);
    const reg = window.LiteGraph.registered_node_types;
    const problems = [...new Set(wf.nodes.map(n => n.type).filter(t => !reg[t]))].map(t => `missing node ${t}`);
    for (const n of wf.nodes) {
        if (n.type === 'MarkdownNote' || n.type === 'Note') continue;
        const graph = window.app.rootGraph || window.app.graph;  // newer frontends: rootGraph, nodes
        const g = (graph._nodes || graph.nodes || []).find(x => String(x.id) === String(n.id));
        if (!g) { problems.push(`node ${n.id} not loaded`); continue; }
        const inputs = (api[String(n.id)] || {}).inputs || {};
        for (const w of g.widgets || []) {
            const v = inputs[w.name];
            if (w.name === 'control_after_generate' || v === undefined || Array.isArray(v)) continue;
            if (JSON.stringify(v) !== JSON.stringify(w.value))
                problems.push(`${n.type}.${w.name}: loaded ${JSON.stringify(w.value)}, API twin ${JSON.stringify(v)}`);
        }
    }
    return problems;
}"""


def test_ui_workflows_load_in_the_frontend(server):
    """Each UI-format workflow loads in ComfyUI's own frontend (headless Chromium) with no missing node and
    every widget holding the value of the API twin (skips without playwright + a Chromium)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        pytest.skip("no Chromium on PATH")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu",
                                                               "--disable-background-networking", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto(server["url"], wait_until="networkidle", timeout=120_000)
            page.wait_for_function("window.app && window.app.graph", timeout=120_000)
            for wf in _ui_workflows():
                api = json.loads(_api_twin(wf).read_text())
                problems = page.evaluate(_CHECK_JS, [json.loads(wf.read_text()), api])
                assert not problems, f"{wf.name}: {problems}"
        finally:
            browser.close()


def test_every_shipped_workflow_names_only_nodes_the_server_has(server):
    """Without a browser: every node type of every UI workflow (the native one included) is in /object_info."""
    info = _get(server["url"] + "/object_info", timeout=60)
    for wf in _ui_workflows():
        types = {n["type"] for n in json.loads(wf.read_text())["nodes"]} - {"MarkdownNote", "Note"}
        assert not types - set(info), f"{wf.name}: missing nodes {sorted(types - set(info))}"


def _fetch(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def test_templates_browser_lists_and_serves_every_workflow_with_a_thumbnail(server):
    """Templates > Extensions > the pack: ComfyUI lists each shipped UI workflow once and serves it and its .jpg
    thumbnail (the frontend's URLs: /api/workflow_templates/<pack folder>/<name>.json / .jpg)."""
    import io

    from PIL import Image

    listed = _get(server["url"] + "/workflow_templates").get(server["module"], [])
    assert sorted(listed) == sorted(p.stem for p in _ui_workflows()), listed
    for name in listed:
        base = f"{server['url']}/api/workflow_templates/{server['module']}/{name}"
        status, _, body = _fetch(base + ".json")
        assert status == 200 and json.loads(body) == json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())
        status, ctype, body = _fetch(base + ".jpg")
        assert status == 200 and ctype.startswith("image/") and Image.open(io.BytesIO(body)).size[0] > 0


_TEMPLATES_JS = """async ([module]) => {
    const api = window.app.api;
    const listed = (await api.getWorkflowTemplates())[module] || [];
    const problems = [];
    for (const name of listed) {
        const wf = await (await fetch(api.apiURL(`/workflow_templates/${module}/${name}.json`))).json();
        await window.app.loadGraphData(wf, true, true, name);
        const graph = window.app.rootGraph || window.app.graph;
        const n = (graph._nodes || graph.nodes || []).length;
        if (n !== wf.nodes.length) problems.push(`${name}: ${n} nodes on the canvas, ${wf.nodes.length} in the file`);
        const ok = await new Promise(res => { const im = new Image(); im.onload = () => res(im.naturalWidth > 0);
            im.onerror = () => res(false); im.src = api.apiURL(`/workflow_templates/${module}/${name}.jpg`); });
        if (!ok) problems.push(`${name}: no thumbnail`);
    }
    return [listed, problems];
}"""


def _browser_page(server, sync_api, p):
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        pytest.skip("no Chromium on PATH")
    browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu",
                                                           "--disable-background-networking", "--no-first-run"])
    page = browser.new_page()
    page.goto(server["url"], wait_until="networkidle", timeout=120_000)
    page.wait_for_function("window.app && window.app.graph", timeout=120_000)
    return browser, page


def test_templates_open_in_the_frontend(server):
    """In ComfyUI's own frontend (headless Chromium): every template the pack lists opens from the template URL
    with all its nodes, and its thumbnail decodes as an image."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser, page = _browser_page(server, sync_api, p)
        try:
            listed, problems = page.evaluate(_TEMPLATES_JS, [server["module"]])
        finally:
            browser.close()
    assert sorted(listed) == sorted(w.stem for w in _ui_workflows()) and not problems, problems


def _queue(server, prompt, client_id):
    code, r = _post(server["url"] + "/prompt", {"prompt": prompt, "client_id": client_id})
    assert code == 200 and not r.get("node_errors"), r
    return r["prompt_id"]


def _wait(server, pid, limit=900):
    t0 = time.time()
    while True:
        h = _get(f"{server['url']}/history/{pid}")
        if pid in h and h[pid].get("status", {}).get("completed") is not None:
            return h[pid]
        assert time.time() - t0 < limit, "the prompt did not finish"
        time.sleep(1)


def test_cancel_shows_in_the_node_and_the_checkpoint_loads_in_the_next_queue(server):
    """Cancel during Train DualReal: the node's text says where it stopped, the loss and how to resume (read from
    ComfyUI's websocket, as the frontend gets it); the kept checkpoint is listed by Load DualReal and loads in
    the next queue; and Save U-Net LoRA's file is listed by Load U-Net LoRA."""
    import asyncio
    import struct

    import aiohttp

    wf = json.loads((ROOT / "workflows" / "api" / "dualreal_train_sample.json").read_text())
    train_id = next(k for k, v in wf.items() if v["class_type"] == "DualRealTrain")
    keep = {train_id} | {v["inputs"][i][0] for v in [wf[train_id]] for i in ("model", "subject", "motion")}
    prompt = {k: v for k, v in wf.items() if k in keep}
    prompt[train_id]["inputs"].update(steps=100000, name=f"cancel_{uuid.uuid4().hex[:6]}", checkpoint_every=0)
    prompt["99"] = {"class_type": "PreviewImage", "inputs": {"images": [train_id, 1]}}
    cid = str(uuid.uuid4())
    texts: list[str] = []

    async def watch():
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"{server['url']}/ws?clientId={cid}") as ws:
                pid = await asyncio.to_thread(_queue, server, prompt, cid)
                t0, sent = time.time(), False
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY and struct.unpack(">I", msg.data[:4])[0] == 3:
                        n = struct.unpack(">I", msg.data[4:8])[0]
                        texts.append(msg.data[8 + n:].decode())
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        m = json.loads(msg.data)
                        if m["type"] == "progress" and m["data"].get("value", 0) >= 5 and not sent:
                            await asyncio.to_thread(urllib.request.urlopen, urllib.request.Request(
                                server["url"] + "/interrupt", data=b"{}", method="POST"), timeout=30)
                            sent = True
                        if m["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                            return pid, m["type"]
                    assert time.time() - t0 < 600, "no interrupt seen"

    pid, how = asyncio.run(watch())
    assert how == "execution_interrupted", (how, texts[-3:])
    notice = [t for t in texts if t.startswith("cancelled at step")]
    assert notice and "(loss " in notice[-1] and "checkpoint kept" in notice[-1] and "resume = true" in notice[-1], \
        texts[-3:]
    name = prompt[train_id]["inputs"]["name"]
    listed = _get(server["url"] + "/object_info/DualRealLoad")["DualRealLoad"]["input"]["required"]["adapters_name"][0]
    partial = [n for n in listed if n.startswith(f"output/runs/dualreal/{name}_") and n.endswith("/checkpoint.safetensors")]
    assert partial, listed
    h = _wait(server, _queue(server, {"1": {"class_type": "DualRealLoad", "inputs": {"adapters_name": partial[0]}},
                                      "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
                             if "PreviewAny" in _get(server["url"] + "/object_info")
                             else {"1": {"class_type": "DualRealLoad", "inputs": {"adapters_name": partial[0]}},
                                   "2": {"class_type": "DualRealSave", "inputs": {"adapters": ["1", 0],
                                                                                   "filename_prefix": "reloaded"}}},
                             str(uuid.uuid4())))
    assert h["status"]["status_str"] == "success", h["status"]
    saved = sorted((server["out"] / "unet_lora").rglob("*.safetensors"))
    if saved:  # written by the U-Net workflows queued above
        unet = _get(server["url"] + "/object_info/DualAdapterUNetLoadLoRA")["DualAdapterUNetLoadLoRA"]
        names = unet["input"]["required"]["lora_name"][0]
        assert all(f"output/unet_lora/{p.relative_to(server['out'] / 'unet_lora').as_posix()}" in names
                   for p in saved), names
