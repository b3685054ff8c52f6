"""Single-positive losses against hand computation, ROLE's estimator, and the comparison loop on tiny Scenes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mlic.core.config import RunConfig
from mlic.data.table import LabelledImages
from mlic.losses import create_loss, list_losses
from mlic.losses.single_positive import ROLELoss, logit
from mlic.studies.single_positive import (
    compare_losses,
    estimator_by_epoch,
    estimator_scores,
    headline,
    loss_variants,
    method_metrics,
    recovery,
    summarise,
)
from tests.conftest import tiny_config

# implementations.md §12: p = σ(x), y_obs with one positive per image
X = [[2.0, -1.0, 0.5, -3.0], [0.0, 1.5, -0.5, 2.5]]
Y_OBS = [[1, 0, 0, 0], [0, 1, 0, 0]]
GOLDEN = {"an": 0.676267, "an_ls": 0.738765, "wan": 0.252782, "epr": 0.069987}


def _neglog(z: float) -> float:
    return -math.log(z + 1e-5)


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _by_hand(name: str, k: float = 2.9, eps: float = 0.1) -> float:
    """The reference formulas entry by entry, in plain Python."""
    total, reg, n_cls = 0.0, 0.0, 4
    for row, obs in zip(X, Y_OBS):
        for v, o in zip(row, obs):
            p = _sigmoid(v)
            if name == "an":
                total += _neglog(p) if o == 1 else _neglog(1 - p)
            elif name == "an_ls":
                pos, neg = _neglog(p), _neglog(1 - p)
                total += (1 - eps) * pos + eps * neg if o == 1 else (1 - eps) * neg + eps * pos
            elif name == "wan":
                total += _neglog(p) if o == 1 else _neglog(1 - p) / (n_cls - 1)
            elif name == "epr":
                total += _neglog(p) if o == 1 else 0.0
    if name == "epr":
        count = sum(sum(_sigmoid(v) for v in row) for row in X) / len(X)
        reg = (count - k) ** 2 / n_cls**2
    return total / (len(X) * n_cls) + reg


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_losses_equal_the_hand_computation_and_the_golden_values(name: str) -> None:
    assert _by_hand(name) == pytest.approx(GOLDEN[name], abs=1e-6)  # re-derived, then trusted
    kwargs = {"expected_num_pos": 2.9} if name == "epr" else {}
    loss = create_loss(name, **kwargs)
    assert loss.uses_observed
    value = loss(torch.tensor(X), torch.tensor(Y_OBS, dtype=torch.float32))
    assert float(value.detach()) == pytest.approx(GOLDEN[name], abs=1e-6)


def test_every_single_positive_loss_is_registered_with_bce_as_the_upper_bound() -> None:
    assert {"an", "an_ls", "wan", "epr", "role", "bce"} <= set(list_losses())
    assert not getattr(create_loss("bce"), "uses_observed", False)


def test_sum_and_none_reductions_and_the_unnormalised_regulariser() -> None:
    x, y = torch.tensor(X), torch.tensor(Y_OBS, dtype=torch.float32)
    epr = create_loss("epr", expected_num_pos=2.9)
    matrix = create_loss("epr", expected_num_pos=2.9, reduction="none")(x, y)
    reg = float(epr(x, y)) - float(matrix.mean())
    count = torch.sigmoid(x).sum(1).mean()
    assert reg == pytest.approx(float((count - 2.9) ** 2 / 16), abs=1e-6)  # /C², not /(B·C)
    summed = create_loss("epr", expected_num_pos=2.9, reduction="sum")(x, y)
    assert float(summed) == pytest.approx(float(matrix.sum()) + reg, abs=1e-5)
    l1 = create_loss("epr", expected_num_pos=2.9, norm="1")(x, y)
    assert float(l1) == pytest.approx(float(matrix.mean()) + abs(float(count) - 2.9) / 16, abs=1e-6)


def test_observed_negatives_are_full_weight_negatives() -> None:
    x = torch.tensor(X)
    with_neg = torch.tensor([[1, 0, -1, 0], [0, 1, 0, -1]], dtype=torch.float32)
    p = torch.sigmoid(x)
    per_entry = {name: create_loss(name, expected_num_pos=2.9, reduction="none") if name == "epr"
                 else create_loss(name, reduction="none") for name in ("an", "wan", "epr")}
    an = per_entry["an"](x, with_neg)
    torch.testing.assert_close(an, per_entry["an"](x, torch.tensor(Y_OBS, dtype=torch.float32)))  # AN: same as 0
    wan = per_entry["wan"](x, with_neg)
    assert float(wan[0, 2]) == pytest.approx(_neglog(1 - float(p[0, 2])), rel=1e-5)  # not divided by C − 1
    assert float(wan[0, 1]) == pytest.approx(_neglog(1 - float(p[0, 1])) / 3, rel=1e-5)
    epr = per_entry["epr"](x, with_neg)
    assert float(epr[1, 3]) == pytest.approx(_neglog(1 - float(p[1, 3])), rel=1e-5) and float(epr[0, 1]) == 0


def test_bad_targets_and_missing_settings_fail_clearly() -> None:
    with pytest.raises(ValueError, match=r"\{1, 0, -1\}"):
        create_loss("an")(torch.zeros(2, 3), torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="expected_num_pos"):
        create_loss("epr")(torch.zeros(2, 3), torch.zeros(2, 3))
    role = create_loss("role", expected_num_pos=1.0)
    with pytest.raises(RuntimeError, match="bind"):
        role(torch.zeros(2, 3), torch.zeros(2, 3), index=torch.arange(2))
    role.init_estimator(np.zeros((2, 3), dtype=np.int8))
    with pytest.raises(ValueError, match="index"):
        role(torch.zeros(2, 3), torch.zeros(2, 3))


def _table(labels: np.ndarray, observed: np.ndarray | None) -> LabelledImages:
    n, c = labels.shape
    return LabelledImages(paths=[f"{i}.png" for i in range(n)], labels=labels, class_names=[str(j) for j in range(c)],
                          observed=observed)


def test_bind_takes_expected_positives_from_the_training_labels() -> None:
    labels = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 1]], dtype=np.uint8)  # 7 labels over 4 images
    observed = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.int8)
    for name in ("epr", "role"):
        loss = create_loss(name)
        loss.bind(_table(labels, observed))
        assert loss.expected_num_pos == pytest.approx(1.75)
    given = create_loss("epr", expected_num_pos=2.9)
    given.bind(_table(labels, observed))
    assert given.expected_num_pos == 2.9


def test_role_estimator_starts_with_the_reference_initialisation() -> None:
    rng = np.random.default_rng(0)
    observed = rng.choice(np.array([1, 0, -1], dtype=np.int8), size=(400, 10), p=[0.1, 0.8, 0.1])
    role = ROLELoss(expected_num_pos=2.0, init_seed=0)
    role.init_estimator(observed)
    theta = role.estimator_logits.detach().numpy()
    assert logit(0.995) == pytest.approx(math.log(0.995 / 0.005))
    np.testing.assert_allclose(theta[observed == 1], 5.293305, atol=1e-5)
    np.testing.assert_allclose(theta[observed == -1], -5.293305, atol=1e-5)
    unknown = theta[observed == 0]
    q = math.log(0.6 / 0.4)
    assert np.abs(unknown).max() <= q and unknown.min() < -0.9 * q and unknown.max() > 0.9 * q
    assert abs(unknown.mean()) < 0.02 and unknown.std() == pytest.approx(q / math.sqrt(3), rel=0.05)  # uniform


def test_role_value_and_its_stop_gradients_match_the_formula() -> None:
    x = torch.tensor(X, requires_grad=True)
    y = torch.tensor(Y_OBS, dtype=torch.float32)
    role = ROLELoss(expected_num_pos=2.9)
    role.init_estimator(np.array(Y_OBS, dtype=np.int8))
    theta = torch.tensor([[1.0, -0.5, 0.2, -2.0], [0.3, 0.8, -1.0, 1.5]])
    with torch.no_grad():
        role.estimator_logits.copy_(theta)
    value = role(x, y, index=torch.tensor([0, 1]))
    # by hand, entry by entry
    p, e = torch.sigmoid(torch.tensor(X)).tolist(), torch.sigmoid(theta).tolist()
    total = 0.0
    for b in range(2):
        for c in range(4):
            pb, eb = p[b][c], e[b][c]
            pos = 0.5 * (_neglog(pb) + _neglog(eb)) if Y_OBS[b][c] == 1 else 0.0
            cross = eb * _neglog(pb) + (1 - eb) * _neglog(1 - pb) + pb * _neglog(eb) + (1 - pb) * _neglog(1 - eb)
            total += pos + 0.5 * cross
    reg = 0.5 * ((sum(map(sum, p)) / 2 - 2.9) ** 2 + (sum(map(sum, e)) / 2 - 2.9) ** 2) / 16
    assert float(value.detach()) == pytest.approx(total / 8 + reg, abs=1e-6)
    value.backward()
    # d/dθ at an unknown entry: 0.5·(e − p)/(B·C) from BCE(est; sg(p)) (up to the 1e-5 in the log), plus the
    # estimator's regulariser 0.5 · 2 (mean Σ e − k) / C² · e(1 − e) / B; the classifier's terms send nothing to θ
    b, c = 0, 2
    pb, eb = p[b][c], e[b][c]
    expected = 0.5 * (eb - pb) / 8 + 0.5 * 2 * (sum(map(sum, e)) / 2 - 2.9) / 16 * eb * (1 - eb) / 2
    assert float(role.estimator_logits.grad[b, c]) == pytest.approx(expected, abs=1e-5)
    # and symmetrically for the classifier's logit
    expected_x = 0.5 * (pb - eb) / 8 + 0.5 * 2 * (sum(map(sum, p)) / 2 - 2.9) / 16 * pb * (1 - pb) / 2
    assert float(x.grad[b, c]) == pytest.approx(expected_x, abs=1e-5)


def test_role_estimator_moves_towards_the_hidden_truth_on_a_toy_problem() -> None:
    # planted: 5 classes, features = labels + noise, so a linear classifier can find every label from one positive
    gen = torch.Generator().manual_seed(0)
    n, c = 300, 5
    labels = (torch.rand(n, c, generator=gen) < 0.35).to(torch.uint8)
    labels[labels.sum(1) == 0, 0] = 1
    feats = 2.0 * labels.float() + 0.4 * torch.randn(n, c, generator=gen)
    observed = np.zeros((n, c), dtype=np.int8)
    rng = np.random.RandomState(0)
    for i in range(n):
        observed[i, rng.choice(np.flatnonzero(labels[i].numpy()))] = 1
    role = ROLELoss(init_seed=0, track_truth=True)
    role.bind(_table(labels.numpy(), observed))
    before = role.track()
    torch.manual_seed(0)
    model = torch.nn.Linear(c, c)
    opt = torch.optim.Adam([{"params": model.parameters(), "lr": 1e-2},
                            {"params": role.parameters(), "lr": 1e-2 * role.lr_mult}])
    target = torch.from_numpy(observed).float()
    for _ in range(300):
        opt.zero_grad()
        role(model(feats), target, index=torch.arange(n)).backward()
        opt.step()
    after = role.track()
    assert after["mean_abs_error"] < before["mean_abs_error"] - 0.2
    assert after["accuracy"] > 0.9 and after["hidden_recall"] > 0.85 and after["precision"] > 0.7
    errors = [row["mean_abs_error"] for row in role.history]
    assert errors[0] > errors[100] > errors[200] > errors[-1]  # steadily closer
    assert before["hidden_recall"] < 0.7  # the initialisation knows nothing of the hidden positives
    assert len(role.history) == 300 and role.history[0] == {"step": 0.0, **before}
    # track() is recovery() on the estimator's scores
    est = role.estimates().numpy()
    found = recovery(est, labels.numpy(), observed)
    assert {k: found[k] for k in after} == pytest.approx(after)
    # the history travels with the state dict; an estimator of another size cannot take it
    other = ROLELoss()
    other.init_estimator(np.zeros((n, c), dtype=np.int8))
    other.load_state_dict(role.state_dict())
    assert other.history == role.history
    torch.testing.assert_close(other.estimator_logits, role.estimator_logits)
    small = ROLELoss()
    small.init_estimator(np.zeros((3, c), dtype=np.int8))
    with pytest.raises(ValueError, match="bind the same training table"):
        small.load_state_dict(role.state_dict())


def test_recovery_counts_hidden_positives_by_hand() -> None:
    labels = np.array([[1, 1, 0, 1], [0, 1, 1, 0]])
    observed = np.array([[1, 0, 0, 0], [0, 1, 0, 0]])
    scores = np.array([[0.9, 0.7, 0.6, 0.2], [0.1, 0.9, 0.5, 0.4]])
    found = recovery(scores, labels, observed)
    # hidden positives: (0,1) 0.7 ✓, (0,3) 0.2 ✗, (1,2) 0.5 ✓ (≥ 0.5); flagged unobserved: (0,1), (0,2), (1,2)
    assert found["hidden_positives"] == 3 and found["recovered"] == 2
    assert found["hidden_recall"] == pytest.approx(2 / 3) and found["precision"] == pytest.approx(2 / 3)
    # unobserved entries: (0,1) ✓ (0,2) ✗ (0,3) ✗ (1,0) ✓ (1,2) ✓ (1,3) ✓ → 4 of 6 right
    assert found["accuracy"] == pytest.approx(4 / 6)
    assert found["mean_abs_error"] == pytest.approx((0.3 + 0.6 + 0.8 + 0.1 + 0.5 + 0.4) / 6)


def test_role_gets_its_own_optimiser_group_at_ten_times_the_learning_rate() -> None:
    from mlic.core.config import OptimConfig
    from mlic.train.optim import build_optimizer

    role = create_loss("role")
    role.init_estimator(np.zeros((4, 3), dtype=np.int8))
    opt = build_optimizer(torch.nn.Linear(2, 3), OptimConfig(name="adam", lr=1e-3, weight_decay=0.0), extra=[role])
    group = opt.param_groups[-1]
    assert group["params"][0] is role.estimator_logits and group["lr"] == pytest.approx(1e-2)


def test_loss_variants_train_bce_on_full_labels_and_track_role() -> None:
    variants = loss_variants(["bce", "an", "role"])
    assert variants["bce"]["data.partial"] is None and "data.partial" not in variants["an"]
    assert variants["role"]["loss.kwargs"] == {"track_truth": True}
    with pytest.raises(ValueError, match="unknown single-positive loss"):
        loss_variants(["iun"])


@pytest.mark.slow
def test_comparison_trains_every_loss_on_observed_labels_and_reads_the_estimator(scenes_root: Path,
                                                                                 tmp_path: Path) -> None:
    from mlic.train.recipes import apply_recipe

    cfg = apply_recipe(tiny_config(scenes_root, tmp_path / "runs"), "spml_linear_role").updated(
        {"train.epochs": 3, "model.freeze_backbone": True})
    runs, curves = compare_losses(cfg, ["bce", "an", "role"], [0, 1], partial={"mode": "single_positive"})
    assert list(runs["variant"]) == ["bce", "an", "role", "bce", "an", "role"]
    assert {"test/mAP", "test_shift/mAP", "train/mAP", "hidden_recall"} <= set(runs.columns)
    assert runs["hidden_positives"].nunique() == 1 and runs["hidden_positives"].iloc[0] > 0
    role_dir = Path(runs.loc[runs["variant"] == "role", "run_dir"].iloc[0])
    theta = estimator_scores(role_dir)
    assert theta.shape == (96, 20)
    assert list(curves["epoch"].unique()) == [0, 1, 2, 3] and sorted(curves["seed"].unique()) == [0, 1]
    # the last point is the final estimator itself
    from mlic.studies.single_positive import observed_training_table

    table = observed_training_table(cfg, {"mode": "single_positive"})
    last = curves[(curves["seed"] == 0) & (curves["epoch"] == 3)].iloc[0]
    assert last["hidden_recall"] == pytest.approx(recovery(theta, table.labels, table.observed)["hidden_recall"])
    direct = estimator_by_epoch(role_dir, table.labels, table.observed)
    pd.testing.assert_frame_equal(direct, curves[curves["seed"] == 0].drop(columns="seed").reset_index(drop=True))
    summary = summarise(runs, ["test", "test_shift"])
    assert list(summary["variant"]) == ["bce", "an", "role"] and (summary["seeds"] == 2).all()
    bce = runs[runs["variant"] == "bce"]
    assert summary.loc[0, "test/mAP_mean"] == pytest.approx(bce["test/mAP"].mean())
    assert np.isnan(summary.loc[0, "estimator_hidden_recall_std"])
    metrics = headline(summary, ["test", "test_shift"])
    assert metrics["test"]["mAP"] == pytest.approx(runs.loc[runs["variant"] == "role", "test/mAP"].mean())
    methods = method_metrics(summary, ["test", "test_shift"])
    assert methods["role"]["test"] == metrics["test"] and methods["bce"]["train"]["hidden_recall"] >= 0
    with pytest.raises(ValueError, match="not a ROLE run"):
        estimator_scores(runs["run_dir"].iloc[1])


@pytest.mark.slow
def test_role_trains_end_to_end_in_the_engine_and_resumes_with_its_estimator(scenes_root: Path,
                                                                             tmp_path: Path) -> None:
    from mlic.runs import Run
    from mlic.train import fit

    cfg = tiny_config(scenes_root, tmp_path / "run", **{
        "data.partial": {"mode": "single_positive"}, "loss.name": "role", "loss.kwargs": {"track_truth": True},
        "optim.name": "adam", "optim.scheduler": "constant", "train.ema_decay": None, "train.epochs": 2})
    result = fit(cfg)
    assert math.isfinite(result.metrics["test"]["mAP"])
    state = Run(Path(cfg.output_dir)).state("last")["loss_state"]
    assert state["estimator_logits"].shape == (96, 20)
    steps = len(state["_extra_state"]["history"])
    assert steps == 2 * (96 // 16)  # one record per training step (drop_last: 6 full batches per epoch)
    # a finished run resumed restores the estimator and its history from last.pt (weights_only) and trains nothing
    resumed = fit(cfg.updated({"runtime.resume": True}))
    again = Run(Path(cfg.output_dir)).state("last")["loss_state"]
    assert len(resumed.history) == 2 and again["_extra_state"] == state["_extra_state"]
    torch.testing.assert_close(again["estimator_logits"], state["estimator_logits"])
    assert isinstance(RunConfig.from_yaml(Path(cfg.output_dir) / "config.yaml").data.partial, dict)


def test_observed_share_by_class_and_the_figures_on_planted_tables() -> None:
    from matplotlib.figure import Figure

    from mlic import plots
    from mlic.studies.single_positive import observed_share_by_class

    labels = np.array([[1, 1, 0], [1, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=np.uint8)
    observed = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=np.int8)
    shares = observed_share_by_class({"uniform": _table(labels, observed)})
    # class 0: 1 of 3 positives observed, class 1: 1 of 2, class 2: 1 of 1
    np.testing.assert_allclose(shares["share"], [1 / 3, 1 / 2, 1.0])
    assert isinstance(plots.observed_share(shares), Figure)
    runs = pd.DataFrame({"variant": ["bce", "an", "role", "role"], "seed": [0, 0, 0, 1],
                         "test/mAP": [60.0, 50.0, 52.0, 54.0], "test_shift/mAP": [25.0, 20.0, 21.0, 22.0],
                         "hidden_recall": [0.6, 0.02, 0.3, 0.4], "precision": [0.7, 0.7, 0.5, 0.6],
                         "estimator_hidden_recall": [np.nan, np.nan, 0.2, 0.3],
                         "estimator_precision": [np.nan, np.nan, 0.6, 0.6]})
    assert len(plots.spml_losses(runs).axes) == 2
    assert isinstance(plots.recovered_positives(runs), Figure)
    curves = pd.DataFrame({"epoch": [0, 1, 0, 1], "seed": [0, 0, 1, 1], "accuracy": [0.5, 0.9, 0.5, 0.8],
                           "hidden_recall": [0.5, 0.2, 0.5, 0.3], "precision": [0.1, 0.6, 0.1, 0.5],
                           "mean_abs_error": [0.5, 0.4, 0.5, 0.4]})
    assert isinstance(plots.estimator_agreement(curves), Figure)
    assert isinstance(plots.estimator_agreement(curves.iloc[:0]), Figure)  # no ROLE run: an empty panel
    summary = summarise(runs, ["test", "test_shift"])
    assert summary.set_index("variant").loc["role", "test/mAP_mean"] == 53.0
    assert summary.set_index("variant").loc["role", "test/mAP_std"] == pytest.approx(np.std([52, 54], ddof=1))
    import matplotlib.pyplot as plt

    plt.close("all")
