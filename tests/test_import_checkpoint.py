"""Importing the authors' released checkpoints: a file in each release's layout is written here from a small model of
the same architecture (the authors' key names, top-level keys and `module.` prefixes), imported, and the imported
model's logits are compared with an explicit computation from the written tensors."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, ResNet

from mlic import metrics
from mlic.cli.import_checkpoint import RELEASES
from mlic.cli.main import main as cli_main
from mlic.data.sources import load_split
from mlic.inference import evaluate_checkpoint, predict_table
from mlic.models.checkpoints import (
    COCO_CLASSES,
    RELEASE_FORMATS,
    CheckpointImportError,
    ImportOptions,
    import_checkpoint,
    read_word_vectors,
)
from mlic.runs import load_model


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so a mis-mapped tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def _layer_norm(x: torch.Tensor, t: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], t[f"{name}.weight"], t[f"{name}.bias"], eps=1e-5)


def _mha(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: dict[str, torch.Tensor], name: str, heads: int
         ) -> torch.Tensor:
    """Sequence-first multi-head attention from the release's `in_proj_*` / `out_proj.*` tensors."""
    return F.multi_head_attention_forward(
        q, k, v, q.shape[-1], heads, t[f"{name}.in_proj_weight"], t[f"{name}.in_proj_bias"], None, None, False, 0.0,
        t[f"{name}.out_proj.weight"], t[f"{name}.out_proj.bias"], training=False, need_weights=False)[0]


