"""Mixture-of-experts heads (`moe_static`, `moe_dynamic`) and their analyses: gates against hand computations,
static versus dynamic routing, load balancing, grouped experts for 500 labels, gradients, the engine's recorded gates,
and the `mlic.studies.moe` summaries on planted gate patterns."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mlic.data.table import LabelledImages
from mlic.models import create_head
from mlic.models.heads.moe import group_layout, load_balancing_loss, route
from mlic.studies import moe
from tests.conftest import tiny_config

matplotlib.use("Agg")

SMALL = {"hidden_dim": 8, "dim_feedforward": 16, "num_heads": 2, "expert_hidden": 6, "dropout": 0.0}


def _labels_of(table: LabelledImages) -> tuple:
    """What a head binds to: the training labels and class names."""
    return table.labels, table.class_names


def _head(name: str, classes: int = 5, **kwargs: object) -> torch.nn.Module:
    return create_head(name, in_features=12, num_classes=classes, **{**SMALL, **kwargs}).eval()


def _table(labels: np.ndarray) -> LabelledImages:
    return LabelledImages(paths=[f"i{i}.png" for i in range(len(labels))], labels=labels,
                          class_names=[f"c{i}" for i in range(labels.shape[1])])


def _ffn(x: torch.Tensor, bank: torch.nn.Module, g: int, e: int) -> torch.Tensor:
    """Expert e of bank g applied to `x [d]`, written out."""
    return F.relu(x @ bank.w1[g, e] + bank.b1[g, e]) @ bank.w2[g, e] + bank.b2[g, e]


# ----------------------------------------------------------------------------------------------------- routing
def test_topk_routing_equals_a_hand_computed_softmax_over_the_chosen_logits() -> None:
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0]])
    weights, probs = route(logits, routing="topk", top_k=2)
    e = math.e
    torch.testing.assert_close(weights, torch.tensor([[e / (e + 1), 0.0, 1 / (e + 1), 0.0]]))
    torch.testing.assert_close(probs, torch.softmax(logits, -1))
    hot, _ = route(logits, routing="topk", top_k=2, temperature=2.0)  # logits halved: softmax([1, 0.5])
    r = math.exp(0.5)
    torch.testing.assert_close(hot, torch.tensor([[r / (r + 1), 0.0, 1 / (r + 1), 0.0]]))
    dense, _ = route(logits, routing="softmax", temperature=0.5)
    torch.testing.assert_close(dense, torch.softmax(2 * logits, -1))


@pytest.mark.parametrize("name", ["moe_static", "moe_dynamic"])
@pytest.mark.parametrize("routing,k", [("softmax", 0), ("topk", 1), ("topk", 2), ("topk", 3)])
def test_gates_sum_to_one_and_topk_keeps_exactly_k(name: str, routing: str, k: int) -> None:
    torch.manual_seed(0)
    head = _head(name, n_shared=2, n_specific=2, routing=routing, top_k=max(k, 1))
    logits, aux = head.forward_aux(torch.randn(6, 12, 3, 3))
    gates = aux["gates"]
    assert logits.shape == (6, 5) and gates.shape == (6, 5, 4)
    torch.testing.assert_close(gates.sum(-1), torch.ones(6, 5))
    assert (gates >= 0).all()
    nonzero = (gates > 0).sum(-1)
    assert (nonzero == (4 if routing == "softmax" else k)).all()


def test_static_gates_ignore_the_image_and_equal_the_query_formula() -> None:
    torch.manual_seed(0)
    for gate_input in ("query", "learned"):
        head = _head("moe_static", n_shared=1, n_specific=2, gate_input=gate_input)
        a = head.forward_aux(torch.randn(3, 12, 3, 3))[1]["gates"]
        b = head.forward_aux(5 * torch.randn(3, 12, 2, 4) + 1)[1]["gates"]
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a[0], a[2])
    head = _head("moe_static", n_shared=1, n_specific=2)
    gates = head.forward_aux(torch.randn(2, 12, 3, 3))[1]["gates"][0]
    for c in range(5):  # HSQ-style per-label gate of the label's own query embedding
        expected = torch.softmax(head.gate_weight[c] @ head.query_embed.weight[c] + head.gate_bias[c], -1)
        torch.testing.assert_close(gates[c], expected)


@pytest.mark.parametrize("gate_input", ["image+label", "image", "label"])
def test_dynamic_gates_change_with_the_image(gate_input: str) -> None:
    torch.manual_seed(0)
    head = _head("moe_dynamic", n_shared=1, n_specific=2, gate_input=gate_input)
    x = torch.randn(2, 12, 3, 3)
    gates = head.forward_aux(x)[1]["gates"]
    assert not torch.allclose(gates[0], gates[1], atol=1e-4)
    again = head.forward_aux(torch.cat([x[1:], x[:1]]))[1]["gates"]  # the same images swapped: the gates follow
    torch.testing.assert_close(again, gates.flip(0))


def test_image_gate_is_a_per_label_map_of_the_pooled_feature() -> None:
    torch.manual_seed(0)
    head = _head("moe_dynamic", n_shared=2, n_specific=1, gate_input="image")
    x = torch.randn(2, 12, 3, 3)
    gates = head.forward_aux(x)[1]["gates"]
    pooled = head.image_norm(head.input_proj(x.mean(dim=(2, 3))))  # a Linear here: hidden_dim 8 ≠ 12 channels
    for b in range(2):
        for c in range(5):
            expected = torch.softmax(head.gate_weight[c] @ pooled[b] + head.gate_bias[c], -1)
            torch.testing.assert_close(gates[b, c], expected)


# ----------------------------------------------------------------------------------------------------- experts
def test_group_layout_matches_a_hand_layout() -> None:
    index, position = group_layout(np.array([1, 0, 1, 2, 1]), 3)
    assert index.tolist() == [[1, 0, 0], [0, 2, 4], [3, 0, 0]]
    assert position.tolist() == [3, 0, 4, 6, 5]
    index, position = group_layout(np.arange(4), 4)
    assert index.tolist() == [[0], [1], [2], [3]] and position.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("groups", [None, [1, 0, 1, 2, 1]])
def test_logits_equal_an_explicit_per_label_mixture(groups: list[int] | None) -> None:
    torch.manual_seed(0)
    head = _head("moe_dynamic", n_shared=2, n_specific=2, expert_groups=groups)
    x = torch.randn(2, 12, 3, 3)
    with torch.no_grad():
        labels, _ = head.decode(x)
        logits, aux = head.forward_aux(x)
        gates = aux["gates"]
        group_of = groups or list(range(5))
        for b in range(2):
            for c in range(5):
                q = labels[b, c]
                outs = [_ffn(q, head.specific, group_of[c], t) for t in range(2)]
                outs += [_ffn(q, head.shared, 0, s) for s in range(2)]
                h = q + sum(g * o for g, o in zip(gates[b, c], outs))
                torch.testing.assert_close(logits[b, c], h @ head.fc.W[0, c] + head.fc.b[0, c], rtol=1e-4,
                                           atol=1e-5)


def test_five_hundred_labels_with_grouped_experts_from_the_training_graph() -> None:
    rng = np.random.default_rng(0)
    C, k = 500, 20
    planted = rng.permutation(C) % k  # 20 planted groups of 25 labels that co-occur only among themselves
    labels = np.zeros((3000, C), np.uint8)
    for row in labels:
        members = np.flatnonzero(planted == rng.integers(k))
        row[rng.choice(members, size=3, replace=False)] = 1
    torch.manual_seed(0)
    head = create_head("moe_dynamic", in_features=16, num_classes=C, hidden_dim=16, dim_feedforward=32, num_heads=2,
                       expert_hidden=8, n_shared=2, n_specific=1, expert_groups=k, routing="topk", top_k=2).eval()
    assert head.specific.w1.shape[:2] == (k, 1) and not bool(head.bound)
    head.bind(*_labels_of(_table(labels)))
    assert bool(head.bound)
    found = head.group_of.numpy()
    pairs = {(int(a), int(b)) for a, b in zip(found, planted)}
    assert len(pairs) == k  # the partition is the planted one, up to renaming
    x = torch.randn(4, 16, 2, 2)
    logits, aux = head.forward_aux(x)
    assert logits.shape == (4, C) and aux["gates"].shape == (4, C, 3)
    assert ((aux["gates"] > 0).sum(-1) == 2).all()
    with torch.no_grad():  # labels of one group use that group's specific expert
        labels_q, _ = head.decode(x)
        outputs = head.expert_outputs(labels_q)
        for c in (0, 137, 499):
            torch.testing.assert_close(outputs[1, c, 0], _ffn(labels_q[1, c], head.specific, int(found[c]), 0),
                                       rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="500 classes"):
        head.bind(*_labels_of(_table(labels[:, :10])))


def test_bound_groups_survive_a_checkpoint_round_trip() -> None:
    labels = np.zeros((40, 6), np.uint8)
    labels[::2, [0, 5]] = 1
    labels[1::2, [1, 2, 3, 4]] = 1
    torch.manual_seed(0)
    head = _head("moe_static", classes=6, expert_groups=2)
    head.bind(*_labels_of(_table(labels)))
    assert head.group_of.tolist() in ([0, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 1])
    x = torch.randn(2, 12, 2, 2)
    expected = head(x)
    torch.manual_seed(1)
    fresh = _head("moe_static", classes=6, expert_groups=2)
    fresh(x)  # caches the unbound layout, which loading must replace
    fresh.load_state_dict(head.state_dict())
    torch.testing.assert_close(fresh(x), expected)
    assert bool(fresh.bound)


def test_gradients_reach_exactly_the_experts_that_were_routed_to() -> None:
    torch.manual_seed(0)
    head = _head("moe_static", classes=6, gate_input="learned", n_specific=2, n_shared=2, routing="topk", top_k=1,
                 expert_groups=[0, 0, 1, 1, 2, 2]).train()
    with torch.no_grad():  # planted routing: label c → slot (0, 1, 2, 0, 0, 1)[c]
        head.gate_logits_.zero_()
        for c, slot in enumerate((0, 1, 2, 0, 0, 1)):
            head.gate_logits_[c, slot] = 5.0
    head(torch.randn(3, 12, 2, 2)).sum().backward()
    grad = head.specific.w1.grad.abs().sum(dim=(2, 3))  # [group, expert]
    routed = torch.tensor([[True, True], [True, False], [True, True]])
    assert (grad[routed] > 0).all() and (grad[~routed] == 0).all()
    shared = head.shared.w1.grad.abs().sum(dim=(2, 3))[0]
    assert shared[0] > 0 and shared[1] == 0  # only label 2 chose a shared expert: the first

    dynamic = _head("moe_dynamic", n_shared=2, n_specific=2, routing="topk", top_k=1).train()
    x = torch.randn(2, 12, 3, 3)
    gates = dynamic.forward_aux(x)[1]["gates"].detach()
    dynamic(x).sum().backward()
    specific_used = (gates[..., :2] > 0).any(0)  # [label, expert]
    specific_grad = dynamic.specific.w2.grad.abs().sum(dim=(2, 3))
    assert torch.equal(specific_grad > 0, specific_used)
    shared_used = (gates[..., 2:] > 0).flatten(0, 1).any(0)
    assert torch.equal(dynamic.shared.w2.grad.abs().sum(dim=(2, 3))[0] > 0, shared_used)


# ----------------------------------------------------------------------------------------------------- balancing
def test_load_balancing_is_one_for_uniform_routing_and_larger_otherwise() -> None:
    uniform = torch.full((8, 3, 4), 0.25)
    for kind in ("importance", "switch"):
        assert load_balancing_loss(uniform, uniform, kind=kind).item() == pytest.approx(1.0)
    collapsed = torch.zeros(8, 3, 4)
    collapsed[..., 2] = 1.0
    assert load_balancing_loss(collapsed, collapsed).item() == pytest.approx(4.0)  # E when one slot takes all
    torch.manual_seed(0)
    for _ in range(20):
        probs = torch.softmax(2 * torch.randn(8, 3, 4), -1)
        value = load_balancing_loss(probs, probs).item()
        assert value > 1.0
        assert load_balancing_loss(probs, probs, kind="switch").item() == pytest.approx(value)  # dense: f = P
    # the documented caveat of the Switch form under top-1: every image to its argmax, the runner-up elsewhere
    probs = torch.tensor([[[0.5, 0.0, 0.5]], [[0.0, 0.5, 0.5]]])
    routed = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])
    assert load_balancing_loss(probs, routed, kind="switch").item() == pytest.approx(3 * (0.5 * 0.25 + 0.5 * 0.25))


def test_forward_train_returns_the_weighted_balance_term_and_it_is_the_weight_when_uniform() -> None:
    torch.manual_seed(0)
    head = _head("moe_dynamic", n_shared=1, n_specific=2, balance_weight=0.5).train()
    x = torch.randn(4, 12, 3, 3)
    _, losses = head.forward_train(x)
    head.eval()
    _, aux = head.forward_aux(x)
    torch.testing.assert_close(losses["load_balance"], 0.5 * load_balancing_loss(aux["gates"], aux["gates"]))
    with torch.no_grad():
        head.gate_weight.zero_()
        head.gate_bias.zero_()
    torch.testing.assert_close(head.forward_train(x)[1]["load_balance"], torch.tensor(0.5))
    assert _head("moe_static").forward_train(x)[1] == {}  # static default: no balancing term


def test_invalid_options_name_the_choices() -> None:
    with pytest.raises(ValueError, match="query"):
        _head("moe_static", gate_input="image")
    with pytest.raises(ValueError, match="image\\+label"):
        _head("moe_dynamic", gate_input="query")
    with pytest.raises(ValueError, match="top_k"):
        _head("moe_dynamic", n_shared=1, n_specific=1, routing="topk", top_k=3)
    with pytest.raises(ValueError, match="at least one expert"):
        _head("moe_static", n_shared=0, n_specific=0)
    with pytest.raises(ValueError, match="non-negative"):
        _head("moe_static", expert_groups=[0, 1])


def test_shared_only_and_specific_only_heads_work() -> None:
    torch.manual_seed(0)
    for n_shared, n_specific in ((2, 0), (0, 2)):
        head = _head("moe_dynamic", n_shared=n_shared, n_specific=n_specific)
        logits, aux = head.forward_aux(torch.randn(2, 12, 2, 2))
        assert logits.shape == (2, 5) and aux["gates"].shape == (2, 5, 2)
        assert (head.shared is None) == (n_shared == 0) and (head.specific is None) == (n_specific == 0)


# ----------------------------------------------------------------------------------------------------- analyses
def test_cooccurrence_entropy_matches_hand_values() -> None:
    # label 0 appears twice with 1 and twice with 2; label 1 only with 0; label 3 alone
    rows = [[1, 1, 0, 0]] * 2 + [[1, 0, 1, 0]] * 2 + [[0, 0, 0, 1]]
    h = moe.cooccurrence_entropy(np.asarray(rows))
    np.testing.assert_allclose(h, [math.log(2) / math.log(3), 0.0, 0.0, 0.0])
    np.testing.assert_allclose(moe.cooccurrence_entropy(np.asarray(rows), normalize=False)[0], math.log(2))


def test_gate_summaries_on_planted_gates() -> None:
    # 4 images, 2 labels, slots (specific 1, shared 1); contexts 0, 0, 1, 1
    gates = np.zeros((4, 2, 2), np.float32)
    gates[:, 0] = [[1, 0], [1, 0], [0, 1], [0, 1]]  # label 0: specific in context 0, shared in context 1
    gates[:, 1] = [0.25, 0.75]  # label 1: the same everywhere
    contexts = np.array([0, 0, 1, 1])
    targets = np.array([[1, 1], [0, 1], [1, 1], [1, 0]])
    np.testing.assert_allclose(moe.mean_gates(gates), [[0.5, 0.5], [0.25, 0.75]])
    np.testing.assert_allclose(moe.mean_gates(gates, targets)[0], [1 / 3, 2 / 3])  # images 0, 2, 3
    np.testing.assert_allclose(moe.shared_share(gates, 1), [0.5, 0.75])
    np.testing.assert_allclose(moe.context_dependence(gates, contexts), [0.5, 0.0])
    assert moe.most_context_dependent(gates, contexts) == 0
    frame = moe.gates_by_context(gates, contexts, 0, context_names=["a", "b"], slots=moe.slot_names(1, 1))
    assert frame["context"].tolist() == ["a", "b"] and frame["images"].tolist() == [2, 2]
    assert frame["specific 1"].tolist() == [1.0, 0.0] and frame["shared 1"].tolist() == [0.0, 1.0]
    assert moe.gates_by_context(gates, contexts, 0, targets=targets)["images"].tolist() == [1, 2]
    assert moe.slot_names(2, 1) == ["specific 1", "specific 2", "shared 1"]

    train = np.array([[1, 1], [1, 0], [1, 0], [0, 1]])
    routing = moe.label_routing({"dyn": gates, "stat": gates[:1].repeat(4, 0)}, 1, train, ["x", "y"],
                                contexts=contexts)
    assert routing["head"].tolist() == ["dyn", "dyn", "stat", "stat"]
    np.testing.assert_allclose(routing["frequency"], [0.75, 0.5, 0.75, 0.5])
    np.testing.assert_allclose(routing["specific_share"], [0.5, 0.25, 1.0, 0.25])
    np.testing.assert_allclose(routing["context_dependence"], [0.5, 0.0, 0.0, 0.0])


def test_expert_utilisation_on_planted_routing() -> None:
    uniform = np.full((5, 4, 3), 1 / 3)
    table = moe.expert_utilisation(uniform, 1, 2, group_of=np.array([0, 0, 1, 1]))
    assert table["expert"].tolist() == ["g0/specific 1", "g1/specific 1", "shared 1", "shared 2"]
    np.testing.assert_allclose(table["utilisation"], 1 / 3)
    np.testing.assert_allclose(table["load"], [1 / 6, 1 / 6, 1 / 3, 1 / 3])
    assert table["load"].sum() == pytest.approx(1.0) and table["labels"].tolist() == [2, 2, 4, 4]
    top1 = np.zeros((2, 2, 3))
    top1[:, 0, 0] = 1  # label 0 always its specific expert
    top1[0, 1, 2] = top1[1, 1, 1] = 1  # label 1 alternates between the shared ones
    table = moe.expert_utilisation(top1, 1, 2)
    np.testing.assert_allclose(table["load"], [0.5, 0.0, 0.25, 0.25])
    np.testing.assert_allclose(table["routed"], [1.0, 0.0, 0.25, 0.25])
    with pytest.raises(ValueError, match="slots"):
        moe.expert_utilisation(top1, 2, 2)


def test_seed_summary_and_its_metrics() -> None:
    table = pd.DataFrame({"variant": ["a", "a", "b"], "seed": [0, 1, 0], "test/mAP": [70.0, 72.0, 60.0],
                          "test_shift/mAP": [50.0, 54.0, 40.0]})
    summary = moe.seed_summary(table)
    assert summary["variant"].tolist() == ["a", "b"] and summary["seeds"].tolist() == [2, 1]
    assert summary.loc[0, "test/mAP"] == "71.00 ± 1.41" and summary.loc[1, "test_shift/mAP_std"] == 0.0
    methods = moe.method_metrics(summary)
    assert methods["a"]["test_shift"]["mAP"] == 52.0
    assert methods["a"]["test_shift"]["mAP_std"] == pytest.approx(2 ** 1.5)
    assert moe.summary_metrics(summary, lead="b") == methods["b"]
    assert moe.summary_metrics(summary, lead="absent") == methods["a"]  # not trained: the first head
    routing = pd.DataFrame({"head": ["a", "a"], "shared_share": [0.2, 0.6], "context_dependence": [0.1, np.nan]})
    methods = moe.method_metrics(summary, routing=routing, gate_split="test")
    assert methods["a"]["test"]["shared_share"] == pytest.approx(0.4) and methods["a"]["test"]["mAP"] == 71.0
    assert methods["a"]["test"]["context_dependence"] == 0.1 and "shared_share" not in methods["b"]["test"]


def test_moe_figures_and_the_explorer_build() -> None:
    from matplotlib.figure import Figure

    from mlic import plots

    rng = np.random.default_rng(0)
    gates = rng.dirichlet(np.ones(3), size=(30, 4)).astype(np.float32)
    contexts = rng.integers(0, 3, 30)
    targets = (rng.random((30, 4)) < 0.6).astype(np.uint8)
    slots = moe.slot_names(1, 2)
    table = pd.DataFrame({"variant": ["gap", "gap", "moe", "moe"], "seed": [0, 1, 0, 1],
                          "test/mAP": [60.0, 61.0, 70.0, 69.0], "test_shift/mAP": [40.0, 41.0, 45.0, 44.0]})
    routing = moe.label_routing({"moe": gates}, 1, targets, list("abcd"), targets=targets, contexts=contexts)
    figures = [plots.moe_heads(table), plots.gate_heatmaps({"moe": moe.mean_gates(gates)}, list("abcd"), slots),
               plots.gates_per_image(gates[:, 0], contexts, slots, context_names=["x", "y", "z"], label_name="a"),
               plots.gates_per_image(gates[:0, 0], contexts[:0], slots),
               plots.routing_vs_labels(routing),
               plots.expert_utilisation({"moe": moe.expert_utilisation(gates, 1, 2)}, uniform=1 / 3)]
    assert all(isinstance(f, Figure) for f in figures)
    widget = plots.gate_explorer({"moe": gates}, contexts, list("abcd"), slots, context_names=["x", "y", "z"],
                                 targets=targets)
    head_pick, label_pick, context_pick = widget.children[0].children
    assert [o[0] for o in context_pick.options] == ["all", "x", "y", "z"] and label_pick.value == 0
    context_pick.value = 1  # redraws, also without a widget front end
    label_pick.value = 3
    matplotlib.pyplot.close("all")


# ----------------------------------------------------------------------------------------------------- engine
@pytest.mark.slow
def test_engine_records_gates_and_trains_moe_heads_over_seeds(scenes_root: Path, tmp_path: Path) -> None:
    base = tiny_config(scenes_root, tmp_path / "moe", **{"model.freeze_backbone": True, "train.epochs": 1,
                                                          "train.ema_decay": None})
    small = {**SMALL, "n_shared": 2, "n_specific": 1}
    heads = {"moe_static": {"head": "moe_static", "head_kwargs": small},
             "moe_dynamic": {"head": "moe_dynamic", "head_kwargs": {**small, "expert_groups": 5}}}
    table = moe.train_seeds(base, heads, [0, 1])
    assert table[["variant", "seed"]].values.tolist() == [["moe_static", 0], ["moe_dynamic", 0],
                                                           ["moe_static", 1], ["moe_dynamic", 1]]
    assert table["test/mAP"].between(0, 100).all() and table["test_shift/mAP"].notna().all()
    dirs = moe.run_dirs(table, 0)
    from mlic.runs import Run

    saved = Run(dirs["moe_dynamic"]).predictions("test")
    assert saved["aux_gates"].dtype == np.float16 and saved["aux_gates"].shape == (48, 20, 3)
    gates = moe.load_gates(dirs["moe_dynamic"], "test")
    np.testing.assert_allclose(gates.sum(-1), 1.0, atol=3e-3)
    static = moe.load_gates(dirs["moe_static"], "test")
    np.testing.assert_allclose(static, np.broadcast_to(static[:1], static.shape))  # one gate per label, any image
    groups = moe.head_groups(dirs["moe_dynamic"])
    assert groups.shape == (20,) and sorted(set(groups.tolist())) == [0, 1, 2, 3, 4]
    from mlic.data.sources import load_split
    from mlic.models.label_graph import label_partition

    train = load_split("scenes", str(scenes_root), "train")
    np.testing.assert_array_equal(groups, label_partition(train.labels, "cgp", 5))  # bound to the training split
    summary = moe.seed_summary(table)
    assert summary["seeds"].tolist() == [2, 2]


@pytest.mark.parametrize("name", ["moe_static", "moe_dynamic"])
def test_whole_model_gradients_reach_the_backbone_and_every_head_parameter(name: str) -> None:
    from mlic.models import create_model

    torch.manual_seed(0)
    model = create_model("test_efficientnet", name, 4, pretrained=False,
                         head_kwargs={**SMALL, "n_shared": 1, "n_specific": 1})
    # 64 px: a 2 × 2 feature map; at 32 px one token would make every attention weight 1 and the queries' gradient 0
    logits, losses = model(torch.randn(2, 3, 64, 64), with_aux_loss=True)
    (logits.sum() + sum(losses.values(), torch.zeros(()))).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters() if p.requires_grad)
