"""The pack inside a real ComfyUI (skipped unless COMFYUI_PATH points at a ComfyUI checkout).

Starts ``python main.py --cpu`` on a free loopback port with the pack linked into custom_nodes/,
checks that /object_info lists every node of the pack, queues every API-format workflow over HTTP
and checks that each one finishes with the files it should write.
"""
from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[1]
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
    link = comfy / "custom_nodes" / f"zz_dual_adapter_test_{os.getpid()}"
    link.symlink_to(ROOT, target_is_directory=True)
    base = tmp_path_factory.mktemp("comfy")
    out, inp, tmp = base / "output", base / "input", base / "temp"
    for d in (out, inp, tmp):
        d.mkdir()
    port = _free_port()
    log = open(base / "comfyui.log", "w")
    proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--output-directory", str(out), "--input-directory", str(inp), "--temp-directory",
                             str(tmp), "--disable-auto-launch"], cwd=comfy, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                _get(url + "/object_info/DualAdapterSampler")
                break
            except Exception:
                if proc.poll() is not None or time.time() - t0 > 180:
                    raise RuntimeError("ComfyUI did not start:\n" + (base / "comfyui.log").read_text()[-3000:])
                time.sleep(1)
        yield {"url": url, "out": out, "log": base / "comfyui.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        link.unlink()


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
    prompt = json.loads(wf.read_text())
    code, r = _post(server["url"] + "/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
    assert code == 200 and not r.get("node_errors"), r
    pid = r["prompt_id"]
    t0 = time.time()
    while True:
        h = _get(f"{server['url']}/history/{pid}")
        if pid in h and h[pid].get("status", {}).get("completed") is not None and \
                h[pid]["status"].get("status_str") in ("success", "error"):
            break
        assert time.time() - t0 < 900, f"{wf.name} did not finish in 15 min"
        time.sleep(1)
    st = h[pid]["status"]
    assert st["status_str"] == "success", json.dumps(st["messages"])[-3000:]
    files = [server["out"] / i.get("subfolder", "") / i["filename"]
             for o in h[pid]["outputs"].values() for i in o.get("images", []) if i.get("type") == "output"]
    assert files and all(f.stat().st_size > 0 for f in files), h[pid]["outputs"]


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
