"""CAMs, head-native maps and the pointing game (`mlic.explain`), checked against pytorch-grad-cam called directly,
hand-made maps and boxes, and a model trained for a few steps on the tiny Scenes fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from mlic import explain
from mlic.core.config import RunConfig
from mlic.data.table import LabelledImages
from mlic.models import backbone_data_config, create_model
from mlic.runs import Run
from tests.conftest import tiny_config

DIRECT = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM, "eigencam": EigenCAM,
          "scorecam": ScoreCAM}
PAIRS = np.array([[0, 1], [2, 3], [1, 1], [0, 4], [2, 0]])


def _cnn(seed: int = 0, head: str = "gap", **head_kwargs: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("test_efficientnet", head, 5, pretrained=False, head_kwargs=head_kwargs)


def _direct(model: torch.nn.Module, layer: torch.nn.Module, inputs: torch.Tensor, pairs: np.ndarray, cls: type,
            reshape: object = None) -> np.ndarray:
    """pytorch-grad-cam as its README shows it, on the whole batch of pairs at once (full backward pass, no mlic code
    involved)."""
    cam = cls(model=model, target_layers=[layer], reshape_transform=reshape)
    try:
        return cam(input_tensor=inputs[torch.as_tensor(pairs[:, 0])],
                   targets=[ClassifierOutputTarget(int(c)) for c in pairs[:, 1]])
    finally:
        cam.activations_and_grads.release()


@pytest.mark.parametrize("method", sorted(DIRECT))
def test_cams_equal_pytorch_grad_cam_called_directly(method: str) -> None:
    model = _cnn()
    inputs = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ours = explain.compute_cams(model.train(), inputs, PAIRS, method=method, batch_size=2)
    assert ours.layer == "backbone.blocks.4"  # test_efficientnet's feature_info[-1]
    model.eval()
    theirs = _direct(model, model.backbone.blocks[4], inputs, PAIRS, DIRECT[method])
    assert ours.maps.shape == (len(PAIRS), 64, 64)
    np.testing.assert_allclose(ours.maps, theirs, atol=2e-5)
    with torch.no_grad():
        expected = torch.sigmoid(model(inputs))[PAIRS[:, 0], PAIRS[:, 1]].numpy()
    np.testing.assert_allclose(ours.scores, expected, atol=1e-5)


def test_a_single_pair_gets_the_gradient_it_gets_inside_a_batch() -> None:
    """torch 2.14's CPU eval-mode BatchNorm backward is wrong for a batch of one with a channels-last strided incoming
    gradient (what the heads' token view produces); `compute_cams` never runs a batch of one."""
    model = _cnn().eval()
    inputs = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    in_batch = _direct(model, model.backbone.blocks[4], inputs, PAIRS, GradCAM)
    for i, pair in enumerate(PAIRS):
        alone = explain.compute_cams(model, inputs, [pair], method="gradcam").maps[0]
        np.testing.assert_allclose(alone, in_batch[i], atol=2e-5)


def test_cam_restores_modes_and_gradient_flags_and_leaves_no_grad() -> None:
    model = _cnn().train()
    model.backbone.eval()  # a frozen-backbone run: backbone in eval, head in train
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    maps = explain.compute_cams(model, torch.randn(2, 3, 64, 64), [[0, 0], [1, 2]], method="gradcam").maps
    assert maps.max() > 0  # gradients reached the layer although the backbone is frozen
    assert model.training and model.head.training and not model.backbone.training
    assert not any(m.training for m in model.backbone.modules())
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_target_layer_by_feature_info_stage_or_name() -> None:
    model = _cnn()
    stages = model.backbone.feature_info
    assert explain.resolve_target_layer(model)[0] == f"backbone.{stages[-1]['module']}"
    name, layer = explain.resolve_target_layer(model, -2)
    assert name == f"backbone.{stages[-2]['module']}" and layer is model.backbone.get_submodule(stages[-2]["module"])
    assert explain.resolve_target_layer(model, "bn2")[1] is model.backbone.bn2  # relative to the backbone
    assert explain.resolve_target_layer(model, "backbone.conv_head")[1] is model.backbone.conv_head
    with pytest.raises(ValueError, match="no sub-module"):
        explain.resolve_target_layer(model, "nope")
    inputs = torch.randn(1, 3, 64, 64)
    theirs = _direct(model.eval(), model.backbone.bn2, inputs, np.array([[0, 2]]), GradCAM)
    np.testing.assert_allclose(explain.compute_cams(model, inputs, [[0, 2]], target_layer="bn2").maps, theirs,
                               atol=2e-5)


def test_vit_tokens_take_the_patch_grid_of_the_input_size() -> None:
    torch.manual_seed(0)
    model = create_model("test_vit", "gap", 4, pretrained=False,
                         backbone_kwargs={"img_size": 64, "dynamic_img_size": True}).eval()
    inputs = torch.randn(2, 3, 64, 96)  # not square: a 4 × 6 grid of 16-pixel patches, after one class token

    def reshape(tokens: torch.Tensor) -> torch.Tensor:  # written out for this model: drop 1 token, 4 × 6 grid
        return tokens[:, 1:].reshape(tokens.shape[0], 4, 6, tokens.shape[2]).permute(0, 3, 1, 2)

    pairs = np.array([[0, 1], [1, 3]])
    ours = explain.compute_cams(model, inputs, pairs, method="gradcam")
    assert ours.layer == "backbone.blocks.5"
    theirs = _direct(model, model.backbone.blocks[5], inputs, pairs, GradCAM, reshape)
    assert ours.maps.shape == (2, 64, 96)
    np.testing.assert_allclose(ours.maps, theirs, atol=2e-5)
    assert explain.patch_grid(model, (64, 96), 24) == (4, 6)


def test_unknown_method_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="gradcam"):
        explain.compute_cams(_cnn(), torch.zeros(1, 3, 32, 32), [[0, 0]], method="nope")
    assert {"gradcam", "gradcam++", "scorecam", "eigencam", "layercam", "attention", "graph_cam"} <= set(
        explain.list_methods())


