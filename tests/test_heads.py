"""Heads: ML-Decoder, Query2Label, ML-GCN, graph re-weighting — against explicit computations, the
reference's toy adjacency, checkpoints, the engine's dataset binding, and the head-comparison helpers."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlic.core.config import RunConfig
from mlic.core.io import load_checkpoint, save_checkpoint
from mlic.data.table import LabelledImages
from mlic.inference import evaluate_checkpoint
from mlic.models import create_head, create_model
from mlic.models.heads.ml_gcn import GraphAttention, graph_propagation
from mlic.models.heads.query2label import sine_position_encoding, token_grid
from mlic.models.profile import count_flops, count_parameters, profile_model
from mlic.runs import Run, load_model
from mlic.studies.heads import attention_examples, classifier_similarity, head_overrides, train_heads
from mlic.train import fit
from tests.conftest import tiny_config

SMALL = {
    "ml_decoder": {"decoder_embedding": 16, "num_heads": 2, "dim_feedforward": 24},
    "query2label": {"hidden_dim": 16, "dim_feedforward": 24, "num_heads": 2},
    "ml_gcn": {"label_embeddings": "learned", "embedding_dim": 6, "hidden_dim": 10},
    "gat_reweight": {"label_embeddings": "learned", "embedding_dim": 6},
}

# The reference toy graph (implementations.md §12): M = [[0,6,1],[6,0,3],[1,3,0]], N = [10,8,4] from these 13 images.
TOY_ROWS = [[1, 1, 0]] * 5 + [[1, 1, 1]] + [[0, 1, 1]] * 2 + [[1, 0, 0]] * 4 + [[0, 0, 1]]
TOY_PROPAGATION = [[0.888889, 0.210818, 0.0], [0.105409, 0.8, 0.105409], [0.0, 0.0, 0.888889]]


def _labels_of(table: LabelledImages) -> tuple:
    """What a head binds to: the training labels and class names."""
    return table.labels, table.class_names


def _table(rows: list[list[int]], names: list[str] | None = None) -> LabelledImages:
    labels = np.asarray(rows, dtype=np.uint8)
    names = names or [f"class {i}" for i in range(labels.shape[1])]
    return LabelledImages(paths=[f"img{i}.png" for i in range(len(labels))], labels=labels, class_names=names)


def _random_table(n: int, c: int, seed: int = 0) -> LabelledImages:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.4).astype(np.uint8)
    labels[:, 1] |= labels[:, 0]  # a strong pair, so the graph has edges
    return _table(labels.tolist())


# ----------------------------------------------------------------------------------------------------- ML-Decoder
def _explicit_attention(mha: torch.nn.MultiheadAttention, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of one query `[d]` over `kv [N, d]`, written out head by head."""
    d = q.shape[-1]
    w_q, w_k, w_v = mha.in_proj_weight.split(d)
    b_q, b_k, b_v = mha.in_proj_bias.split(d)
    heads = mha.num_heads
    qh = (q @ w_q.T + b_q).view(heads, -1)
    kh = (kv @ w_k.T + b_k).view(len(kv), heads, -1)
    vh = (kv @ w_v.T + b_v).view(len(kv), heads, -1)
    outs = []
    for h in range(heads):
        weights = torch.softmax(kh[:, h] @ qh[h] / math.sqrt(d // heads), dim=0)
        outs.append(weights @ vh[:, h])
    return mha.out_proj(torch.cat(outs))


def test_ml_decoder_with_one_group_per_class_equals_an_explicit_per_class_computation() -> None:
    torch.manual_seed(0)
    head = create_head("ml_decoder", in_features=12, num_classes=5, num_groups=5, decoder_embedding=8, num_heads=2,
                       dim_feedforward=16).eval()
    assert head.num_groups == 5 and head.dup == 1
    features = torch.randn(2, 12, 3, 3)
    layer = head.layers[0]
    expected = torch.empty(2, 5)
    with torch.no_grad():
        for b in range(2):
            memory = torch.relu(features[b].flatten(1).T @ head.input_proj.weight.T + head.input_proj.bias)
            for c in range(5):  # each class alone: no self-attention, so no other query can influence it
                q = layer.norm1(2 * head.query_embed.weight[c])
                q = layer.norm2(q + _explicit_attention(layer.multihead_attn, q, memory))
                q = layer.norm3(q + layer.linear2(torch.relu(layer.linear1(q))))
                expected[b, c] = q @ head.duplicate_pooling[c, :, 0] + head.duplicate_pooling_bias[c]
        torch.testing.assert_close(head(features), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 5, 6, 7])
def test_ml_decoder_any_group_count_maps_classes_to_groups(groups: int) -> None:
    torch.manual_seed(groups)
    head = create_head("ml_decoder", in_features=6, num_classes=7, num_groups=groups, decoder_embedding=8,
                       num_heads=2, dim_feedforward=8).eval()
    features = torch.randn(3, 6, 2, 2)
    with torch.no_grad():
        embedded, _ = head.decode(features)
        logits = head(features)
    dup = math.ceil(7 / groups)
    assert logits.shape == (3, 7) and embedded.shape == (3, groups, 8)
    for c in range(7):
        g, j = divmod(c, dup)
        expected = embedded[:, g] @ head.duplicate_pooling[g, :, j] + head.duplicate_pooling_bias[c]
        torch.testing.assert_close(logits[:, c], expected, rtol=1e-4, atol=1e-5)
    assert head.query_of_class().tolist() == [c // dup for c in range(7)]


def test_ml_decoder_defaults_follow_the_reference() -> None:
    head = create_head("ml_decoder", in_features=32, num_classes=150)
    assert head.num_groups == 100 and head.dup == 2  # the -1 default is min(100, C), not full decoding
    assert create_head("ml_decoder", in_features=32, num_classes=20).num_groups == 20
    assert not head.query_embed.weight.requires_grad and "query_embed.weight" in head.state_dict()  # frozen, saved
    layer = head.layers[0]
    assert layer.multihead_attn.num_heads == 8 and layer.linear1.in_features == 768
    assert layer.linear1.out_features == 2048
    assert len(head.layers) == 1 and not hasattr(layer, "self_attn")
    with pytest.raises(ValueError, match="positive"):
        create_head("ml_decoder", in_features=8, num_classes=3, num_groups=0)


def test_ml_decoder_attention_maps_cover_the_feature_map() -> None:
    head = create_head("ml_decoder", in_features=8, num_classes=4, **SMALL["ml_decoder"]).eval()
    features = torch.randn(2, 8, 3, 5)
    logits, aux = head.forward_aux(features)
    assert aux["attention"].shape == (2, 4, 3, 5)
    torch.testing.assert_close(aux["attention"].sum(dim=(2, 3)), torch.ones(2, 4))
    torch.testing.assert_close(logits, head(features))  # the fast path (no weights) gives the same logits
    _, aux_tokens = head.forward_aux(torch.randn(2, 6, 8))
    assert aux_tokens["attention"].shape == (2, 4, 6)


# ----------------------------------------------------------------------------------------------------- Query2Label
def test_sine_position_encoding_matches_a_hand_computed_grid() -> None:
    # dim 4 → 2 features per axis with frequencies 1 and 1; y of one row = 2π, x of two columns = π, 2π
    expected = torch.tensor([[0.0, 1.0, 0.0, -1.0], [0.0, 1.0, 0.0, 1.0]])
    torch.testing.assert_close(sine_position_encoding(1, 2, 4), expected, atol=1e-5, rtol=0)
    pos = sine_position_encoding(3, 4, 16)
    assert pos.shape == (12, 16)
    torch.testing.assert_close(pos[:, :8].reshape(3, 4, 8)[:, 0], pos[:, :8].reshape(3, 4, 8)[:, 3])  # y half: rows
    torch.testing.assert_close(pos[:, 8:].reshape(3, 4, 8)[0], pos[:, 8:].reshape(3, 4, 8)[2])  # x half: columns


def test_query2label_output_does_not_depend_on_the_positional_encoding_cache() -> None:
    torch.manual_seed(0)
    head = create_head("query2label", in_features=16, num_classes=5, dim_feedforward=32).eval()
    fresh = copy.deepcopy(head)
    a, b = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 3, 5)
    with torch.no_grad():
        first = head(a)
        other = head(b)
        again = head(a)
        fresh_b = fresh(b)  # the other size first, then `a`
        fresh_a = fresh(a)
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(first, fresh_a)
    torch.testing.assert_close(other, fresh_b)
    assert len(head._pos_cache) == 2
    torch.testing.assert_close(head.position_encoding(4, 4, a), sine_position_encoding(4, 4, 16))
    with torch.no_grad():  # a square token sequence is the same grid as the map
        torch.testing.assert_close(head(a.flatten(2).transpose(1, 2)), first)


def test_query2label_position_cache_made_in_inference_mode_works_with_autograd() -> None:
    head = create_head("query2label", in_features=8, num_classes=3, **{**SMALL["query2label"], "hidden_dim": None})
    with torch.inference_mode():
        head(torch.randn(1, 8, 2, 2))
    features = torch.randn(1, 8, 2, 2, requires_grad=True)
    head(features).sum().backward()  # an inference tensor in the graph would raise here
    assert features.grad is not None


def test_query2label_defaults_follow_the_reference() -> None:
    head = create_head("query2label", in_features=64, num_classes=3)
    t = head.transformer
    assert isinstance(head.input_proj, torch.nn.Identity) and head.hidden_dim == 64
    assert len(t.encoder) == 1 and len(t.decoder) == 2
    assert t.decoder[0].multihead_attn.num_heads == 4 and t.decoder[0].ffn.linear1.out_features == 8192
    assert all(layer.self_attn is None for layer in t.decoder)  # decoder self-attention removed
    with_sa = create_head("query2label", in_features=8, num_classes=3, decoder_self_attention=True,
                          dim_feedforward=8)
    assert with_sa.transformer.decoder[0].self_attn is None and with_sa.transformer.decoder[1].self_attn is not None
    assert isinstance(create_head("query2label", in_features=8, num_classes=2, hidden_dim=4, dim_feedforward=4,
                                  num_heads=2).input_proj, torch.nn.Linear)
    assert token_grid(torch.zeros(1, 9, 4)) == (3, 3) and token_grid(torch.zeros(1, 6, 4)) == (1, 6)


# ----------------------------------------------------------------------------------------------------- graph heads
def test_ml_gcn_head_uses_the_reference_adjacency_and_classifiers() -> None:
    torch.manual_seed(0)
    head = create_head("ml_gcn", in_features=5, num_classes=3, **SMALL["ml_gcn"])
    torch.testing.assert_close(head.adjacency, torch.eye(3))  # unbound: identity
    head.bind(*_labels_of(_table(TOY_ROWS)))
    torch.testing.assert_close(head.adjacency, torch.tensor(TOY_PROPAGATION), atol=1e-6, rtol=0)
    assert bool(head.bound)
    features = torch.randn(2, 5, 3, 3)
    A, E = head.adjacency, head.embeddings
    classifiers = A @ (F.leaky_relu(A @ (E @ head.gc1.weight), 0.2) @ head.gc2.weight)
    expected = features.amax(dim=(2, 3)) @ classifiers.T  # global max pooling, no bias
    torch.testing.assert_close(head(features), expected)
    _, aux = head.eval().forward_aux(features)
    torch.testing.assert_close(aux["classifiers"], classifiers.detach())


def test_graph_propagation_equals_the_hand_computed_example() -> None:
    np.testing.assert_allclose(graph_propagation(np.asarray(TOY_ROWS)), TOY_PROPAGATION, atol=1e-6)


def test_bind_rejects_another_class_count() -> None:
    head = create_head("ml_gcn", in_features=4, num_classes=3, **SMALL["ml_gcn"])
    with pytest.raises(ValueError, match="3 classes"):
        head.bind(*_labels_of(_random_table(10, 4)))


def test_graph_attention_attends_only_along_edges() -> None:
    torch.manual_seed(0)
    layer = GraphAttention(4, 3).eval()  # eval: the attention dropout is off
    x = torch.randn(5, 4)
    torch.testing.assert_close(layer(x, torch.eye(5)), F.elu(x @ layer.W))  # only self-loops: itself alone
    adjacency = torch.eye(5)
    adjacency[0, 1] = 0.3
    out = layer(x, adjacency)
    torch.testing.assert_close(out[1:], F.elu(x @ layer.W)[1:])
    assert not torch.allclose(out[0], F.elu(x @ layer.W)[0])


@pytest.mark.parametrize("layer_type", ["gcn", "gat"])
def test_graph_reweighting_is_precomputed_at_inference_and_equals_training(layer_type: str) -> None:
    torch.manual_seed(0)
    # attention dropout off: the train-mode branch must then equal the cached eval-mode one exactly
    head = create_head("gat_reweight", in_features=6, num_classes=4, layer_type=layer_type, attention_dropout=0.0,
                       **SMALL["gat_reweight"])
    head.bind(*_labels_of(_random_table(30, 4)))
    features = torch.randn(2, 6, 3, 3)
    trained = head.train()(features)  # live branch, with gradients
    manual = head.decoder(features * head.compute_graph().view(1, -1, 1, 1))
    torch.testing.assert_close(trained, manual)
    head.eval()
    with torch.inference_mode():
        first = head(features)
    weights = head.graph_cache.value
    second = head(features)
    torch.testing.assert_close(first, trained)
    torch.testing.assert_close(second, trained)
    assert head.graph_cache.computations == 1 and head.channel_weights() is weights  # computed once, reused
    assert not weights.is_inference() and not weights.requires_grad

    with torch.no_grad():  # an optimiser or EMA step changes a parameter in place: the cache notices
        head.gc1.parameters().__next__().mul_(1.5)
    changed = head(features)
    assert head.graph_cache.computations == 2 and not torch.allclose(changed, first)
    head.load_state_dict(copy.deepcopy(head.state_dict()))
    head(features)
    assert head.graph_cache.computations == 3


def test_precomputed_graph_branch_follows_ema_updates() -> None:
    from mlic.train.ema import create_ema

    torch.manual_seed(0)
    head = create_head("ml_gcn", in_features=5, num_classes=4, **SMALL["ml_gcn"])
    head.bind(*_labels_of(_random_table(20, 4)))
    ema = create_ema(head, 0.5)  # an eval-mode copy whose weights move after every optimiser step
    features = torch.randn(2, 5, 2, 2)
    with torch.no_grad():
        ema.module(features)
        head.gc2.weight.add_(1.0)
        ema.update(head)
        moved = ema.module(features)
    assert ema.module.graph_cache.computations == 2
    torch.testing.assert_close(moved, features.amax(dim=(2, 3)) @ ema.module.compute_graph().T)


def test_graph_reweighting_combines_with_ml_decoder_and_binds_it() -> None:
    torch.manual_seed(0)
    head = create_head("gat_reweight", in_features=8, num_classes=4, decoder="ml_decoder",
                       decoder_kwargs=SMALL["ml_decoder"], **SMALL["gat_reweight"]).eval()
    head.bind(*_labels_of(_random_table(20, 4)))
    features = torch.randn(2, 8, 2, 3)
    logits, aux = head.forward_aux(features)
    expected = head.decoder(features * head.compute_graph().view(1, -1, 1, 1))
    torch.testing.assert_close(logits, expected)
    assert aux["attention"].shape == (2, 4, 2, 3) and aux["channel_weights"].shape == (8,)
    assert ((aux["channel_weights"] > 0) & (aux["channel_weights"] < 1)).all()
    tokens = features.flatten(2).transpose(1, 2)
    torch.testing.assert_close(head(tokens), logits)  # ViT tokens: re-weighted along the last dimension


def test_unknown_graph_layer_and_decoder_list_the_choices() -> None:
    with pytest.raises(ValueError, match="gat"):
        create_head("gat_reweight", in_features=4, num_classes=2, layer_type="nope", label_embeddings="learned")
    with pytest.raises(ValueError, match="ml_decoder"):
        create_head("gat_reweight", in_features=4, num_classes=2, decoder="nope", label_embeddings="learned")


# ----------------------------------------------------------------------------------------------------- whole models
CASES = {
    "ml_decoder": ("ml_decoder", SMALL["ml_decoder"]),
    "query2label": ("query2label", SMALL["query2label"]),
    "ml_gcn": ("ml_gcn", SMALL["ml_gcn"]),
    "gat_reweight": ("gat_reweight", {**SMALL["gat_reweight"], "layer_type": "gat"}),
    "gat_reweight+ml_decoder": ("gat_reweight", {**SMALL["gat_reweight"], "decoder": "ml_decoder",
                                                 "decoder_kwargs": SMALL["ml_decoder"]}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_head_round_trips_through_a_weights_only_checkpoint(case: str, tmp_path: Path) -> None:
    head, kwargs = CASES[case]
    torch.manual_seed(0)
    model = create_model("test_efficientnet", head, 4, pretrained=False, head_kwargs=kwargs)
    model.head.bind(*_labels_of(_random_table(24, 4)))
    model.eval()
    save_checkpoint(tmp_path / "m.pt", {"state_dict": model.state_dict()})
    torch.manual_seed(1)  # other random init: only the checkpoint can make the outputs agree
    restored = create_model("test_efficientnet", head, 4, pretrained=False, head_kwargs=kwargs)
    restored.load_state_dict(load_checkpoint(tmp_path / "m.pt")["state_dict"])
    restored.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x))
    if hasattr(model.head, "adjacency"):
        torch.testing.assert_close(restored.head.adjacency, model.head.adjacency)
        assert bool(restored.head.bound)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_reach_the_backbone_and_the_head(case: str) -> None:
    head, kwargs = CASES[case]
    model = create_model("test_efficientnet", head, 4, pretrained=False, head_kwargs=kwargs)
    model.head.bind(*_labels_of(_random_table(24, 4)))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    trainable = [p for p in model.head.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)


def test_profile_counts_parameters_flops_and_latency() -> None:
    model = create_model("test_efficientnet", "gap", 3, pretrained=False)
    linear = torch.nn.Linear(10, 4)
    assert count_parameters(linear) == 44
    assert count_flops(linear, torch.randn(5, 10)) == 2 * 5 * 10 * 4 and linear.weight.requires_grad
    cost = profile_model(model, 32, repeats=2)
    assert cost["head_params_M"] == pytest.approx(count_parameters(model.head) / 1e6)
    assert 0 < cost["head_GFLOPs"] < cost["GFLOPs"] and cost["latency_ms"] > 0


# ----------------------------------------------------------------------------------------------------- engine
@pytest.mark.slow
def test_engine_binds_graph_heads_to_the_training_split_and_checkpoints_keep_it(scenes_root: Path,
                                                                                tmp_path: Path) -> None:
    cfg = tiny_config(scenes_root, tmp_path / "run", **{
        "model.head": "gat_reweight", "model.head_kwargs": {"label_embeddings": "learned", "layer_type": "gat"},
        "train.epochs": 1})
    result = fit(cfg)
    model, _, _ = load_model(Run(result.run_dir).checkpoint("best"))
    from mlic.data.sources import load_split

    train = load_split("scenes", str(scenes_root), "train")
    np.testing.assert_allclose(model.head.adjacency.numpy(), graph_propagation(train.labels), atol=1e-6)
    again = evaluate_checkpoint(result.run_dir, splits=["test"], device="cpu")
    assert again["test"]["mAP"] == pytest.approx(result.metrics["test"]["mAP"], abs=1e-4)


@pytest.mark.slow
def test_train_heads_compares_heads_and_extracts_their_figures(scenes_root: Path, tmp_path: Path) -> None:
    base = tiny_config(scenes_root, tmp_path / "cmp", **{"model.freeze_backbone": True, "train.epochs": 1,
                                                          "train.ema_decay": None})
    heads = {"gap": {"head": "gap"},
             "mld": {"head": "ml_decoder", "head_kwargs": SMALL["ml_decoder"]},
             "gcn": {"head": "ml_gcn", "head_kwargs": SMALL["ml_gcn"], "overrides": {"optim.lr": 1e-3}}}
    table = train_heads(base, heads, latency_repeats=1)
    assert list(table["variant"]) == ["gap", "mld", "gcn"]
    for column in ("test/mAP", "test_shift/mAP", "test/CF1", "test/OF1", "params_M", "GFLOPs", "latency_ms"):
        assert table[column].notna().all() and (table[column] >= 0).all()
    assert table.loc[1, "head_params_M"] > table.loc[0, "head_params_M"]
    assert RunConfig.from_yaml(Path(table.loc[2, "run_dir"]) / "config.yaml").optim.lr == 1e-3

    from mlic.data.sources import load_split

    test = load_split("scenes", str(scenes_root), "test")
    examples = attention_examples(table.loc[1, "run_dir"], test, [0, 1, 2])
    assert examples["images"].shape == (3, 32, 32, 3) and examples["attention"].shape[:2] == (3, 20)
    assert examples["scores"].shape == examples["labels"].shape == (3, 20)
    similarity = classifier_similarity(table.loc[2, "run_dir"])
    assert similarity.shape == (20, 20)
    np.testing.assert_allclose(np.diag(similarity), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="head entry"):
        head_overrides("x", {"head_kwargs": {}})


def test_graph_reweighting_defaults_follow_the_reference_config() -> None:
    """deep-object-reid's GraphAttentionLayer drops 10% of the attention coefficients, and its paper config pools
    the re-weighted map with the backbone's average pooling."""
    head = create_head("gat_reweight", in_features=6, num_classes=4, layer_type="gat", label_embeddings="learned")
    assert head.gc1.dropout.p == head.gc2.dropout.p == 0.1
    features = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(head.decoder(features), head.decoder.fc(features.mean(dim=(2, 3))))