def _ffn(x: torch.Tensor, t: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    hidden = F.relu(x @ t[f"{name}.linear1.weight"].T + t[f"{name}.linear1.bias"])
    return hidden @ t[f"{name}.linear2.weight"].T + t[f"{name}.linear2.bias"]


def _save(path: Path, payload: dict) -> Path:
    torch.save(payload, path)
    return path


def _images(n: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------- TResNet layouts
def _tresnet(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, layers=[1, 1, 1, 1],
                              width_factor=0.25, **kwargs)
    return _randomize(model)


def _original_tresnet_keys(model: nn.Module, *, signed: bool = True) -> dict[str, torch.Tensor]:
    """A timm TResNet's backbone in the authors' layout: each conv + inplace-ABN is `Sequential(conv, ABN)` (`.0`,
    `.1`), wrapped once more (`.0.0`, `.0.1`) when followed by the anti-alias downsampling; ABN weights are stored
    signed (inplace-ABN uses |w| + ε), here with alternating signs and ε taken off."""
    out = {}
    for path, module in model.named_modules():
        if not isinstance(module, ConvNormAct):
            continue
        nested = isinstance(module.aa, nn.Module) and not isinstance(module.aa, nn.Identity)
        conv, abn = (f"{path}.0.0", f"{path}.0.1") if nested else (f"{path}.0", f"{path}.1")
        out[f"{conv}.weight"] = module.conv.weight.detach().clone()
        bn = module.bn
        weight = bn.weight.detach() - 1e-5
        if signed:
            weight = weight * torch.where(torch.arange(len(weight)) % 2 == 0, 1.0, -1.0)
        out.update({f"{abn}.weight": weight, f"{abn}.bias": bn.bias.detach().clone(),
                    f"{abn}.running_mean": bn.running_mean.clone(), f"{abn}.running_var": bn.running_var.clone(),
                    f"{abn}.num_batches_tracked": torch.tensor(7)})
    for key, value in model.state_dict().items():  # squeeze-excitation convolutions keep their names
        if ".se." in key:
            out[key] = value.clone()
    return out


def test_asl_release_imports_to_the_tresnet_and_linear_head_it_holds(tmp_path: Path) -> None:
    classes = [f"label {i}" for i in range(5)]
    reference = _tresnet("tresnet_m", len(classes))
    state = _original_tresnet_keys(reference)
    state["head.fc.weight"] = reference.head.fc.weight.detach().clone()
    state["head.fc.bias"] = reference.head.fc.bias.detach().clone()
    src = _save(tmp_path / "asl.pth", {"model": state, "num_classes": 5, "idx_to_class": dict(enumerate(classes))})

    report = import_checkpoint("asl", src, tmp_path / "asl.pt", options=ImportOptions(image_size=64))
    assert report.complete and report.filled > 0 and not report.derived
    assert report.backbone == "tresnet_m" and report.backbone_kwargs["layers"] == [1, 1, 1, 1]
    model, cfg, names = load_model(tmp_path / "asl.pt")
    assert names == classes and cfg.data.normalize is False and cfg.data.image_size == 64
    assert cfg.data.options == {"class_order": "id", "keep_empty": False}

    x = _images()
    with torch.no_grad():
        features = reference.forward_features(x)  # timm's TResNet with the effective (|w| + ε) BatchNorm weights
        expected = features.mean(dim=(2, 3)) @ state["head.fc.weight"].T + state["head.fc.bias"]
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_ml_decoder_release_matches_an_explicit_decoder_and_group_fc(tmp_path: Path) -> None:
    classes, groups, width, ffn, heads = 5, 3, 8, 12, 8  # dup = ceil(5 / 3) = 2 outputs per group, cut to 5
    reference = _tresnet("tresnet_v2_l", classes)
    state = _original_tresnet_keys(reference)
    features_dim = reference.num_features
    g = torch.Generator().manual_seed(3)
    t = {"embed_standart.weight": torch.randn(width, features_dim, generator=g) * 0.05,
         "embed_standart.bias": torch.randn(width, generator=g) * 0.1,
         "query_embed.weight": torch.randn(groups, width, generator=g),
         "layers.0.multihead_attn.in_proj_weight": torch.randn(3 * width, width, generator=g) * 0.3,
         "layers.0.multihead_attn.in_proj_bias": torch.randn(3 * width, generator=g) * 0.1,
         "layers.0.multihead_attn.out_proj.weight": torch.randn(width, width, generator=g) * 0.3,
         "layers.0.multihead_attn.out_proj.bias": torch.randn(width, generator=g) * 0.1,
         "layers.0.linear1.weight": torch.randn(ffn, width, generator=g) * 0.3,
         "layers.0.linear1.bias": torch.randn(ffn, generator=g) * 0.1,
         "layers.0.linear2.weight": torch.randn(width, ffn, generator=g) * 0.3,
         "layers.0.linear2.bias": torch.randn(width, generator=g) * 0.1,
         "duplicate_pooling": torch.randn(groups, width, 2, generator=g),
         "duplicate_pooling_bias": torch.randn(classes, generator=g)}
    for i in (1, 2, 3):
        t[f"layers.0.norm{i}.weight"] = torch.rand(width, generator=g) + 0.5
        t[f"layers.0.norm{i}.bias"] = torch.randn(width, generator=g) * 0.1
    state.update({f"head.decoder.{k}": v for k, v in t.items()})
    src = _save(tmp_path / "mld.pth", {"model": state, "idx_to_class": {i: f"c{i}" for i in range(classes)}})

    report = import_checkpoint("ml_decoder", src, tmp_path / "mld.pt", options=ImportOptions(image_size=64))
    assert report.complete and report.backbone == "tresnet_v2_l"
    assert report.head_kwargs == {"num_groups": 3, "decoder_embedding": 8, "num_heads": 8, "dim_feedforward": 12,
                                  "num_layers": 1}
    model = load_model(tmp_path / "mld.pt")[0]

    x = _images()
    with torch.no_grad():
        tokens = reference.forward_features(x).flatten(2).transpose(1, 2)
        memory = F.relu(tokens @ t["embed_standart.weight"].T + t["embed_standart.bias"]).transpose(0, 1)
        tgt = t["query_embed.weight"].unsqueeze(1).expand(-1, len(x), -1)
        tgt = _layer_norm(tgt + tgt, t, "layers.0.norm1")
        tgt = _layer_norm(tgt + _mha(tgt, memory, memory, t, "layers.0.multihead_attn", heads), t, "layers.0.norm2")
        h = _layer_norm(tgt + _ffn(tgt, t, "layers.0"), t, "layers.0.norm3").transpose(0, 1)
        out = torch.zeros(len(x), groups, 2)
        for i in range(groups):  # the reference's GroupFC loop
            out[:, i, :] = h[:, i, :] @ t["duplicate_pooling"][i]
        expected = out.flatten(1)[:, :classes] + t["duplicate_pooling_bias"]
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ Query2Label layouts
def _detr_sine(hidden: int, height: int, width: int) -> torch.Tensor:
    """Query2Label's `PositionEmbeddingSine._gen_pos_buffer` (normalised, scale 2π), `[1, d, H, W]`."""
    ones = torch.ones(1, height, width)
    y, x = ones.cumsum(1), ones.cumsum(2)
    y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    feats = hidden // 2
    dim_t = 10000 ** (2 * (torch.arange(feats, dtype=torch.float32) // 2) / feats)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


def _q2l_head_tensors(channels: int, classes: int, hidden: int, ffn: int, grid: int, *, dec_layers: int = 2,
                      seed: int = 5) -> dict[str, torch.Tensor]:
    """Query2Label's non-backbone tensors in its names: 1×1 input projection, 1 encoder and `dec_layers` decoder
    layers (self-attention removed), decoder norm, label queries, GroupWiseLinear, the cached sine encoding."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def attention(name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.in_proj_weight": rnd(3 * hidden, hidden), f"{name}.in_proj_bias": rnd(3 * hidden),
                f"{name}.out_proj.weight": rnd(hidden, hidden), f"{name}.out_proj.bias": rnd(hidden)}

    def block(name: str, norms: tuple[int, ...]) -> dict[str, torch.Tensor]:
        out = {f"{name}.linear1.weight": rnd(ffn, hidden), f"{name}.linear1.bias": rnd(ffn),
               f"{name}.linear2.weight": rnd(hidden, ffn), f"{name}.linear2.bias": rnd(hidden)}
        for i in norms:
            out[f"{name}.norm{i}.weight"] = torch.rand(hidden, generator=g) + 0.5
            out[f"{name}.norm{i}.bias"] = rnd(hidden, scale=0.1)
        return out

    t = {"input_proj.weight": rnd(hidden, channels, 1, 1, scale=0.05), "input_proj.bias": rnd(hidden),
         "query_embed.weight": rnd(classes, hidden, scale=1.0), "fc.W": rnd(1, classes, hidden),
         "fc.b": rnd(1, classes), "transformer.decoder.norm.weight": torch.rand(hidden, generator=g) + 0.5,
         "transformer.decoder.norm.bias": rnd(hidden, scale=0.1), "backbone.1.pe": _detr_sine(hidden, grid, grid)}
    t.update(attention("transformer.encoder.layers.0.self_attn"))
    t.update(block("transformer.encoder.layers.0", (1, 2)))
    for i in range(dec_layers):
        t.update(attention(f"transformer.decoder.layers.{i}.multihead_attn"))
        t.update(block(f"transformer.decoder.layers.{i}", (2, 3)))
    return t


def _q2l_explicit(features: torch.Tensor, t: dict[str, torch.Tensor], heads: int, dec_layers: int = 2
                  ) -> torch.Tensor:
    """Query2Label's forward (DETR post-norm transformer, sequence-first) written out from its tensors."""
    batch = len(features)
    src = F.conv2d(features, t["input_proj.weight"], t["input_proj.bias"]).flatten(2).permute(2, 0, 1)
    pos = t["backbone.1.pe"].repeat(batch, 1, 1, 1).flatten(2).permute(2, 0, 1)
    enc = "transformer.encoder.layers.0"
    q = src + pos
    src = _layer_norm(src + _mha(q, q, src, t, f"{enc}.self_attn", heads), t, f"{enc}.norm1")
    memory = _layer_norm(src + _ffn(src, t, enc), t, f"{enc}.norm2")
    query = t["query_embed.weight"].unsqueeze(1).repeat(1, batch, 1)
    tgt = torch.zeros_like(query)
    for i in range(dec_layers):
        dec = f"transformer.decoder.layers.{i}"
        attended = _mha(tgt + query, memory + pos, memory, t, f"{dec}.multihead_attn", heads)
        tgt = _layer_norm(tgt + attended, t, f"{dec}.norm2")
        tgt = _layer_norm(tgt + _ffn(tgt, t, dec), t, f"{dec}.norm3")
    hs = _layer_norm(tgt, t, "transformer.decoder.norm").transpose(0, 1)
    return (t["fc.W"] * hs).sum(-1) + t["fc.b"]


def _torchvision_resnet(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    return _randomize(ResNet(Bottleneck, [1, 1, 1, 1]))


def test_query2label_resnet_release_with_module_prefixes_matches_an_explicit_transformer(tmp_path: Path) -> None:
    resnet = _torchvision_resnet()
    body = IntermediateLayerGetter(resnet, return_layers={"layer4": "0"}).eval()
    state = {f"backbone.0.body.{k}": v for k, v in body.state_dict().items()
             if not k.endswith("num_batches_tracked")}  # frozen BatchNorm keeps no counter
    t = _q2l_head_tensors(2048, 80, hidden=16, ffn=24, grid=2)
    state.update(t)
    src = _save(tmp_path / "checkpoint.pkl", {"state_dict": {f"module.{k}": v for k, v in state.items()},
                                              "epoch": 3, "arch": "Q2L-R101-448", "best_mAP": 84.9})

    report = import_checkpoint("query2label", src, tmp_path / "q2l.pt",
                               options=ImportOptions(source_config={"nheads": 2}))
    assert report.complete, report
    assert report.backbone == "resnet50" and report.backbone_kwargs == {"layers": [1, 1, 1, 1]}
    assert report.image_size == 64  # read from the cached encoding: a 2 × 2 grid at stride 32
    assert report.derived == ["backbone.1.pe"] and all(k.endswith("num_batches_tracked") for k in report.defaulted)
    model, cfg, names = load_model(tmp_path / "q2l.pt")
    assert names == list(COCO_CLASSES) and cfg.data.normalize is True
    assert cfg.model.head_kwargs["keep_input_proj"] is True and cfg.model.head_kwargs["num_heads"] == 2

    x = _images()
    with torch.no_grad():
        expected = _q2l_explicit(body(x)["0"], t, heads=2)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def _original_swin_keys(model: nn.Module) -> dict[str, torch.Tensor]:
    """A timm Swin in the original layout: downsampling at the end of a stage, cached buffers included."""
    out = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) - 1)
        out[".".join(parts)] = value.clone()
    for key, value in model.named_buffers():
        if key.endswith("relative_position_index"):
            out[key] = value.clone()
    return out


def test_query2label_swin_release_goes_through_timms_swin_and_its_channels_last_features(tmp_path: Path) -> None:
    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, embed_dim=16,
                             depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=2, img_size=64).eval()
    state = {f"backbone.0.{k}": v for k, v in _original_swin_keys(swin).items()}
    assert "backbone.0.layers.0.downsample.reduction.weight" in state
    t = _q2l_head_tensors(swin.num_features, 3, hidden=8, ffn=12, grid=2, dec_layers=1)
    state.update(t)
    src = _save(tmp_path / "swin.pkl", {"state_dict": {f"module.{k}": v for k, v in state.items()}})

    report = import_checkpoint("query2label", src, tmp_path / "swin.pt",
                               options=ImportOptions(source_config={"nheads": 2}, classes=["a", "b", "c"]))
    assert report.complete, report
    assert report.backbone_kwargs["window_size"] == 2 and report.backbone_kwargs["depths"] == [1, 1, 1, 1]
    assert sum("relative_position_index" in k for k in report.derived) == 4
    model = load_model(tmp_path / "swin.pt")[0]
    x = _images()
    with torch.no_grad():
        features = swin.forward_features(x).permute(0, 3, 1, 2)  # timm's Swin is NHWC; Query2Label reads NCHW
        torch.testing.assert_close(model(x), _q2l_explicit(features, t, heads=2, dec_layers=1), atol=1e-5,
                                   rtol=1e-5)


def test_a_cvt_backbone_is_refused_with_a_message_saying_timm_lacks_it(tmp_path: Path) -> None:
    state = {"module.backbone.0.stage0.patch_embed.proj.weight": torch.zeros(4, 3, 7, 7),
             "module.query_embed.weight": torch.zeros(80, 8)}
    src = _save(tmp_path / "cvt.pkl", {"state_dict": state})
    with pytest.raises(CheckpointImportError, match=r"CvT.*timm has no CvT model"):
        import_checkpoint("query2label", src, tmp_path / "cvt.pt")
    assert not (tmp_path / "cvt.pt").exists()


# ------------------------------------------------------------------------------------------------------ ML-GCN layout
def _gen_a(labels: np.ndarray, tau: float = 0.4, p: float = 0.25) -> np.ndarray:
    """ML-GCN's `gen_A` on counts of `labels`: P(j | i) ≥ τ, columns re-weighted to p, self-loops 1."""
    counts = labels.T @ labels
    nums = np.diag(counts).astype(np.float64)
    adj = counts - np.diag(nums)
    a = (adj / nums[:, None] >= tau).astype(np.float64)
    a = a * p / (a.sum(0, keepdims=True) + 1e-6)
    return a + np.identity(len(nums))


def _ml_gcn_release(tmp_path: Path, classes: int, *, seed: int = 0) -> tuple[Path, Path, dict, nn.Module]:
    resnet = _torchvision_resnet(seed)
    features = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2,
                             resnet.layer3, resnet.layer4).eval()
    g = torch.Generator().manual_seed(seed + 1)
    labels = (torch.rand(60, classes, generator=g) < 0.4).numpy().astype(np.int64)
    labels[:, 1] |= labels[:, 0]
    t = {"gc1.weight": torch.randn(6, 10, generator=g) * 0.3, "gc2.weight": torch.randn(10, 2048, generator=g) * 0.3,
         "A": torch.from_numpy(_gen_a(labels)).float()}
    state = {f"features.{k}": v for k, v in features.state_dict().items() if not k.endswith("num_batches_tracked")}
    state.update(t)  # saved by torch 0.3: no BatchNorm counters
    src = _save(tmp_path / "coco_checkpoint.pth.tar", {"epoch": 20, "arch": "resnet101", "state_dict": state,
                                                       "best_score": 83.0})
    vectors = np.random.default_rng(seed).normal(size=(classes, 6)).astype(np.float32)
    words = tmp_path / "glove_word2vec.pkl"
    with open(words, "wb") as handle:
        pickle.dump(vectors, handle, protocol=3)
    return src, words, {**t, "inp": torch.from_numpy(vectors)}, features


def _ml_gcn_explicit(features: nn.Module, t: dict, x: torch.Tensor) -> torch.Tensor:
    """`GCNResnet.forward`: global max pooling, `gen_adj(A) = (A D)ᵀ D`, gc1, LeakyReLU(0.2), gc2, no bias."""
    pooled = F.adaptive_max_pool2d(features(x), 1).flatten(1)
    a = t["A"]
    d = torch.diag(a.sum(1).pow(-0.5))
    adj = (a @ d).T @ d
    classifiers = adj @ (F.leaky_relu(adj @ (t["inp"] @ t["gc1.weight"]), 0.2) @ t["gc2.weight"])
    return pooled @ classifiers.T


def test_ml_gcn_release_with_word_vectors_matches_gcn_resnet_forward(tmp_path: Path) -> None:
    src, words, t, features = _ml_gcn_release(tmp_path, 80)
    report = import_checkpoint("ml_gcn", src, tmp_path / "gcn.pt", options=ImportOptions(word_vectors=str(words)))
    assert report.complete and report.backbone == "resnet50"
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in features.modules())
    assert len(report.defaulted) == batch_norms and all(k.endswith("num_batches_tracked") for k in report.defaulted)
    model, cfg, names = load_model(tmp_path / "gcn.pt")
    assert names == sorted(COCO_CLASSES) and names[49] == "person"  # ML-GCN's alphabetical order
    assert cfg.data.options["class_order"] == "alpha"
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), _ml_gcn_explicit(features, t, x), atol=1e-4, rtol=1e-5)