def test_ml_decoder_attention_map_is_the_label_query_attention() -> None:
    model = _cnn(head="ml_decoder", num_groups=3, decoder_embedding=32, dim_feedforward=64, num_heads=4).eval()
    inputs = torch.randn(2, 3, 128, 128)
    pairs = np.array([[0, 0], [1, 4], [1, 2]])
    ours = explain.head_maps(model, inputs, pairs, method="attention")
    with torch.no_grad():
        _, aux = model.forward_aux(inputs)
    attention = aux["attention"].numpy()  # [B, groups, 4, 4]
    group = aux["query_of_class"].numpy()
    raw = np.stack([attention[r, group[c]] for r, c in pairs])
    np.testing.assert_allclose(ours.maps, scale_cam_image(raw, (128, 128)), atol=1e-6)
    assert "attention" in explain.available_methods(model) and "attention" not in explain.available_methods(_cnn())


def test_graph_reweighting_map_folds_the_channel_weights_into_the_class_map() -> None:
    model = _cnn(head="gat_reweight", label_embeddings="learned").eval()
    inputs = torch.randn(1, 3, 128, 128)
    ours = explain.head_maps(model, inputs, [[0, 3]], method="graph_cam")
    with torch.no_grad():
        features = model.forward_features(inputs)[0]  # [F, 4, 4]
        weights = model.head.channel_weights()
        raw = torch.einsum("f,fhw->hw", model.head.decoder.fc.weight[3] * weights, features).numpy()
    np.testing.assert_allclose(ours.maps[0], scale_cam_image(np.maximum(raw, 0)[None], (128, 128))[0], atol=1e-5)
    assert "graph_cam" in explain.available_methods(model)


