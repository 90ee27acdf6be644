"""Which torch module call computes each ONNX tensor, so hooks on the exported module can observe it.

The dynamo exporter keeps parameter names and records each node's module path in the node
metadata "pkg.torch.onnx.name_scopes". The rules, in order:

1. input 0 of a Conv/Gemm/MatMul whose weight initializer is "<module>.weight"
   -> the input of <module> (forward pre-hook); the k-th ONNX node using that weight is call k.
2. input 0 of a node whose leaf module runs it (a BatchNorm's input) -> that module's input.
3. a graph input -> the input of the whole module.
4. otherwise the output of the node's leaf module (forward hook), e.g. a Relu node -> the ReLU
   module, a Conv with a folded BatchNorm -> the BatchNorm module; the k-th ONNX node under that
   module is call k (checked against the number of calls per forward by the collector; a mismatch
   drops the tensor).
"""
from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass

import onnx

from calibration.graph import Graph


@dataclass(frozen=True)
class Probe:
    module: str  # name in module.named_modules() ("" = the whole module)
    kind: str  # "input" | "output"
    call: int  # which call of the module within one forward


def leaf_scope(node) -> str | None:
    """The name of the innermost module whose forward ran this ONNX node (None when not recorded)."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return None
            return scopes[-2] if len(scopes) >= 2 else None
    return None


def nodes_per_scope(onnx_model: onnx.ModelProto) -> dict[str, int]:
    """Leaf module name -> how many ONNX nodes it ran (= its calls per forward, for a leaf)."""
    counts: dict[str, int] = defaultdict(int)
    for n in onnx_model.graph.node:
        s = leaf_scope(n)
        if s is not None:
            counts[s] += 1
    return counts


def map_tensors(onnx_model: onnx.ModelProto, module, tensors) -> tuple[dict[str, Probe], list[str]]:
    """(tensor -> Probe, unmapped tensor names). See the module docstring for the rules."""
    mods = dict(module.named_modules())
    # only leaf modules: a container's scope also holds inline ops (torch.cat in a DenseLayer)
    leaves = {k for k, m in mods.items() if k and not any(True for _ in m.children())}
    gr = Graph(onnx_model)
    by_weight: dict[str, list] = defaultdict(list)
    for n in gr.weighted_nodes():
        by_weight[n.input[1]].append(n)
    by_scope: dict[str, list] = defaultdict(list)
    for n in onnx_model.graph.node:
        s = leaf_scope(n)
        if s is not None:
            by_scope[s].append(n)
    graph_inputs = [i.name for i in onnx_model.graph.input if i.name not in gr.init]
    probes, unmapped = {}, []
    for t in tensors:
        probe = None
        for c, idx in gr.consumers.get(t, []):
            w = c.input[1] if len(c.input) > 1 else ""
            if idx == 0 and gr.weight_axis(c) is not None and w.endswith(".weight") and w[:-7] in mods:
                probe = Probe(w[:-7], "input", by_weight[w].index(c))
                break
        if probe is None:  # input 0 of a node run by a leaf module (a BN's input is a Concat's output)
            for c, idx in gr.consumers.get(t, []):
                sc = leaf_scope(c)
                if idx == 0 and sc in leaves:
                    probe = Probe(sc, "input", by_scope[sc].index(c))
                    break
        if probe is None and t in graph_inputs[:1]:
            probe = Probe("", "input", 0)
        if probe is None and t in gr.producer:
            p = gr.producer[t]
            s = leaf_scope(p)
            if s in leaves and p.output[0] == t:
                probe = Probe(s, "output", by_scope[s].index(p))
        if probe is None:
            unmapped.append(t)
        else:
            probes[t] = probe
    return probes, unmapped
