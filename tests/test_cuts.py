"""Backbone cuts (`model.train_from`): a frozen, cached prefix and a trained suffix that together compute exactly
the backbone, in every supported family, and a training run that moves only what comes after the cut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mlic.core.config import RunConfig
from mlic.core.errors import ConfigError
from mlic.models import create_model
from mlic.models.cuts import cut_points
from mlic.runs import Run, load_model
from mlic.train import fit
from tests.conftest import tiny_config

FAMILIES = [("test_efficientnet", "blocks.3", 64), ("test_resnet", "layer3", 64), ("test_convnext", "stages.2", 64),
            ("test_vit", "blocks.3", 160)]


@pytest.mark.parametrize(("backbone", "cut", "size"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_prefix_then_suffix_is_the_whole_network_and_only_the_prefix_is_frozen(backbone: str, cut: str,
                                                                               size: int) -> None:
    torch.manual_seed(0)
    model = create_model(backbone, "gap", 5, pretrained=False, train_from=cut).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(model.forward_prefix(x), from_cut=True), model(x), rtol=0, atol=0)
    frozen = {id(p) for p in model.cut.frozen_parameters()}
    for name, p in model.backbone.named_parameters():
        assert p.requires_grad is (id(p) not in frozen), name
    assert frozen and any(p.requires_grad for p in model.backbone.parameters())
    model.train()  # the prefix's BatchNorm (and dropout) stay in eval mode: the cache stays valid
    assert all(not m.training for m in model.cut.frozen_modules) and model.head.training
    assert cut in cut_points(model.backbone)


def test_a_cuts_cache_fingerprint_follows_the_prefix_and_ignores_the_trained_suffix() -> None:
    from mlic.data.features import state_fingerprint

    torch.manual_seed(0)
    model = create_model("test_efficientnet", "gap", 5, pretrained=False, train_from="blocks.3")
    before = state_fingerprint(model.cut.frozen_state())
    assert any(name.startswith("blocks.2.") for name in model.cut.frozen_state())
    assert not any(name.startswith(("blocks.3.", "blocks.4.")) for name in model.cut.frozen_state())
    with torch.no_grad():
        model.backbone.blocks[3][0].conv_pw.weight.add_(1.0)  # what training from the cut changes
    assert state_fingerprint(model.cut.frozen_state()) == before
    with torch.no_grad():
        model.backbone.conv_stem.weight.add_(1.0)  # what the cached outputs depend on
    assert state_fingerprint(model.cut.frozen_state()) != before


def test_bad_cuts_name_what_is_possible() -> None:
    with pytest.raises(ValueError, match=r"'blocks\.99' is not a cut point .* choose from blocks\.0, blocks\.1"):
        create_model("test_efficientnet", "gap", 3, pretrained=False, train_from="blocks.99")
    with pytest.raises(ValueError, match="cannot be cut; supported families: EfficientNet"):
        create_model("test_byobnet", "gap", 3, pretrained=False, train_from="stages.1")
    with pytest.raises(ConfigError, match="exclude each other"):
        RunConfig().updated({"model.freeze_backbone": True, "model.train_from": "blocks.5"})
    assert RunConfig.from_params({"train_from": ""}).model.train_from is None


@pytest.mark.slow
def test_a_run_from_a_cut_trains_only_after_it_from_a_cache(scenes_root: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLIC_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(scenes_root, tmp_path / "run", **{"model.train_from": "blocks.3", "train.epochs": 2,
                                                         "train.ema_decay": None})
    torch.manual_seed(cfg.train.seed)
    start = create_model(cfg.model.backbone, "gap", 20, pretrained=False, train_from="blocks.3")
    result = fit(cfg)
    trained, saved_cfg, _ = load_model(Run(result.run_dir).checkpoint("best"))
    assert saved_cfg.model.train_from == "blocks.3"
    before, after = dict(start.named_parameters()), dict(trained.named_parameters())
    prefix = {name for name, p in start.named_parameters() if not p.requires_grad}
    assert prefix and all(torch.equal(before[n], after[n]) for n in prefix)  # frozen: untouched
    assert any(not torch.equal(before[n], after[n]) for n in after if n not in prefix)  # the rest trained
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 6  # train, val and the four test splits
    # the saved scores are those of the whole network on the images (to the cache's float16 rounding)
    from mlic.data import load_split
    from mlic.inference import predict_table

    test = load_split("scenes", scenes_root, "test")
    direct = predict_table(trained, test, image_size=cfg.data.image_size)
    np.testing.assert_allclose(Run(result.run_dir).predictions("test")["scores"], direct, atol=5e-3)
    # the trained model keys the same prefix outputs: a teacher's logits read the cache instead of computing it again
    from mlic.studies.cpsd.teachers import predict_logits

    logits = predict_logits(Run(result.run_dir).checkpoint("best"), test)
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 6
    np.testing.assert_allclose(torch.sigmoid(torch.from_numpy(logits)).numpy(),
                               Run(result.run_dir).predictions("test")["scores"], atol=1e-6)