def test_parts_route_each_label_to_the_part_that_predicts_it() -> None:
    one, two = _cnn(seed=1), _cnn(seed=2)
    model = explain.ExplainedModel(
        name="family", parts=[(one, np.array([0, 2, 4, 6, 8])), (two, np.array([1, 3, 5, 7, 9]))],
        class_names=[f"c{i}" for i in range(10)], data=tiny_config(Path("."), Path(".")).data,
        mean=(0.5,) * 3, std=(0.5,) * 3)
    inputs = torch.randn(2, 3, 64, 64)
    ours = model.explain(inputs, [[0, 4], [1, 7], [1, 0]])
    np.testing.assert_allclose(ours.maps[0], explain.compute_cams(one, inputs, [[0, 2]]).maps[0], atol=1e-6)
    np.testing.assert_allclose(ours.maps[1], explain.compute_cams(two, inputs, [[1, 3]]).maps[0], atol=1e-6)
    np.testing.assert_allclose(ours.maps[2], explain.compute_cams(one, inputs, [[1, 0]]).maps[0], atol=1e-6)
    predicted = model.predict(inputs)
    with torch.no_grad():
        np.testing.assert_allclose(predicted[:, 7], torch.sigmoid(two.eval()(inputs))[:, 3].numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Pointing game on hand-made maps and boxes
# ---------------------------------------------------------------------------------------------------------------------
def _hand_table() -> LabelledImages:
    """One 40 × 20 image (w × h) holding labels 0 and 1, and an empty second image; boxes in image pixels."""
    boxes = [np.array([[0, 0, 0, 10, 10], [1, 20, 10, 20, 10]], dtype=np.float32), np.zeros((0, 5), np.float32)]
    return LabelledImages(paths=["a.png", "b.png"], labels=np.array([[1, 1, 0], [0, 0, 1]]),
                          class_names=["laptop", "mouse", "car"], boxes=boxes,
                          extras={"width": np.array([40, 40]), "height": np.array([20, 20])})


def test_box_masks_map_image_pixels_onto_the_squished_map() -> None:
    masks = explain.box_masks(_hand_table().boxes[0], (40, 20), (10, 20))  # map: 10 rows × 20 columns, scale 1/2
    expected = np.zeros((10, 20), bool)
    expected[0:5, 0:5] = True
    np.testing.assert_array_equal(masks[0], expected)
    expected = np.zeros((10, 20), bool)
    expected[5:10, 10:20] = True
    np.testing.assert_array_equal(masks[1], expected)
    grown = explain.box_masks(_hand_table().boxes[0], (40, 20), (10, 20), tolerance=2.0)[0]
    assert grown[:6, :6].all() and grown.sum() == 36


def test_pointing_game_and_energy_on_a_hand_made_map() -> None:
    table = _hand_table()
    cam = np.zeros((10, 20))
    cam[0:5, 0:5] = 1.0  # all over the laptop: 25 pixels of 1
    cam[7, 15] = 3.0  # one bright pixel on the mouse: the maximum
    frame = explain.pointing_game(np.stack([cam, cam]), [[0, 1], [0, 0]], table)
    mouse, laptop = frame.iloc[0], frame.iloc[1]
    assert mouse["hit"] and not laptop["hit"]
    assert mouse["energy"] == pytest.approx(3 / 28) and mouse["companion_energy"] == pytest.approx(25 / 28)
    assert laptop["energy"] == pytest.approx(25 / 28) and laptop["companion_energy"] == pytest.approx(3 / 28)
    assert mouse["background_energy"] == pytest.approx(0.0)
    assert mouse["area"] == pytest.approx(50 / 200) and mouse["companion_area"] == pytest.approx(25 / 200)
    assert mouse["companions"] == 1 and mouse["class"] == "mouse"

    flat = explain.pointing_game(np.zeros((1, 10, 20)), [[0, 0]], table).iloc[0]
    assert flat["flat"] and flat["energy"] == pytest.approx(25 / 200)  # a constant map scores as a uniform one

    frame["model"], frame["split"] = "m", "test"
    summary = explain.summarize_pointing(frame).iloc[0]
    assert summary["pointing"] == pytest.approx(50.0) and summary["pairs"] == 2
    assert summary["energy"] == pytest.approx(100 * (3 / 28 + 25 / 28) / 2)
    assert summary["energy_chance"] == pytest.approx(100 * (50 + 25) / 400)
    per_label = explain.per_label_pointing(frame).set_index("class")
    assert per_label.loc["mouse", "pointing"] == 100.0 and per_label.loc["laptop", "pointing"] == 0.0


def test_pointing_game_needs_boxes() -> None:
    table = _hand_table()
    table.boxes = None
    with pytest.raises(ValueError, match="boxes"):
        explain.pointing_game(np.zeros((1, 4, 4)), [[0, 0]], table)


def test_positive_pairs_and_sampled_rows() -> None:
    table = _hand_table()
    np.testing.assert_array_equal(explain.positive_pairs(table), [[0, 0], [0, 1], [1, 2]])
    np.testing.assert_array_equal(explain.positive_pairs(table, labels=[1]), [[0, 1]])
    assert list(explain.sample_rows(table, 0)) == [0, 1] and len(explain.sample_rows(table, 1, seed=3)) == 1


def test_random_maps_score_near_the_box_area() -> None:
    table = _hand_table()
    pairs = np.array([[0, 0], [0, 1]] * 200)
    frame = explain.pointing_game(explain.random_maps((len(pairs), 10, 20), seed=0), pairs, table)
    assert frame["hit"].mean() == pytest.approx(frame["area"].mean(), abs=0.05)
    assert frame["energy"].mean() == pytest.approx(frame["area"].mean(), abs=0.01)


def _fake_run(path: Path, **tags: object) -> str:
    """A finished run folder as the run layer writes one (config with tags, final metrics, a best checkpoint)."""
    run = Run(path)
    RunConfig(tags=dict(tags)).to_yaml(run.config_file)
    run.final_file.write_text("{}")
    run.checkpoint("best").parent.mkdir(parents=True, exist_ok=True)
    run.checkpoint("best").touch()
    return str(path)


def test_find_runs_and_cpsd_models_follow_the_study_tags(tmp_path: Path) -> None:
    cpsd = {"study": "cpsd", "seed": 0}
    baseline = _fake_run(tmp_path / "students/baseline/a", role="student", variant="baseline", k=None, **cpsd)
    student = _fake_run(tmp_path / "students/cpsd-k5/b", role="student", variant="cpsd", k=5, **cpsd)
    parts = [_fake_run(tmp_path / f"teachers/cgp-k5-seed0/part{t}/c", role="teacher", family="cgp-k5-seed0",
                       strategy="cgp", k=5, part=t, **cpsd) for t in range(5)]
    _fake_run(tmp_path / "teachers/dgp-k2-seed0/part0/d", role="teacher", family="dgp-k2-seed0", strategy="dgp",
              k=2, part=0, **cpsd)
    found = explain.find_runs(tmp_path)
    assert sorted(found) == ["students/baseline/a", "students/cpsd-k5/b", "teachers/cgp-k5-seed0",
                             "teachers/dgp-k2-seed0"]
    assert found["teachers/cgp-k5-seed0"] == [Path(p) for p in parts]  # a family: its parts in order
    from mlic.studies.cpsd import figure_models

    figure = figure_models(tmp_path, k=5, seed=0)
    assert figure == {"baseline": baseline, "CPSD": student, "CGP": parts}  # DGP at k = 5 was never trained
    assert explain.gather_runs({"mine": "x"}, cpsd_root=str(tmp_path)) == {**figure, "mine": "x"}


# ---------------------------------------------------------------------------------------------------------------------
# A trained model against chance
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_model_trained_a_few_steps_beats_a_random_map_on_the_pointing_game(scenes_root: Path,
                                                                          tmp_path: Path) -> None:
    from mlic.data import load_split
    from mlic.train import fit

    # 128 px puts an 8 × 8 map at the stride-16 stage (the fixture's objects are 8 to 14 px of 32)
    cfg = tiny_config(scenes_root, tmp_path / "run", **{"data.image_size": 128, "train.epochs": 6,
                                                        "data.eval_splits": []})
    fit(cfg)
    model = explain.load_explained(cfg.output_dir)
    assert model.image_size == 128 and backbone_data_config(model.model.backbone)["mean"] == pytest.approx(model.mean)
    tables = {split: load_split("scenes", scenes_root, split) for split in ("val", "test", "test_shift")}
    frame = explain.score_models({"trained": model}, tables, target_layer=-2, max_images=0)
    assert len(frame) == sum(int(t.labels.sum()) for t in tables.values())
    chance = []
    for seed in range(20):
        for split, table in tables.items():
            rows = frame[frame["split"] == split]
            pairs = rows[["row", "label"]].to_numpy()
            chance.append(explain.pointing_game(explain.random_maps((len(pairs), 128, 128), seed=seed), pairs,
                                                table).assign(seed=seed))
    random = pd.concat(chance)
    hit, random_hit = frame["hit"].mean(), random.groupby("seed")["hit"].mean()
    assert hit > random_hit.max() + 0.02 and hit > frame["area"].mean() + 0.05
    assert frame["energy"].mean() > frame["area"].mean()
    summary = explain.summarize_pointing(frame)
    assert set(summary["split"]) == set(tables) and (summary["pairs"] > 0).all()


@pytest.mark.slow
def test_the_fallback_run_follows_its_config(scenes_root: Path, tmp_path: Path) -> None:
    """A changed fallback config trains a new run instead of showing the old model; the same one is reused."""
    fallback = tiny_config(scenes_root, tmp_path / "cams", **{"train.epochs": 1, "model.freeze_backbone": True,
                                                              "train.ema_decay": None})
    first = explain.gather_runs(fallback=fallback)["baseline"]
    assert Run(first).config.identity_hash() == fallback.identity_hash()
    assert explain.gather_runs(fallback=fallback.updated({"runtime.progress": True}))["baseline"] == first
    other = explain.gather_runs(fallback=fallback.updated({"optim.lr": 1e-4}))["baseline"]
    assert other != first and Run(other).config.optim.lr == 1e-4 and Run(first).is_finished()
