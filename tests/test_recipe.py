"""SAM, smoothed early stopping, per-class thresholds in the run, and the named recipes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mlic import metrics
from mlic.core.config import RunConfig
from mlic.train import fit
from mlic.train.early_stopping import EarlyStopping
from mlic.train.recipes import apply_recipe, list_recipes
from mlic.train.sam import SAM


def _quadratic() -> tuple[torch.nn.Parameter, torch.Tensor]:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    A = torch.diag(torch.tensor([3.0, 1.0, 2.0]))
    return w, A


def test_sam_steps_equal_the_update_rule_by_hand() -> None:
    w, A = _quadratic()
    rho, lr = 0.1, 0.05
    sam = SAM([w], torch.optim.SGD, rho=rho, lr=lr)
    w0 = w.detach().clone()
    grad0 = A @ w0  # f(w) = ½ wᵀAw
    (0.5 * w @ A @ w).backward()
    sam.first_step()
    e_w = rho * grad0 / grad0.norm()
    torch.testing.assert_close(w.detach(), w0 + e_w)  # moved by ρ along the normalised gradient
    sam.zero_grad()
    (0.5 * w @ A @ w).backward()
    sam.second_step()
    torch.testing.assert_close(w.detach(), w0 - lr * (A @ (w0 + e_w)))  # gradient at the perturbed point


def test_adaptive_sam_scales_the_perturbation_by_the_weights() -> None:
    w, A = _quadratic()
    sam = SAM([w], torch.optim.SGD, rho=0.1, adaptive=True, lr=0.0)
    w0 = w.detach().clone()
    (0.5 * w @ A @ w).backward()
    sam.first_step()
    g = A @ w0
    expected = 0.1 * w0**2 * g / (w0.abs() * g).norm()
    torch.testing.assert_close(w.detach() - w0, expected)


def test_sam_state_dict_is_the_base_optimizers() -> None:
    w, A = _quadratic()
    sam = SAM([w], torch.optim.Adam, rho=0.05, lr=0.1)
    for _ in range(2):
        sam.zero_grad()
        (0.5 * w @ A @ w).backward()
        sam.first_step()
        sam.zero_grad()
        (0.5 * w @ A @ w).backward()
        sam.second_step()
    state = sam.state_dict()
    assert "exp_avg" in state["state"][0]
    other = SAM([torch.nn.Parameter(torch.zeros(3))], torch.optim.Adam, rho=0.05, lr=0.1)
    other.load_state_dict(state)
    torch.testing.assert_close(other.base_optimizer.state_dict()["state"][0]["exp_avg"], state["state"][0]["exp_avg"])


def test_early_stopping_plain_and_smoothed() -> None:
    plain = EarlyStopping(patience=2)
    assert [plain.update(s) for s in [1.0, 2.0, 1.5, 1.9, 3.0]] == [False, False, False, True, False]
    smooth = EarlyStopping(patience=2, smoothing=0.8)
    # reference: 1 → 0.8·2 + 0.2·1 = 1.8; 1.9 beats 1.8 (an improvement although below the best 2.0)
    assert [smooth.update(s) for s in [1.0, 2.0, 1.9]] == [False, False, False]
    assert smooth.reference == pytest.approx(0.8 * 1.9 + 0.2 * 1.8)
    restored = EarlyStopping(patience=2, smoothing=0.8)
    restored.load_state_dict(smooth.state_dict())
    assert restored.reference == smooth.reference and restored.bad_epochs == smooth.bad_epochs
    assert not math.isfinite(EarlyStopping().reference)


def test_recipes_are_listed_and_applied_under_overrides() -> None:
    assert {"aam_paper", "asl_paper"} <= set(list_recipes())
    cfg = apply_recipe(RunConfig(), "aam_paper").updated({"optim.lr": 0.01})
    assert cfg.recipe == "aam_paper" and cfg.optim.sam and cfg.loss.name == "aam" and cfg.optim.lr == 0.01
    assert cfg.model.head_kwargs == {"cosine": True, "scale": 23.0} and cfg.train.early_stopping_patience == 5
    assert cfg.loss.kwargs["reduction"] == "sum"  # the paper's lr assumes the reference's summed loss


def test_cosine_classifier_starts_with_unit_class_vectors_and_bounded_logits() -> None:
    from mlic.models.heads.cosine import CosineLinear

    head = CosineLinear(64, 5, scale=23.0)
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(5))
    logits = head(torch.randn(8, 64) * 100)
    assert logits.abs().max() <= 23.0 + 1e-5


@pytest.mark.slow
def test_aam_recipe_trains_with_sam_and_reports_adaptive_thresholds(tiny_cfg: RunConfig) -> None:
    cfg = apply_recipe(tiny_cfg, "aam_paper").updated({"train.epochs": 2, "train.ema_decay": 0.9,
                                                       "optim.lr": 0.01})
    result = fit(cfg)
    run = Path(cfg.output_dir)
    tuned = json.loads((run / "thresholds.json").read_text())
    assert tuned["split"] == "train" and len(tuned["thresholds"]) == 20
    thresholds = np.array(list(tuned["thresholds"].values()))
    train = np.load(run / "predictions" / "train.npz")
    np.testing.assert_allclose(thresholds, metrics.tune_thresholds(train["scores"], train["targets"]))
    test = np.load(run / "predictions" / "test.npz")
    adaptive = metrics.evaluate(test["scores"], test["targets"], thresholds=thresholds)
    assert result.metrics["test"]["OF1_adaptive"] == pytest.approx(adaptive["OF1"])
    assert result.metrics["test"]["CF1_adaptive"] == pytest.approx(adaptive["CF1"])
    # logits of a cosine head with scale 23 stay inside [-23, 23]: σ(±23) bounds the saved scores
    assert test["scores"].min() >= 1 / (1 + math.exp(23)) - 1e-9


def test_ml_decoder_cosine_option_gives_scaled_cosines_of_group_embeddings() -> None:
    from mlic.models import create_head

    head = create_head("ml_decoder", in_features=16, num_classes=6, num_groups=3, decoder_embedding=8,
                       dim_feedforward=16, cosine=True, scale=23.0).eval()
    feats = torch.randn(2, 16, 3, 3)
    groups, _ = head.decode(feats)
    w = torch.nn.functional.normalize(head.duplicate_pooling, dim=1)  # [K, d, dup]
    g = torch.nn.functional.normalize(groups, dim=-1)  # [B, K, d]
    expected = torch.stack([23.0 * (g[:, c // 2] @ w[c // 2, :, c % 2]) for c in range(6)], dim=1)
    torch.testing.assert_close(head(feats), expected)
    assert head(feats).abs().max() <= 23.0 + 1e-5


def test_single_positive_recipes_follow_the_reference() -> None:
    assert {"spml_linear", "spml_linear_role", "spml_finetune"} <= set(list_recipes())
    linear = apply_recipe(RunConfig(), "spml_linear")
    assert (linear.optim.name, linear.optim.lr, linear.data.batch_size, linear.train.epochs) == ("adam", 1e-4, 8, 25)
    assert linear.optim.scheduler == "constant" and linear.optim.weight_decay == 0.0 and linear.train.ema_decay is None
    assert linear.model.freeze_backbone and linear.data.hflip and not linear.data.randaugment
    assert linear.loss.name == "an_ls" and linear.data.partial == {"mode": "single_positive", "seed": 1200}
    role = apply_recipe(RunConfig(), "spml_linear_role")
    assert (role.loss.name, role.optim.lr, role.data.batch_size) == ("role", 1e-3, 16)
    assert role.loss.kwargs["lr_mult"] == 10.0
    tune = apply_recipe(RunConfig(), "spml_finetune")
    assert not tune.model.freeze_backbone and tune.train.epochs == 10 and tune.data.partial is not None


@pytest.mark.slow
def test_spml_recipe_trains_on_single_positives_and_evaluates_on_full_labels(tiny_cfg: RunConfig) -> None:
    cfg = apply_recipe(tiny_cfg, "spml_linear").updated({"train.epochs": 2, "model.freeze_backbone": False,
                                                         "data.batch_size": 16, "optim.lr": 1e-3})
    result = fit(cfg)
    run = Path(cfg.output_dir)
    assert RunConfig.from_yaml(run / "config.yaml").data.partial == {"mode": "single_positive", "seed": 1200}
    test = np.load(run / "predictions" / "test.npz")
    assert test["targets"].sum(axis=1).mean() > 1.5  # evaluated on the full labels, not on one positive
    assert result.metrics["test"]["mAP"] == pytest.approx(metrics.evaluate(test["scores"], test["targets"])["mAP"])
    frozen = fit(apply_recipe(tiny_cfg, "spml_linear_role").updated({"train.epochs": 2,
                                                                    "output_dir": str(run.parent / "role")}))
    assert math.isfinite(frozen.metrics["test_shift"]["mAP"])
