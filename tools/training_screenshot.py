"""Take docs/images/training_previews.png: Train Motion LoRA training on `mini` with validation previews, in a real
ComfyUI driven by headless Chromium (as tests/frontends/test_comfyui_host.py does; set-up: docs/comfyui_hosts.md).

    COMFYUI_PATH=... $COMFY_PYTHON tools/training_screenshot.py docs/images/training_previews.png

Run it with the host's Python, from the pack's root, with the pack linked in the host's custom_nodes/. It loads the
shipped tap_motion_lora workflow, sets 400 steps and a preview every 20, queues it, waits for the preview of step 60,
takes the screenshot and cancels the run.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

COMFY = Path(os.environ["COMFYUI_PATH"])
ROOT = Path(__file__).resolve().parents[1]
SHOT = Path(sys.argv[1])
base = Path(tempfile.mkdtemp(prefix="training_screenshot_"))
out, inp, tmp = base / "output", base / "input", base / "temp"
for d in (out, inp, tmp):
    d.mkdir(parents=True)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
log = open(base / "comfyui.log", "w")
proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                         "--output-directory", str(out), "--input-directory", str(inp), "--temp-directory", str(tmp),
                         "--disable-auto-launch"], cwd=COMFY, stdout=log, stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"})
url = f"http://127.0.0.1:{port}"
try:
    t0 = time.time()
    while True:
        try:
            urllib.request.urlopen(url + "/object_info/DualAdapterTrainMotionLoRA", timeout=5).read()
            break
        except Exception:
            assert proc.poll() is None and time.time() - t0 < 240, (base / "comfyui.log").read_text()[-3000:]
            time.sleep(1)
    print("server up", time.time() - t0, flush=True)
    from playwright.sync_api import sync_playwright
    wf = json.loads((ROOT / "example_workflows" / "tap_motion_lora.json").read_text())
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
        page = b.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(url, wait_until="networkidle", timeout=120_000)
        page.wait_for_function("window.app && window.app.graph", timeout=120_000)
        page.evaluate("""async (wf) => {
            await window.app.loadGraphData(wf, true, true, 'tap_motion_lora');
            const graph = window.app.rootGraph || window.app.graph;
            const n = graph._nodes.find(n => n.type === 'DualAdapterTrainMotionLoRA');
            const set = (k, v) => { const w = n.widgets.find(w => w.name === k); w.value = v; };
            set('steps', 400); set('preview_every', 20); set('name', 'screenshot'); set('checkpoint_every', 0);
            const note = graph._nodes.find(n => n.type === 'MarkdownNote');
            if (note) graph.remove(note);
            for (const m of graph._nodes) { if (m.pos[0] >= 800) m.pos[0] += 200; }
            n.size[0] = 540; n.size[1] = 1180;
            const enc = graph._nodes.find(m => m.type === 'DualAdapterTextEncode');
            enc.pos = [1180, 616];
            try { await window.app.extensionManager.setting.set('Comfy.Minimap.Visible', false); } catch (e) {}
            const ds = window.app.canvas.ds; ds.scale = 0.78; ds.offset = [60, 40];
            window.app.canvas.setDirty(true, true);
        }""", wf)
        page.wait_for_timeout(1500)
        page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        t0 = time.time()
        prev = out / "runs" / "lora"
        while time.time() - t0 < 400:
            got = list(prev.glob("screenshot_*/previews/preview_0000[6-9]0.webp")) if prev.exists() else []
            if got:
                break
            time.sleep(2)
        print("previews", sorted(p.name for p in prev.rglob("*.webp")) if prev.exists() else None, time.time() - t0, flush=True)
        page.wait_for_timeout(4000)  # the live view is redrawn every 3 s
        page.screenshot(path=str(SHOT))
        urllib.request.urlopen(urllib.request.Request(url + "/interrupt", data=b"{}", method="POST"), timeout=30)
        page.wait_for_timeout(3000)
        b.close()
    print((base / "comfyui.log").read_text()[-1500:])
    print(f"wrote {SHOT}")
finally:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
