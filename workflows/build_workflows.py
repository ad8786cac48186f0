"""Write the example workflows: each graph is defined once here and written in both formats,
``example_workflows/NAME.json`` (ComfyUI UI format: ComfyUI's Templates browser lists this folder under the
pack's name; drag-and-drop onto the canvas works too) with its thumbnail ``example_workflows/NAME.jpg`` (and
``.webp``), and ``workflows/api/NAME.json`` (API format: ``python -m dual_adapter run`` and ComfyUI's /prompt).

ComfyUI serves a pack's templates from the first folder that exists among ``example_workflows``, ``example``,
``examples``, ``workflow``, ``workflows`` (``app/custom_node_manager.py``), so the UI files live in the first one:
``examples/`` holds the shipped inputs and would otherwise shadow them. Only UI files sit at the top of a listed
folder (ComfyUI lists ``<folder>/*.json`` of each), so no workflow is listed twice.

Widget values are taken from the nodes' own INPUT_TYPES (order and defaults), so the files always
match the node definitions; tests check that they do. Run from the pack root:
``python workflows/build_workflows.py``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dual_adapter.graph import has_seed_control  # noqa: E402
from dual_adapter.miniworld import world  # noqa: E402

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
UI_DIR = ROOT / "example_workflows"  # UI format + thumbnails: what ComfyUI's Templates browser lists
API_DIR = ROOT / "workflows"  # API format (api/ and native/api/) and this script
#: Nodes that show an image or video after a run: ComfyUI's frontend grows such a node to at least 220 px below
#: its widgets (``setSizeForImage``); the layout reserves that room so the node never grows over the next one.
IMAGE_NODES = ("PreviewImage", "SaveAnimatedWEBP", "SaveImage", "SaveAnimatedPNG")
IMAGE_ROOM = 240
THUMB_SIZE = (512, 384)


def node_classes() -> dict:
    from dual_adapter.commands.run import load_node_classes

    return load_node_classes()


def display_name(ctype: str) -> str:
    """The name ComfyUI shows for a node type (the pack's display names; core types as they are spelled)."""
    import importlib
    import sys

    nodes = sys.modules.get("dual_adapter_pack_nodes") or importlib.import_module("nodes")
    core = {"PreviewImage": "Preview Image", "SaveAnimatedWEBP": "Save Animated WEBP", "PreviewAny": "Preview Any",
            "LoadImage": "Load Image", "CLIPVisionLoader": "Load CLIP Vision", "UNETLoader": "Load Diffusion Model",
            "CLIPLoader": "Load CLIP", "VAELoader": "Load VAE", "VAEDecode": "VAE Decode"}
    return nodes.NODE_DISPLAY_NAME_MAPPINGS.get(ctype) or core.get(ctype, ctype)


class Out:
    def __init__(self, node: "Node", slot: int):
        self.node, self.slot = node, slot


class Node:
    def __init__(self, graph: "Graph", nid: int, ctype: str, values: dict, title: str | None):
        self.graph, self.id, self.type, self.values, self.title = graph, nid, ctype, values, title

    def __getitem__(self, slot: int) -> Out:
        return Out(self, slot)


class Graph:
    def __init__(self, name: str, classes: dict, subdir: str = ""):
        self.name, self.classes, self.subdir = name, classes, subdir
        self.nodes: list[Node] = []
        self.notes: list[tuple[str, str]] = []

    def node(self, ctype: str, title: str | None = None, **values) -> Node:
        if ctype not in self.classes:
            raise KeyError(f"unknown node class {ctype}")
        n = Node(self, len(self.nodes) + 1, ctype, values, title)
        self.nodes.append(n)
        return n

    def note(self, title: str, markdown: str) -> None:
        if self.name in SHOWS and not self.notes:
            markdown = f"**What it shows as shipped** (measured, one seed): {SHOWS[self.name]}\n\n" + markdown
        self.notes.append((title, markdown))

    # -------------------------------------------------------------------------------- formats

    def _spec(self, ctype):
        spec = self.classes[ctype].INPUT_TYPES()
        items = []
        for section in ("required", "optional"):
            for name, s in (spec.get(section) or {}).items():
                items.append((name, section, s[0], s[1] if len(s) > 1 and isinstance(s[1], dict) else {}))
        return items

    @staticmethod
    def _is_widget(typ, opts) -> bool:
        return (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput")

    def _value(self, n: Node, name, typ, opts):
        if name in n.values:
            return n.values[name]
        if "default" in opts:
            return opts["default"]
        if isinstance(typ, list):
            return typ[0] if typ else ""
        raise ValueError(f"{self.name}: node {n.type} needs a value for {name!r}")

    def api(self) -> dict:
        out = {}
        for n in self.nodes:
            inputs = {}
            for name, section, typ, opts in self._spec(n.type):
                v = n.values.get(name)
                if isinstance(v, Out):
                    inputs[name] = [str(v.node.id), v.slot]
                elif self._is_widget(typ, opts):
                    inputs[name] = self._value(n, name, typ, opts)
                elif section == "required":
                    raise ValueError(f"{self.name}: node {n.type} input {name!r} is not connected")
            out[str(n.id)] = {"class_type": n.type, "inputs": inputs, "_meta": {"title": n.title or n.type}}
        return out

    def ui(self) -> dict:
        links = []
        order = {n.id: i for i, n in enumerate(self.nodes)}
        depth: dict[int, int] = {}
        for n in self.nodes:
            ups = [v.node.id for v in n.values.values() if isinstance(v, Out)]
            depth[n.id] = 1 + max((depth[u] for u in ups), default=-1)
        rows: dict[int, int] = {}
        ui_nodes = []
        out_links: dict[tuple[int, int], list[int]] = {}
        for n in self.nodes:
            for name, section, typ, opts in self._spec(n.type):
                v = n.values.get(name)
                if isinstance(v, Out):
                    lid = len(links) + 1
                    t = self.classes[v.node.type].RETURN_TYPES[v.slot]
                    links.append([lid, v.node.id, v.slot, n.id, None, t])
                    out_links.setdefault((v.node.id, v.slot), []).append(lid)
        for n in self.nodes:
            cls = self.classes[n.type]
            inputs, widgets = [], []
            for name, section, typ, opts in self._spec(n.type):
                v = n.values.get(name)
                widget = self._is_widget(typ, opts)
                if isinstance(v, Out):
                    lid = next(l[0] for l in links if l[3] == n.id and l[1] == v.node.id and l[2] == v.slot
                               and l[4] is None)
                    entry = {"name": name, "type": typ if isinstance(typ, str) else "COMBO", "link": lid}
                    if widget:
                        entry["widget"] = {"name": name}
                    links[lid - 1][4] = len(inputs)
                    inputs.append(entry)
                elif not widget:
                    entry = {"name": name, "type": typ, "link": None}
                    if section == "optional":
                        entry["shape"] = 7
                    inputs.append(entry)
                if widget:
                    widgets.append(v.node and None if isinstance(v, Out) else self._value(n, name, typ, opts))
                    if has_seed_control(name, typ, opts):
                        widgets.append("fixed")
                    if opts.get("image_upload"):  # video_upload's button holds no value in the file
                        widgets.append("image")
            outputs = []
            names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
            for slot, (t, nm) in enumerate(zip(cls.RETURN_TYPES, names)):
                outputs.append({"name": nm, "type": t, "links": out_links.get((n.id, slot)) or None, "slot_index": slot})
            col = depth[n.id]
            row = rows.get(col, 0)
            multiline = sum(1 for name, _, typ, opts in self._spec(n.type) if typ == "STRING" and opts.get("multiline")
                            and not isinstance(n.values.get(name), Out))
            n_w = max(len(outputs), len(inputs)) + len(widgets) + 3 * multiline
            height = 46 + 24 * n_w + (IMAGE_ROOM if n.type in IMAGE_NODES else 0)
            rows[col] = row + height + 50
            ui_nodes.append({
                "id": n.id, "type": n.type, "pos": [40 + 380 * col, 40 + row], "size": [340, height],
                "flags": {}, "order": order[n.id], "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": n.type}, "widgets_values": widgets,
                **({"title": n.title} if n.title else {}),
            })
        nid = len(self.nodes)
        for i, (title, md) in enumerate(self.notes):
            nid += 1
            ui_nodes.append({"id": nid, "type": "MarkdownNote", "title": title, "pos": [40 + 420 * i, -360],
                             "size": [400, 320], "flags": {}, "order": nid - 1, "mode": 0, "inputs": [],
                             "outputs": [], "properties": {}, "widgets_values": [md], "color": "#432",
                             "bgcolor": "#653"})
        return {"last_node_id": nid, "last_link_id": len(links), "nodes": ui_nodes, "links": links, "groups": [],
                "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 400]}}, "version": 0.4}

    def api_path(self) -> Path:
        return (API_DIR / self.subdir if self.subdir else API_DIR) / "api" / f"{self.name}.json"

    def thumbnail(self, title: str = ""):
        """A PIL image of the graph as laid out on the canvas (node boxes with their titles, the links): the
        Templates browser's picture of this workflow."""
        from PIL import Image, ImageDraw, ImageFont

        ui = self.ui()
        boxes = {n["id"]: (n["pos"], n["size"], n.get("title") or n["type"]) for n in ui["nodes"]
                 if n["type"] != "MarkdownNote"}
        x0 = min(p[0] for p, s, _ in boxes.values())
        y0 = min(p[1] for p, s, _ in boxes.values())
        x1 = max(p[0] + s[0] for p, s, _ in boxes.values())
        y1 = max(p[1] + s[1] for p, s, _ in boxes.values())
        W, H = THUMB_SIZE
        top = 46
        k = min((W - 24) / (x1 - x0), (H - top - 12) / (y1 - y0))
        ox, oy = (W - k * (x1 - x0)) / 2, top + (H - top - 12 - k * (y1 - y0)) / 2

        def xy(x, y):
            return ox + k * (x - x0), oy + k * (y - y0)

        img = Image.new("RGB", THUMB_SIZE, (32, 34, 40))
        d = ImageDraw.Draw(img)
        try:
            font, small = ImageFont.load_default(size=20), ImageFont.load_default(size=max(9, int(60 * k)))
        except TypeError:  # Pillow < 10.1: one bitmap size
            font = small = ImageFont.load_default()
        for _, a, _, b, _, _ in ui["links"]:
            (pa, sa, _), (pb, _, _) = boxes[a], boxes[b]
            d.line([xy(pa[0] + sa[0], pa[1] + 20), xy(pb[0], pb[1] + 20)], fill=(120, 160, 210), width=2)
        for nid, (p, s, name) in boxes.items():
            ctype = next(n["type"] for n in ui["nodes"] if n["id"] == nid)
            fill = (70, 90, 60) if ctype.startswith(("DualReal", "DualAdapter")) else (60, 62, 70)
            d.rounded_rectangle([xy(*p), xy(p[0] + s[0], p[1] + s[1])], radius=4, fill=fill, outline=(150, 150, 150))
            label = display_name(ctype) if name == ctype else name
            room = k * s[0] - 8
            while len(label) > 3 and d.textlength(label, font=small) > room:
                label = label[:-2].rstrip() + "."
            d.text((xy(*p)[0] + 4, xy(*p)[1] + 3), label, fill=(235, 235, 235), font=small)
        d.text((12, 12), (title or self.name)[:44], fill=(250, 250, 250), font=font)
        return img

    def save(self) -> None:
        UI_DIR.mkdir(parents=True, exist_ok=True)
        self.api_path().parent.mkdir(parents=True, exist_ok=True)
        (UI_DIR / f"{self.name}.json").write_text(json.dumps(self.ui(), indent=1) + "\n")
        self.api_path().write_text(json.dumps(self.api(), indent=1) + "\n")
        thumb = self.thumbnail(self.notes[0][0] if self.notes else "")
        thumb.save(UI_DIR / f"{self.name}.jpg", quality=88)
        thumb.save(UI_DIR / f"{self.name}.webp", quality=88)


# ---------------------------------------------------------------- the CogVideoX workflows: on `mini`
# They run as shipped on the built-in pretrained `mini` (docs/miniworld.md; 9 frames x 32 x 32, CPU)
# with mini-world files in examples/mini/ (written by examples/make_mini_examples.py): photos of a subject the
# base never saw (a yellow striped star) and clips of *other* sprites doing a motion it never saw (orbit).
# Settings: DualReal 400 steps (lr 1e-3, 40 warm-up steps; the demo ran 400 when this was measured and now runs
# the authors' 1000), the LoRAs and TTT as the miniworld
# benchmark (100 steps, lr 1e-3, rank 8; TTT 10 steps at 1e-4), 25 sampling steps as the demo; prompts come from
# the world's vocabulary (words outside it are unknown to mini's tokenizer). Measured on the shipped 10,000-step
# mini (one seed, headless, idle 2-core machine; docs/results/workflows.md): the DualReal train + sample workflow takes
# 0:52 and its sprite moves (motion score 0.75 against the orbit) in the clips' green, not as the star.
MODEL = "mini"
SIZE = dict(height=world.HEIGHT, width=world.WIDTH)  # 32 x 32
FRAMES = world.FRAMES  # 9
PHOTOS = "examples/mini/striped_star"
CLIP = "examples/mini/orbit/00.gif"
SUBJECT, MOTION = "striped_star", "orbit"
ID_PROMPT = world.identity_prompt(SUBJECT)  # "a * star on a gray background"
MO_PROMPT = world.motion_prompt(MOTION)  # "a shape orbiting on a gray background"
PROMPT = world.combined_prompt(SUBJECT, MOTION)  # "a * star orbiting on a gray background"
TRAIN_STEPS, DUALREAL_STEPS, SAMPLE_STEPS = 100, 400, 25
# The "load adapters + sample" workflow needs adapters trained on the shipped mini weights
# (python examples/make_mini_examples.py --adapters); without that file (e.g. removed to retrain it after
# mini changed) it is written on tiny with the tiny example adapters.
MINI_ADAPTERS = "examples/dualreal_mini_star_orbit.safetensors"
TINY_ADAPTERS = "examples/dualreal_tiny_dog_guitar.safetensors"

# What each workflow's video shows as shipped, measured (one seed; docs/results/workflows.md has the command and
# the scores): the first line of its note, so the canvas never promises more than the run gives.
SHOWS = {
    "dualreal_train_sample": "a large **green** circle (the motion clips' colour, not the star's yellow) that barely "
                             "moves (identity 0.00 against the star photos; motion 0.25 against the orbit clips' "
                             "paths, classified still). One clip of 400 steps on this small model shows neither the "
                             "subject nor the orbit.",
    "dualreal_load_sample": "a small yellow circle that barely moves (identity 0.15: colour 0.67, shape 0.58, texture "
                            "0.40; motion 0.10 against the orbit, classified still). The yellow is also what the base "
                            "draws for the placeholder prompt, so it is not evidence of a learned identity.",
    "tap_motion_lora": "a large yellow square-ish sprite that barely moves (motion 0.12 against the orbit clips' paths, "
                       "classified still).",
    "generate_mini": "a large yellow checkered circle moving right (motion 0.78 against 'right', classified right): "
                     "the motion as asked, not the colour (red) or the plain texture.",
}

REAL_WEIGHTS_NOTE = """**Runs as shipped on the built-in `mini` model: a small CogVideoX pretrained on a sprite world (9 frames x
32 x 32, CPU), with the mini-world inputs in `examples/mini/` (photos of a yellow striped star the model never
saw; clips of other, green, sprites orbiting, a motion it never saw).** Prompts use the world's words (docs/miniworld.md): other words are unknown to `mini`.

For a real CogVideoX:
- put a CogVideoX diffusers folder (e.g. `CogVideoX-5b`) in `models/CogVideo/` and pick it in *Load Video Model*;
- set Load Photos / Load Clip Frames to 480 x 720 (Load Clip Frames: 49 frames), the sampler to 49 frames,
  480 x 720 (or 0 = the model's default), 50 steps;
- replace the shipped example inputs (`examples/mini/...`) with your own photos / clips, and the prompts with yours;
"""


def _photos(g: Graph) -> Node:
    return g.node("DualAdapterLoadPhotos", title="Subject photos", path=PHOTOS, **SIZE)


def _clip(g: Graph) -> Node:
    # fps 0: every frame of the 9-frame clip, consecutive as the authors' DualReal clips (docs/dualreal.md)
    return g.node("DualAdapterLoadClip", title="Motion clip", path=CLIP, frames=FRAMES, fps=0.0, **SIZE)


def g_generate(classes) -> Graph:
    g = Graph("generate_mini", classes)
    m = g.node("DualAdapterLoadVideoModel", model=MODEL)
    e = g.node("DualAdapterTextEncode", model=m[0], prompt="a large red circle moving right on a gray background",
               negative_prompt="")
    s = g.node("DualAdapterSampler", model=m[0], embeds=e[0], steps=SAMPLE_STEPS, cfg=6.0, seed=42)
    d = g.node("DualAdapterVAEDecode", model=m[0], latent=s[0])
    g.node("SaveAnimatedWEBP", images=d[0], filename_prefix="dual_adapter/generate", fps=8.0)
    g.note("Text to video", REAL_WEIGHTS_NOTE + "- the prompt is all there is: no adapter in this graph.")
    return g


def g_evaluate(classes) -> Graph:
    g = Graph("evaluate", classes)
    m = g.node("DualAdapterLoadVideoModel", model=MODEL)
    prompt = "a large yellow star moving right on a gray background"
    e = g.node("DualAdapterTextEncode", model=m[0], prompt=prompt, negative_prompt="")
    s = g.node("DualAdapterSampler", model=m[0], embeds=e[0], steps=SAMPLE_STEPS, cfg=6.0, seed=42)
    d = g.node("DualAdapterVAEDecode", model=m[0], latent=s[0])
    ph = g.node("DualAdapterLoadPhotos", path=PHOTOS, **SIZE)
    ev = g.node("DualAdapterEvaluateVideo", frames=d[0], reference_photos=ph[0], prompt=prompt, metrics="all")
    g.node("PreviewImage", images=ev[1])
    g.node("SaveAnimatedWEBP", images=d[0], filename_prefix="dual_adapter/evaluated", fps=8.0)
    g.note("Evaluate a video", REAL_WEIGHTS_NOTE + "- CLIP-T / CLIP-I / T-Cons need a CLIP folder, DINO-I and subject "
           "consistency a DINO ViT-S/16 folder, dynamic degree a RAFT-large state dict, all in `models/metrics/` "
           "(see docs/evaluation.md). Metrics whose weights are missing are listed as skipped; "
           "temporal flickering needs none (on 32 px sprites the learned metrics say little: the mini world's own "
           "scorers are `python -m dual_adapter miniworld evaluate`).\n- To evaluate a video file instead, feed "
           "*Load Clip Frames* into *Evaluate Video*.")
    return g


def g_tap_motion_lora(classes) -> Graph:
    g = Graph("tap_motion_lora", classes)
    m = g.node("DualAdapterLoadVideoModel", model=MODEL)
    clip = _clip(g)
    t = g.node("DualAdapterTrainMotionLoRA", model=m[0], clip=clip[0], prompt=MO_PROMPT, preset="tap", rank=8,
               alpha=8.0, steps=TRAIN_STEPS, learning_rate=1e-3, seed=0, gradient_checkpointing=False)
    g.node("DualAdapterSaveLoRA", lora=t[0], filename_prefix="tap/orbit", folder="output", precision="bf16")
    g.node("PreviewImage", images=t[1])
    a = g.node("DualAdapterApplyLoRA", model=m[0], lora=t[0], strength=1.0)
    e = g.node("DualAdapterTextEncode", model=m[0], prompt="a large yellow circle orbiting on a gray background",
               negative_prompt="")
    s = g.node("DualAdapterSampler", model=a[0], embeds=e[0], steps=SAMPLE_STEPS, cfg=6.0, seed=42)
    d = g.node("DualAdapterVAEDecode", model=m[0], latent=s[0])
    g.node("SaveAnimatedWEBP", images=d[0], filename_prefix="dual_adapter/tap_motion_lora", fps=8.0)
    g.note("TAP motion LoRA", REAL_WEIGHTS_NOTE + (
        "- in *Train Motion LoRA (TAP)*: 49-frame clip at 480 x 720 (Load Clip Frames: frames 49), rank 32, "
        "alpha 32, dropout 0.1, learning rate 5e-4, 1000 steps, gradient checkpointing on (the authors' setting);\n"
        "- the trained LoRA is saved (Save LoRA) and applied at once (Apply LoRA); a saved LoRA goes back in with "
        "*Load LoRA*, which lists it as `output/loras/tap/...` in the next queue (files from other "
        "CogVideoX LoRA trainers go in `models/loras/`);\n"
        "- preset tap trains only attention query/key: the video keeps the base model's appearance and takes the "
        "clip's motion; use a prompt with a new subject at sampling time."))
    return g


def g_customttt(classes) -> Graph:
    g = Graph("customttt", classes)
    m = g.node("DualAdapterLoadVideoModel", model=MODEL)
    pi = g.node("DualAdapterPromptInfluence", model=m[0], appearance_prompt=ID_PROMPT, motion_prompt=MO_PROMPT)
    g.node("PreviewImage", images=pi[1])
    ph = _photos(g)
    clip = _clip(g)
    app = g.node("DualAdapterTrainSelectiveLoRA", title="Appearance LoRA", model=m[0], kind="appearance",
                 prompt=ID_PROMPT, blocks=pi[2], preset="full", rank=8, learning_rate=1e-3, steps=TRAIN_STEPS,
                 photos=ph[0])
    mot = g.node("DualAdapterTrainSelectiveLoRA", title="Motion LoRA", model=m[0], kind="motion",
                 prompt=MO_PROMPT, blocks=pi[3], preset="full", rank=8, learning_rate=1e-3,
                 steps=TRAIN_STEPS, clip=clip[0])
    ttt = g.node("DualAdapterTTTMerge", model=m[0], appearance_lora=app[0], appearance_prompt=ID_PROMPT,
                 motion_lora=mot[0], motion_prompt=MO_PROMPT, prompt=PROMPT, steps=10, learning_rate=1e-4)
    g.node("DualAdapterSaveLoRA", lora=ttt[0], filename_prefix="customttt/merged", folder="output")
    g.node("PreviewImage", images=ttt[1])
    a = g.node("DualAdapterApplyLoRA", model=m[0], lora=ttt[0], strength=1.0)
    e = g.node("DualAdapterTextEncode", model=m[0], prompt=PROMPT, negative_prompt="")
    s = g.node("DualAdapterSampler", model=a[0], embeds=e[0], steps=SAMPLE_STEPS, cfg=6.0, seed=42)
    d = g.node("DualAdapterVAEDecode", model=m[0], latent=s[0])
    g.node("SaveAnimatedWEBP", images=d[0], filename_prefix="dual_adapter/customttt", fps=8.0)
    g.note("CustomTTT", REAL_WEIGHTS_NOTE + (
        "- Prompt Influence ranks the blocks; its recommended blocks feed the two layer-selective trainings;\n"
        "- the authors' setting: rank 32, 500 steps each (appearance on photos, motion on 49-frame clips), "
        "TTT merge 30 steps; set learning_rate to 0 for the documented defaults;\n"
        "- the merged LoRA is one diffusers-format file (Save LoRA) that loads anywhere a CogVideoX LoRA does."))
    return g


DUALREAL_NOTE = (
    "- the reference image: on mini, Train DualReal's reference_encoder 'auto' takes the built-in 'mini' encoder "
    "(a pixel-statistics stand-in) and Apply DualReal encodes the subject photo on `reference_image` with it; for a "
    "real CogVideoX add *Load CLIP Vision* (`clip_vision_h.safetensors`, ViT-H/14) and connect it to `clip_vision` "
    "of both nodes; without an encoder the motion adapters' W_cond stays untrained (a warning says so; the authors "
    "always train with one) and a reference is ignored at inference;\n"
    "- the authors' setting: 1000 steps, lr 1e-3, 200 warm-up steps, motion_ratio 0.5, hidden 64, 7 groups, "
    "49 consecutive source frames per clip (Load Clip Frames fps 0; fps 8 resamples to CogVideoX's rate instead) "
    "at 480 x 720 (frames_per_clip 49); inference 50 steps, CFG 6, prompt like 'Dog * is playing guitar'.")


def g_dualreal_train(classes) -> Graph:
    g = Graph("dualreal_train_sample", classes)
    m = g.node("DualAdapterLoadVideoModel", model=MODEL)
    ph = _photos(g)
    clip = _clip(g)
    t = g.node("DualRealTrain", model=m[0], subject=ph[0], identity_prompt=ID_PROMPT, motion=clip[0],
               motion_prompt=MO_PROMPT, steps=DUALREAL_STEPS, lr=1e-3, warmup_steps=40,
               name="star_orbit", checkpoint_every=100)
    g.node("DualRealSave", adapters=t[0], filename_prefix="star_orbit")
    g.node("PreviewImage", images=t[1])
    a = g.node("DualRealApply", model=m[0], adapters=t[0], reference_image=ph[0])
    sb = g.node("DualRealStageBlenderPlot", model=m[0], adapters=t[0], prompt=PROMPT, steps=10)
    g.node("PreviewImage", images=sb[0])
    e = g.node("DualAdapterTextEncode", model=m[0], prompt=PROMPT, negative_prompt="")
    s = g.node("DualAdapterSampler", model=a[0], embeds=e[0], steps=SAMPLE_STEPS, cfg=6.0, seed=42)
    d = g.node("DualAdapterVAEDecode", model=m[0], latent=s[0])
    g.node("SaveAnimatedWEBP", images=d[0], filename_prefix="dual_adapter/dualreal", fps=8.0)
    g.note("DualReal: train + sample", REAL_WEIGHTS_NOTE + DUALREAL_NOTE)
    return g


def g_dualreal_load(classes) -> Graph:
    mini = (ROOT / MINI_ADAPTERS).is_file()
    g = Graph("dualreal_load_sample", classes)
    m = g.node("DualAdapterLoadVideoModel", model=MODEL if mini else "tiny")
    ad = g.node("DualRealLoad", adapters_name=MINI_ADAPTERS if mini else TINY_ADAPTERS)
    a = g.node("DualRealApply", model=m[0], adapters=ad[0], **({"reference_image": _photos(g)[0]} if mini else {}))
    prompt = PROMPT if mini else "dog * is playing guitar"
    e = g.node("DualAdapterTextEncode", model=m[0], prompt=prompt, negative_prompt="")
    s = g.node("DualAdapterSampler", model=a[0], embeds=e[0], steps=SAMPLE_STEPS if mini else 10, cfg=6.0, seed=42)
    d = g.node("DualAdapterVAEDecode", model=m[0], latent=s[0])
    g.node("SaveAnimatedWEBP", images=d[0], filename_prefix="dual_adapter/dualreal_loaded", fps=8.0)
    if mini:
        head = REAL_WEIGHTS_NOTE + (
            "- pick your trained adapters in *Load DualReal* (what Save DualReal wrote: `output/dualreal/...`; or "
            "files in `models/dualreal/`, .safetensors or the authors' adapter.pth); the shipped examples/dualreal_mini_* file (trained by `python examples/make_mini_examples.py "
            "--adapters` on the examples/mini/ inputs) only fits the mini model;\n")
    else:
        head = TINY_NOTE + (
            "- pick your trained adapters in *Load DualReal* (what Save DualReal wrote: `output/dualreal/...`; or "
            "files in `models/dualreal/`, .safetensors or the authors' adapter.pth); the shipped examples/dualreal_tiny_* file only fits the tiny model;\n")
    g.note("DualReal: load adapters + sample", head + DUALREAL_NOTE)
    return g


TINY_NOTE = """**Runs as shipped on the built-in `tiny` model (random weights, CPU, seconds): it shows the graph works,
not what the method can do.**

For real results:
- put a CogVideoX diffusers folder (e.g. `CogVideoX-5b`) in `models/CogVideo/` and pick it in *Load Video Model*;
- set the sampler to 49 frames, 480 x 720 (or 0 = the model's default), 50 steps;
"""


# Core ComfyUI nodes of the native graph that have no headless stand-in (they need core's model loaders):
# their input specs as in ComfyUI 0.33 (order, defaults), so the files match what the frontend shows.
def _core_spec(ret, required, optional=None):
    return type("CoreNodeSpec", (), {"RETURN_TYPES": ret, "INPUT_TYPES": classmethod(
        lambda cls: {"required": required, **({"optional": optional} if optional else {})})})


NATIVE_CORE_SPECS = {
    "UNETLoader": _core_spec(("MODEL",), {"unet_name": (["cogvideox5b_native.safetensors"],),
                                           "weight_dtype": (["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"],)}),
    "CLIPLoader": _core_spec(("CLIP",), {"clip_name": (["t5xxl_fp16.safetensors"],), "type": (["cogvideox"],)},
                             {"device": (["default", "cpu"],)}),
    "CLIPTextEncode": _core_spec(("CONDITIONING",), {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}),
    "VAELoader": _core_spec(("VAE",), {"vae_name": (["cogvideox5b_vae.safetensors"],)}),
    "EmptyHunyuanLatentVideo": _core_spec(("LATENT",), {
        "width": ("INT", {"default": 848}), "height": ("INT", {"default": 480}), "length": ("INT", {"default": 25}),
        "batch_size": ("INT", {"default": 1})}),
    "KSampler": _core_spec(("LATENT",), {
        "model": ("MODEL",), "seed": ("INT", {"default": 0, "control_after_generate": True}),
        "steps": ("INT", {"default": 20}), "cfg": ("FLOAT", {"default": 8.0}), "sampler_name": (["euler"],),
        "scheduler": (["simple"],), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
        "latent_image": ("LATENT",), "denoise": ("FLOAT", {"default": 1.0})}),
    "VAEDecode": _core_spec(("IMAGE",), {"samples": ("LATENT",), "vae": ("VAE",)}),
}


def g_native(classes) -> Graph:
    """Core loaders + KSampler with the pack's Apply nodes on a native CogVideoX MODEL."""
    g = Graph("dualreal_lora_ksampler", {**NATIVE_CORE_SPECS, **classes}, subdir="native")
    m = g.node("UNETLoader", unet_name="cogvideox5b_native.safetensors", weight_dtype="default")
    lo = g.node("DualAdapterLoadLoRA", lora_name="tap/guitar_00001_.safetensors")
    ml = g.node("DualAdapterApplyLoRANative", model=m[0], lora=lo[0], strength=1.0)
    ad = g.node("DualRealLoad", adapters_name="output/dualreal/dog_guitar_00001_.safetensors")
    ph = g.node("LoadImage", image="dog.png")
    cv = g.node("CLIPVisionLoader", clip_name="clip_vision_h.safetensors")
    md = g.node("DualAdapterDualRealApplyNative", model=ml[0], adapters=ad[0], reference_image=ph[0], clip_vision=cv[0])
    clip = g.node("CLIPLoader", clip_name="t5xxl_fp16.safetensors", type="cogvideox")
    pos = g.node("CLIPTextEncode", title="Prompt", text="Dog * is playing guitar", clip=clip[0])
    neg = g.node("CLIPTextEncode", title="Negative prompt", text="", clip=clip[0])
    lat = g.node("EmptyHunyuanLatentVideo", title="Empty video latent (16 ch, 4x time)", width=720, height=480,
                 length=49, batch_size=1)
    ks = g.node("KSampler", model=md[0], seed=42, steps=50, cfg=6.0, sampler_name="euler", scheduler="simple",
                positive=pos[0], negative=neg[0], latent_image=lat[0], denoise=1.0)
    vae = g.node("VAELoader", vae_name="cogvideox5b_vae.safetensors")
    dec = g.node("VAEDecode", samples=ks[0], vae=vae[0])
    g.node("SaveAnimatedWEBP", images=dec[0], filename_prefix="dual_adapter/native_dualreal", fps=8.0)
    g.note("Native ComfyUI CogVideoX + DualReal + LoRA", (
        "**Needs real weights (no tiny model here): core ComfyUI's native CogVideoX.**\n\n"
        "- transformer: a native single file in `models/diffusion_models/` (convert a diffusers folder from "
        "`models/CogVideo/` with *Convert CogVideoX to Native* or `python -m dual_adapter convert-native`);\n"
        "- text encoder: T5-XXL in `models/text_encoders/` with CLIPLoader type `cogvideox`; VAE: the CogVideoX VAE "
        "in `models/vae/`; reference: `clip_vision_h.safetensors` in `models/clip_vision/`;\n"
        "- adapters: what *Save DualReal* wrote (`output/dualreal/`, listed by *Load DualReal* as `output/dualreal/...`) "
        "or files in `models/dualreal/`; LoRA: what *Save LoRA* wrote (`models/loras/` or `output/loras/`), any "
        "supported format; core LoraLoaderModelOnly stacks with *Apply LoRA to MODEL*;\n"
        "- CogVideoX-1.5 runs in core as in diffusers; on 5B 1.0 core scales the RoPE grid (a warning); 2B and "
        "5B-I2V 1.0 are refused (core builds them with other positions), see docs/native_comfyui.md."))
    return g


BUILDERS = [g_generate, g_evaluate, g_tap_motion_lora, g_customttt, g_dualreal_train, g_dualreal_load, g_native]


# ---------------------------------------------------------------- U-Net backbones
UNET_NOTE = """**Runs as shipped on a built-in tiny U-Net (random weights, CPU, seconds): it shows the graph works, not
what the method can do.**

For real results: put the diffusers folder in `models/diffusers/` and pick it in *Load Video Model*
(`models/CogVideo/` stays for CogVideoX).
"""


def g_zeroscope_tap_ah(classes) -> Graph:
    g = Graph("zeroscope_tap_ah", classes)
    m = g.node("DualAdapterLoadVideoModel", model="tiny-unet3d")
    clip = g.node("DualAdapterLoadClip", title="Motion clip", path="examples/guitar.mp4", frames=2, fps=8.0,
                  height=32, width=32)
    t = g.node("DualAdapterTrainMotionLoRA", model=m[0], clip=clip[0], prompt="a person is playing guitar",
               preset="k_out", rank=4, alpha=4.0, steps=1, learning_rate=1e-3, seed=0, spatial_path=True,
               debiased_loss=True)
    g.node("DualAdapterSaveLoRA", lora=t[0], filename_prefix="zeroscope_tap", folder="output", precision="fp32")
    a = g.node("DualAdapterApplyLoRA", model=m[0], lora=t[0], strength=1.0)
    ah = g.node("DualAdapterApplyAH", model=a[0], enabled=True, freeu=True, s1=1.1, s2=1.0, b1=1.0, b2=1.0)
    e = g.node("DualAdapterTextEncode", model=m[0], prompt="a dog is playing guitar in the park", negative_prompt="")
    s = g.node("DualAdapterSampler", model=ah[0], embeds=e[0], frames=2, height=32, width=32, steps=2, cfg=12.0,
               seed=42, scheduler="ddim")
    d = g.node("DualAdapterVAEDecode", model=m[0], latent=s[0])
    g.node("SaveAnimatedWEBP", images=d[0], filename_prefix="dual_adapter/zeroscope_tap_ah", fps=8.0)
    g.note("TAP motion LoRA + AH on ZeroScope, as the SMA authors built it", UNET_NOTE + (
        "- the authors' setting: `zeroscope_v2_576w`, clip of 16 frames at 384 x 384, preset k_out (their code) or tap "
        "(the paper's wording), rank 32, 1000 steps, learning rate 5e-4, spatial path and debiased loss on;\n"
        "- inference: 30 DDIM steps, CFG 12; AH on (up block 1 takes its skips from the spatial attention of down "
        "block 2, with the FreeU-style scaling s1 1.1); switch *enabled* off to compare with the plain model."))
    return g


def g_animatediff_customttt(classes) -> Graph:
    g = Graph("animatediff_customttt", classes)
    m = g.node("DualAdapterLoadVideoModel", model="tiny-animatediff")
    ph = g.node("DualAdapterLoadPhotos", title="Subject photos", path="examples/dog", height=32, width=32)
    clip = g.node("DualAdapterLoadClip", title="Motion clip", path="examples/guitar.mp4", frames=2, fps=8.0,
                  height=32, width=32)
    ap_prompt, mo_prompt, prompt = "a photo of a sks dog", "a person is playing guitar", "a sks dog is playing guitar"
    pi = g.node("DualAdapterPromptInfluence", model=m[0], appearance_prompt=ap_prompt, motion_prompt=mo_prompt,
                neutral_prompt="", group_size=1, top_k=2, timesteps="500", seeds="0", space="v", frames=2)
    g.node("PreviewImage", images=pi[1])
    ap = g.node("DualAdapterTrainSelectiveLoRA", title="Appearance LoRA", model=m[0], kind="appearance",
                prompt=ap_prompt, blocks="2,6", preset="full", rank=4, learning_rate=1e-3, steps=1, seed=0,
                photos=ph[0])
    mo = g.node("DualAdapterTrainSelectiveLoRA", title="Motion LoRA", model=m[0], kind="motion", prompt=mo_prompt,
                blocks="2,5", preset="full", rank=4, learning_rate=1e-3, steps=1, seed=0, clip=clip[0])
    tt = g.node("DualAdapterTTTMerge", model=m[0], appearance_lora=ap[0], appearance_prompt=ap_prompt,
                motion_lora=mo[0], motion_prompt=mo_prompt, prompt=prompt, steps=1, teacher_steps=1,
                learning_rate=1e-4, seed=0, teacher_schedule=2, reference="x0_pred", frames=2)
    g.node("PreviewImage", images=tt[1])
    g.node("DualAdapterSaveLoRA", lora=tt[0], filename_prefix="customttt_merged", folder="output", precision="fp32")
    a = g.node("DualAdapterApplyLoRA", model=m[0], lora=tt[0], strength=1.0)
    e = g.node("DualAdapterTextEncode", model=m[0], prompt=prompt, negative_prompt="")
    s = g.node("DualAdapterSampler", model=a[0], embeds=e[0], frames=2, height=32, width=32, steps=2, cfg=9.0, seed=42,
               scheduler="ddim")
    d = g.node("DualAdapterVAEDecode", model=m[0], latent=s[0])
    g.node("SaveAnimatedWEBP", images=d[0], filename_prefix="dual_adapter/animatediff_customttt", fps=8.0)
    g.note("CustomTTT on AnimateDiff, as published", UNET_NOTE + (
        "- the CustomTTT nodes are the ones of every backbone; on AnimateDiff a block is a U-Net block where text "
        "enters (0-based: 2 = down_blocks.2, 5 = up_blocks.2, 6 = up_blocks.3), and *Prompt Influence* ranks them "
        "(its appearance_blocks / motion_blocks outputs can feed the trainings' blocks);\n"
        "- the authors' setting, which the nodes use on AnimateDiff when learning_rate is 0, blocks empty, "
        "teacher_cfg 0 and optimizer auto: rank 32; appearance LoRA on layers 2,6 (lr 1e-5, 500 steps, motion "
        "modules off), motion LoRA on layers 2,5 (lr 5e-5, 500 steps), Lion (installed: lion-pytorch) betas "
        "0.9/0.99 wd 0.1; TTT lr 1e-6 x 30 steps with teachers at 5 of 25 DDIM steps, CFG 9; sampling 25 DDIM "
        "steps, CFG 9."))
    return g


BUILDERS += [g_zeroscope_tap_ah, g_animatediff_customttt]


WAN_NOTE = """**Runs as shipped on the built-in `tiny-wan` model (a Wan 2.1-architecture transformer with random weights,
9 frames x 64 x 64, CPU, seconds): a pipeline check, it draws noise, not pictures.**

For a real Wan 2.1 / 2.2 text-to-video model:
- put a Wan diffusers folder (e.g. `Wan2.1-T2V-1.3B-Diffusers` or `Wan2.1-T2V-14B-Diffusers`, with `transformer/ vae/
  text_encoder/ tokenizer/ scheduler/`) in `models/Wan/` (one in `models/CogVideo/` is recognised too) and pick it in
  *Load Video Model*;
- set Load Photos / Load Clip Frames to 480 x 832 (Load Clip Frames: 81 frames, fps 16, Wan's rate), the sampler to
  81 frames, 480 x 832 (or 0 = the model's default), 50 steps, CFG 5, scheduler unipc (Wan's own; euler also works);
- replace the shipped example inputs (`examples/dog`, `examples/guitar.mp4`) with your own photos / clips, and the
  prompts with yours (docs/wan.md lists each Wan model's size and settings);
"""

WAN_SIZE = dict(height=64, width=64)


def _wan_clip(g: Graph) -> Node:
    return g.node("DualAdapterLoadClip", title="Motion clip", path="examples/guitar.mp4", frames=9, fps=8.0,
                  **WAN_SIZE)


def g_wan_dualreal_train(classes) -> Graph:
    g = Graph("wan_dualreal_train_sample", classes)
    m = g.node("DualAdapterLoadVideoModel", model="tiny-wan")
    ph = g.node("DualAdapterLoadPhotos", title="Subject photos", path="examples/dog", **WAN_SIZE)
    clip = _wan_clip(g)
    t = g.node("DualRealTrain", model=m[0], subject=ph[0], identity_prompt="dog *", motion=clip[0],
               motion_prompt="a person is playing guitar", steps=20, lr=1e-3, hidden_width=16, warmup_steps=4,
               name="wan_dog_guitar", checkpoint_every=10)
    g.node("DualRealSave", adapters=t[0], filename_prefix="wan_dog_guitar")
    g.node("PreviewImage", images=t[1])
    a = g.node("DualRealApply", model=m[0], adapters=t[0], reference_image=ph[0])
    e = g.node("DualAdapterTextEncode", model=m[0], prompt="dog * is playing guitar", negative_prompt="")
    s = g.node("DualAdapterSampler", model=a[0], embeds=e[0], steps=10, cfg=5.0, seed=42, scheduler="unipc")
    d = g.node("DualAdapterVAEDecode", model=m[0], latent=s[0])
    g.node("SaveAnimatedWEBP", images=d[0], filename_prefix="dual_adapter/wan_dualreal", fps=8.0)
    g.note("DualReal on Wan: train + sample", WAN_NOTE + (
        "- DualReal on Wan puts the DA-blocks beside each block's self-attention and feed-forward, on the video "
        "tokens (docs/wan.md lists the choices the paper leaves open for Wan);\n"
        "- the reference image: tiny-wan trains with the built-in random tiny CLIP; for a real Wan add *Load CLIP "
        "Vision* (`clip_vision_h.safetensors`, ViT-H/14) and connect it to `clip_vision` of Train and Apply DualReal;\n"
        "- the authors' setting (on CogVideoX; untested on real Wan weights): 1000 steps, lr 1e-3, 200 warm-up steps, "
        "motion_ratio 0.5, hidden 64, 7 groups; the adapters of a 1.3B model are about 119 M parameters."))
    return g


def g_wan_tap(classes) -> Graph:
    g = Graph("wan_tap_motion_lora", classes)
    m = g.node("DualAdapterLoadVideoModel", model="tiny-wan")
    clip = _wan_clip(g)
    t = g.node("DualAdapterTrainMotionLoRA", model=m[0], clip=clip[0], prompt="a person is playing guitar",
               preset="tap", rank=8, alpha=8.0, steps=20, learning_rate=1e-3, seed=0, gradient_checkpointing=False,
               name="wan_tap")
    g.node("DualAdapterSaveLoRA", lora=t[0], filename_prefix="tap/wan_guitar", folder="output", precision="bf16")
    g.node("PreviewImage", images=t[1])
    a = g.node("DualAdapterApplyLoRA", model=m[0], lora=t[0], strength=1.0)
    e = g.node("DualAdapterTextEncode", model=m[0], prompt="a dog is playing guitar", negative_prompt="")
    s = g.node("DualAdapterSampler", model=a[0], embeds=e[0], steps=10, cfg=5.0, seed=42, scheduler="unipc")
    d = g.node("DualAdapterVAEDecode", model=m[0], latent=s[0])
    g.node("SaveAnimatedWEBP", images=d[0], filename_prefix="dual_adapter/wan_tap_motion_lora", fps=8.0)
    g.note("TAP motion LoRA on Wan", WAN_NOTE + (
        "- preset tap puts the LoRA on Wan's self-attention `attn1` query and key only (never the value): the video "
        "keeps the base model's appearance and takes the clip's motion; the authors' setting: rank 32, alpha 32, "
        "dropout 0.1, learning rate 5e-4, 1000 steps, gradient checkpointing on;\n"
        "- Save LoRA writes diffusers' Wan key names (what `WanPipeline.load_lora_weights` reads); "
        "`dual_adapter.lora.formats` converts to ComfyUI's native and musubi-tuner / kohya names (docs/wan.md)."))
    return g


BUILDERS += [g_wan_dualreal_train, g_wan_tap]


# Core ComfyUI nodes of the native Wan graph (input specs as in ComfyUI 0.33, as for the native CogVideoX graph)
WAN_NATIVE_CORE_SPECS = {
    **NATIVE_CORE_SPECS,
    "UNETLoader": _core_spec(("MODEL",), {"unet_name": (["wan2.1_t2v_1.3B_fp16.safetensors"],),
                                           "weight_dtype": (["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"],)}),
    "CLIPLoader": _core_spec(("CLIP",), {"clip_name": (["umt5_xxl_fp8_e4m3fn_scaled.safetensors"],),
                                         "type": (["wan"],)}, {"device": (["default", "cpu"],)}),
    "VAELoader": _core_spec(("VAE",), {"vae_name": (["wan_2.1_vae.safetensors"],)}),
    "ModelSamplingSD3": _core_spec(("MODEL",), {"model": ("MODEL",), "shift": ("FLOAT", {"default": 3.0})}),
    "KSampler": _core_spec(("LATENT",), {
        "model": ("MODEL",), "seed": ("INT", {"default": 0, "control_after_generate": True}),
        "steps": ("INT", {"default": 20}), "cfg": ("FLOAT", {"default": 8.0}), "sampler_name": (["uni_pc", "euler"],),
        "scheduler": (["simple"],), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
        "latent_image": ("LATENT",), "denoise": ("FLOAT", {"default": 1.0})}),
}


def g_native_wan(classes) -> Graph:
    """Core loaders + KSampler with the pack's Apply nodes on a native Wan 2.1 MODEL (ComfyUI's own Wan templates'
    graph with Apply LoRA and Apply DualReal to MODEL between the loader and the sampler)."""
    g = Graph("wan_dualreal_lora_ksampler", {**WAN_NATIVE_CORE_SPECS, **classes}, subdir="native")
    m = g.node("UNETLoader", unet_name="wan2.1_t2v_1.3B_fp16.safetensors", weight_dtype="default")
    lo = g.node("DualAdapterLoadLoRA", lora_name="output/loras/tap/wan_guitar_00001_.safetensors")
    ml = g.node("DualAdapterApplyLoRANative", model=m[0], lora=lo[0], strength=1.0)
    ad = g.node("DualRealLoad", adapters_name="output/dualreal/wan_dog_guitar_00001_.safetensors")
    ph = g.node("LoadImage", image="dog.png")
    cv = g.node("CLIPVisionLoader", clip_name="clip_vision_h.safetensors")
    md = g.node("DualAdapterDualRealApplyNative", model=ml[0], adapters=ad[0], reference_image=ph[0], clip_vision=cv[0])
    ms = g.node("ModelSamplingSD3", title="Wan flow shift", model=md[0], shift=8.0)
    clip = g.node("CLIPLoader", clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan")
    pos = g.node("CLIPTextEncode", title="Prompt", text="dog * is playing guitar", clip=clip[0])
    neg = g.node("CLIPTextEncode", title="Negative prompt", text="", clip=clip[0])
    lat = g.node("EmptyHunyuanLatentVideo", title="Empty video latent (Wan 2.1: 16 ch, 4x time, 8x space)", width=832,
                 height=480, length=81, batch_size=1)
    ks = g.node("KSampler", model=ms[0], seed=42, steps=30, cfg=6.0, sampler_name="uni_pc", scheduler="simple",
                positive=pos[0], negative=neg[0], latent_image=lat[0], denoise=1.0)
    vae = g.node("VAELoader", vae_name="wan_2.1_vae.safetensors")
    dec = g.node("VAEDecode", samples=ks[0], vae=vae[0])
    g.node("SaveAnimatedWEBP", images=dec[0], filename_prefix="dual_adapter/native_wan_dualreal", fps=16.0)
    g.note("Native ComfyUI Wan 2.1 + DualReal + LoRA", (
        "**Needs real weights (no tiny model here): core ComfyUI's native Wan 2.1 text-to-video, as in ComfyUI's own "
        "Wan templates.**\n\n"
        "- transformer: `wan2.1_t2v_1.3B_fp16.safetensors` (or the 14B file) in `models/diffusion_models/`;\n"
        "- text encoder: `umt5_xxl_fp8_e4m3fn_scaled.safetensors` (or the fp16 one) in `models/text_encoders/`, CLIPLoader "
        "type `wan`; VAE: `wan_2.1_vae.safetensors` in `models/vae/`; reference: `clip_vision_h.safetensors` in "
        "`models/clip_vision/` and your subject photo in *Load Image*;\n"
        "- adapters: what *Save DualReal* wrote after training DualReal on the same Wan model in diffusers form (the "
        "Wan DualReal workflow; listed by *Load DualReal* as `output/dualreal/...`); LoRA: a Wan LoRA in any supported "
        "format (the pack's, diffusers / peft, ComfyUI native, musubi-tuner / kohya); core LoraLoaderModelOnly stacks "
        "with *Apply LoRA to MODEL*; drop either Apply node to use the other alone;\n"
        "- Wan 2.1 settings: 81 frames at 480 x 832, shift 8 (1.3B; 5 for 14B), uni_pc, CFG 6, 30-50 steps; "
        "see docs/native_comfyui.md and docs/wan.md."))
    return g


BUILDERS += [g_native_wan]


WAN_I2V_NOTE = """**Runs as shipped on the built-in `tiny-wan-i2v` model (a Wan 2.1 I2V-architecture transformer with random
weights, 9 frames x 64 x 64, CPU, seconds): a pipeline check, it draws noise, not pictures.**

For a real Wan image-to-video model:
- put a Wan 2.1 I2V diffusers folder (`Wan2.1-I2V-14B-480P-Diffusers`, with `image_encoder/` and
  `image_processor/`) or a Wan 2.2 TI2V-5B one (`Wan2.2-TI2V-5B-Diffusers`) in `models/Wan/` (one in
  `models/CogVideo/` is recognised too) and pick it in *Load Video Model*;
- set Load Photos to the video size and the sampler to 81 frames, 480 x 832 (TI2V-5B: 121 x 704 x 1280; or 0 = the
  model's default), 50 steps, CFG 5, scheduler unipc;
- replace the shipped photo (`examples/dog`) with your subject photo or keyframe (any size: it is fitted by cover,
  then centre-crop), and the prompts with yours (docs/wan.md, "Image-to-video");
"""


def g_wan_i2v(classes) -> Graph:
    g = Graph("wan_image_to_video", classes)
    m = g.node("DualAdapterLoadVideoModel", model="tiny-wan-i2v")
    ph = g.node("DualAdapterLoadPhotos", title="Subject photo (first frame)", path="examples/dog/00.png", **WAN_SIZE)
    clip = _wan_clip(g)
    t = g.node("DualAdapterTrainMotionLoRA", model=m[0], clip=clip[0], prompt="a person is playing guitar",
               preset="tap", rank=8, alpha=8.0, steps=10, learning_rate=1e-3, seed=0, gradient_checkpointing=False,
               name="wan_i2v_tap")
    g.node("PreviewImage", images=t[1])
    a = g.node("DualAdapterApplyLoRA", model=m[0], lora=t[0], strength=1.0)
    e = g.node("DualAdapterTextEncode", model=m[0], prompt="a dog is playing guitar", negative_prompt="")
    i = g.node("DualAdapterImageToVideo", model=m[0], embeds=e[0], image=ph[0])
    s = g.node("DualAdapterSampler", model=a[0], embeds=i[0], steps=10, cfg=5.0, seed=42, scheduler="unipc")
    d = g.node("DualAdapterVAEDecode", model=m[0], latent=s[0])
    g.node("SaveAnimatedWEBP", images=d[0], filename_prefix="dual_adapter/wan_image_to_video", fps=8.0)
    g.note("Wan image-to-video with a motion LoRA", WAN_I2V_NOTE + (
        "- *Image To Video (first frame)* attaches the photo to the prompt: the video starts from it;\n"
        "- the motion LoRA (TAP: self-attention query and key) is trained here on the clip, each clip conditioned on "
        "its own first frame; to use a LoRA you already have, replace *Train Motion LoRA* with *Load LoRA* (a Wan "
        "text-to-video LoRA of the same size applies too: the image projections get none); delete *Apply LoRA* "
        "for plain image-to-video."))
    return g


BUILDERS += [g_wan_i2v]


def build_all(classes=None) -> list[Graph]:
    classes = classes or node_classes()
    graphs = []
    for b in BUILDERS:
        try:
            graphs.append(b(classes))
        except KeyError as e:  # a node module of another method is not there (yet)
            print(f"skip {b.__name__}: {e}", file=sys.stderr)
    return graphs


if __name__ == "__main__":
    for g in build_all():
        g.save()
        print(f"wrote example_workflows/{g.name}.json (+ .jpg, .webp) and {g.api_path().relative_to(ROOT)}")
