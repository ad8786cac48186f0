"""The headless runner (``python -m dual_adapter run``) refuses malformed workflows by node id, without a
traceback, and runs workflows of any depth."""
from __future__ import annotations

import json

import pytest

from dual_adapter.errors import DualAdapterError
from dual_adapter.graph import load_workflow, run_workflow, validate_workflow


class Const:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}

    def run(self, value=0):
        return (value,)


class Inc:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT",)}}

    def run(self, x):
        return (x + 1,)


class Show:
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT",)}}

    def run(self, x):
        return {"ui": {"text": (str(x),)}}


CLASSES = {"Const": Const, "Inc": Inc, "Show": Show}


def test_a_chain_of_3000_nodes_runs():
    """The dependency walk was recursive: a chain of 3000 nodes hit Python's recursion limit."""
    n = 3000
    wf = {"0": {"class_type": "Const", "inputs": {"value": 5}}}
    for i in range(1, n):
        wf[str(i)] = {"class_type": "Inc", "inputs": {"x": [str(i - 1), 0]}}
    wf["out"] = {"class_type": "Show", "inputs": {"x": [str(n - 1), 0]}}
    out = run_workflow(wf, CLASSES)
    assert out["ui:out"]["text"] == (str(5 + n - 1),)
    wf["0"] = {"class_type": "Inc", "inputs": {"x": [str(n - 1), 0]}}  # close the chain into a loop
    with pytest.raises(DualAdapterError, match="cycle through node"):
        run_workflow(wf, CLASSES)


@pytest.mark.parametrize("wf, msg", [
    ({"1": {"class_type": ["Show"], "inputs": {}}}, r"node 1: class_type must be a string.*\['Show'\]"),
    ({"1": {"class_type": "Show", "inputs": "x=1"}}, r"node 1 \(Show\): inputs must be an object"),
    ({"1": ["Show"]}, r"node 1 is a list"),
    ({"1": {"inputs": {}}}, r"node 1: class_type must be a string.*None"),
    ({}, "the workflow has no nodes"),
], ids=["class-type-list", "inputs-string", "node-list", "no-class-type", "empty"])
def test_malformed_workflows_are_refused_naming_the_node(wf, msg):
    import re

    assert any(re.search(msg, e) for e in validate_workflow(wf, CLASSES))
    with pytest.raises(DualAdapterError, match=msg):
        run_workflow(wf, CLASSES)


def _run_cli(path, capsys):
    from dual_adapter.cli import main

    rc = main(["run", str(path)])
    return rc, capsys.readouterr()


@pytest.mark.parametrize("text, msg", [
    ("{}", "the workflow has no nodes"),
    ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    (json.dumps({"1": {"class_type": ["SaveImage"], "inputs": {}}}), "node 1: class_type must be a string"),
    (json.dumps({"1": {"class_type": "SaveImage", "inputs": "images"}}), r"node 1 \(SaveImage\): inputs must be"),
    ("[1, 2]", "not an object of nodes"),
], ids=["empty", "nested-200k", "class-type-list", "inputs-string", "top-level-list"])
def test_the_cli_refuses_malformed_workflows_without_a_traceback(tmp_path, capsys, text, msg):
    """An empty workflow used to report 'workflow done' with exit 0; the others ended in tracebacks."""
    import re

    p = tmp_path / "wf.json"
    p.write_text(text)
    rc, cap = _run_cli(p, capsys)
    assert rc == 2 and re.search(msg, cap.err), cap.err[-500:]
    assert "Traceback" not in cap.err and "workflow done" not in cap.err
    with pytest.raises(DualAdapterError, match=msg):
        load_workflow(p)