def test_ml_gcn_without_word_vectors_fails_naming_the_missing_tensor(tmp_path: Path) -> None:
    src, _, _, _ = _ml_gcn_release(tmp_path, 80)
    with pytest.raises(CheckpointImportError, match=r"head\.embeddings.*coco_glove_word2vec\.pkl|word-vectors"):
        import_checkpoint("ml_gcn", src, tmp_path / "gcn.pt")
    assert not (tmp_path / "gcn.pt").exists()


def test_word_vectors_are_read_without_unpickling_objects(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as handle:
        pickle.dump({"payload": print}, handle)
    with pytest.raises(CheckpointImportError, match="evil.pkl.*refusing to unpickle builtins.print"):
        read_word_vectors(evil)


# ------------------------------------------------------------------------------------------- accounting and the CLI
def _asl_state(classes: int = 5) -> dict[str, torch.Tensor]:
    reference = _tresnet("tresnet_m", classes)
    state = _original_tresnet_keys(reference)
    state["head.fc.weight"] = reference.head.fc.weight.detach().clone()
    state["head.fc.bias"] = reference.head.fc.bias.detach().clone()
    return state


def test_leftover_and_missing_tensors_are_listed_and_fail_unless_partial(tmp_path: Path) -> None:
    state = _asl_state()
    state["head.fc.extra_scale"] = torch.ones(5)
    del state["body.layer4.0.conv3.0.weight"]
    src = _save(tmp_path / "asl.pth", {"model": state})
    with pytest.raises(CheckpointImportError) as failure:
        import_checkpoint("asl", src, tmp_path / "out.pt", options=ImportOptions(classes=list("abcde")))
    message = str(failure.value)
    assert "head.fc.extra_scale" in message and "backbone.body.layer4.0.conv3.conv.weight" in message
    assert "--allow-partial" in message and not (tmp_path / "out.pt").exists()

    report = import_checkpoint("asl", src, tmp_path / "out.pt", options=ImportOptions(classes=list("abcde")),
                               allow_partial=True)
    assert report.leftover == ["head.fc.extra_scale"] and report.missing == ["backbone.body.layer4.0.conv3.conv.weight"]
    assert load_model(tmp_path / "out.pt")[2] == list("abcde")


def test_a_shape_mismatch_is_reported_with_both_shapes(tmp_path: Path) -> None:
    state = _asl_state()
    state["head.fc.bias"] = torch.zeros(4)
    src = _save(tmp_path / "asl.pth", {"model": state})
    with pytest.raises(CheckpointImportError, match=r"head\.fc\.bias \[5\] ← head\.fc\.bias \[4\]"):
        import_checkpoint("asl", src, tmp_path / "out.pt", options=ImportOptions(classes=list("abcde")))


def test_the_command_offers_every_release_format() -> None:
    assert sorted(RELEASES) == RELEASE_FORMATS.list()


def test_unknown_class_count_asks_for_class_names(tmp_path: Path) -> None:
    src = _save(tmp_path / "asl.pth", {"model": _asl_state()})
    with pytest.raises(CheckpointImportError, match="5 classes, not COCO's 80.*--classes"):
        import_checkpoint("asl", src, tmp_path / "out.pt")


@pytest.mark.slow
def test_cli_import_then_mlic_eval_and_predict_on_scenes(tmp_path: Path, scenes_root: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    table = load_split("scenes", scenes_root, "test", class_order="alpha")
    src, words, _, _ = _ml_gcn_release(tmp_path, len(table.class_names))
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(table.class_names) + "\n")
    dst = tmp_path / "gcn.pt"
    assert cli_main(["import-checkpoint", "--format", "ml_gcn", str(src), "--output", str(dst), "--classes",
                     str(classes), "--word-vectors", str(words), "--image-size", "32", "--dataset", "scenes",
                     "--data-root", str(scenes_root), "--split", "test"]) == 0
    assert '"complete": true' in capsys.readouterr().out
    assert cli_main(["eval", str(dst), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert '"test"' in out and '"mAP"' in out
    voc = evaluate_checkpoint(dst, device="cpu", mode="voc_interp")["test"]["mAP"]  # Query2Label's convention
    model, cfg, _ = load_model(dst)
    scores = predict_table(model, table, image_size=cfg.data.image_size)
    assert voc == pytest.approx(metrics.evaluate(scores, table.labels, mode="voc")["mAP"])
    assert voc != pytest.approx(metrics.evaluate(scores, table.labels)["mAP"])
    predictions = tmp_path / "predictions.csv"
    assert cli_main(["predict", str(dst), str(scenes_root / "annotations" / "test.json"), "--output",
                     str(predictions), "--no-progress", "--device", "cpu"]) == 0
    rows = predictions.read_text().splitlines()
    assert len(rows) == len(table) + 1 and rows[0].split(",")[:3] == ["path", "labels", "error"]

    assert cli_main(["import-checkpoint", "--format", "query2label", str(src), "--output", str(tmp_path / "x.pt")]) == 1
    assert "mlic: error:" in capsys.readouterr().err
