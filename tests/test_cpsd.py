"""CPSD: teacher target restriction, logit merging and caching, the student loss, the pipeline and `mlic cpsd`."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from mlic import plots, runs
from mlic.cli.main import main as mlic_main
from mlic.core.config import RunConfig
from mlic.data import LabelledImages, load_split
from mlic.data.subsets import restrict_labels
from mlic.losses import create_loss, list_losses
from mlic.losses.distill import default_teacher_weights, mse_logits
from mlic.studies.cpsd import (
    VARIANTS,
    CPSDStudy,
    Partition,
    figure_models,
    merge_part_logits,
    partition_sweep,
    per_label_gain,
    predict_logits,
    run_ablation,
    summarize,
    variant_costs,
)
from tests.conftest import tiny_config

matplotlib.use("Agg")


def toy_table() -> LabelledImages:
    labels = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1], [1, 1, 0, 0]], dtype=np.uint8)
    boxes = [np.array([[0, 1, 1, 2, 2], [2, 0, 0, 3, 3]], np.float32), np.array([[1, 0, 0, 1, 1]], np.float32),
             np.array([[3, 2, 2, 1, 1]], np.float32), np.zeros((0, 5), np.float32)]
    return LabelledImages(paths=[f"/x/{i}.png" for i in range(4)], labels=labels, class_names=["a", "b", "c", "d"],
                          boxes=boxes, observed=labels.astype(np.int8) * 2 - 1,
                          extras={"context": np.arange(4), "scenes": {"groups": [[0, 1]]}}, source="toy")


def test_teacher_view_keeps_every_image_and_only_the_part_labels() -> None:
    view = restrict_labels(toy_table(), ["c", "a"])
    assert len(view) == 4 and view.class_names == ["c", "a"] and view.image_ids == toy_table().image_ids
    assert view.labels.tolist() == [[1, 1], [0, 0], [0, 0], [0, 1]]  # images without c or a: all-negative
    assert view.observed.tolist() == [[1, 1], [-1, -1], [-1, -1], [-1, 1]]
    assert [b[:, 0].tolist() for b in view.boxes] == [[1, 0], [], [], []]  # boxes of c, a re-indexed
    assert view.extras["context"].tolist() == [0, 1, 2, 3] and view.extras["label_subset"]["columns"] == [2, 0]
    assert view.extras["parent"] == {"scenes": {"groups": [[0, 1]]}}
    with pytest.raises(ValueError, match="unknown"):
        restrict_labels(toy_table(), ["a", "z"])


def test_label_subset_reader_wraps_any_reader(scenes_root: Path) -> None:
    full = load_split("scenes", scenes_root, "val")
    classes = [full.class_names[i] for i in (7, 2, 11)]
    view = load_split("label_subset", scenes_root, "val", base="scenes", classes=classes)
    assert view.class_names == classes and view.image_ids == full.image_ids
    assert np.array_equal(view.labels, full.labels[:, [7, 2, 11]])


def test_merge_scatters_part_logits_to_global_order() -> None:
    a, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[5.0], [6.0]])
    merged = merge_part_logits([a, b], [[2, 0], [1]], 3)
    assert merged.tolist() == [[2, 5, 1], [4, 6, 3]]
    with pytest.raises(ValueError, match="exactly once"):
        merge_part_logits([a, b], [[2, 0], [0]], 3)
    with pytest.raises(ValueError, match="part logits of shape"):
        merge_part_logits([a, b], [[2], [0, 1]], 3)


# ------------------------------------------------------------------------------------------------ the student loss
def _teacher_file(path: Path, logits: np.ndarray, ids: list[str], names: list[str]) -> str:
    np.savez(path, logits=logits, image_ids=np.asarray(ids), class_names=np.asarray(names))
    return str(path)


def test_student_loss_equals_its_formula(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, c = 6, 4
    names, ids = [f"c{i}" for i in range(c)], [f"img{i}" for i in range(n)]
    t_cgp, t_dgp = rng.normal(size=(n, c)).astype(np.float32), rng.normal(size=(n, c)).astype(np.float32)
    files = {"cgp": _teacher_file(tmp_path / "cgp.npz", t_cgp, ids, names),
             "dgp": _teacher_file(tmp_path / "dgp.npz", t_dgp, ids, names)}
    # the training table lists the images in another order: rows are aligned by image id
    order = [3, 0, 5, 1, 4, 2]
    table = LabelledImages(paths=[f"/x/{ids[i]}.png" for i in order], labels=rng.integers(0, 2, (n, c)),
                           class_names=names, image_ids=[ids[i] for i in order])
    index = torch.tensor([4, 0, 2])
    s = torch.randn(3, c, requires_grad=True)
    y = torch.from_numpy(table.labels[index.numpy()].astype(np.float32))
    cgp, dgp = torch.from_numpy(t_cgp[[order[i] for i in index]]), torch.from_numpy(t_dgp[[order[i] for i in index]])
    asl_sum = create_loss("asl", reduction="sum")(s, y)
    for alpha in (0.5, 0.8):
        loss = create_loss("cpsd", teachers=files, alpha=alpha, reduction="sum")
        loss.bind(table)
        expected = (0.5 * asl_sum + alpha / 2 * ((s - cgp) ** 2).sum()
                    + round(0.5 - alpha / 2, 2) * ((s - dgp) ** 2).sum())
        torch.testing.assert_close(loss(s, y, index=index), expected)
    mean_loss = create_loss("cpsd", teachers=files, reduction="mean")
    mean_loss.bind(table)
    torch.testing.assert_close(mean_loss(s, y, index=index), expected.new_tensor(0) + (
        0.5 * asl_sum + 0.25 * ((s - cgp) ** 2).sum() + 0.25 * ((s - dgp) ** 2).sum()) / s.numel())
    paper = create_loss("cpsd", teachers=files, alpha=1.0, cls_weight=1.0, teacher_weights={"cgp": .5, "dgp": .5},
                        reduction="sum")
    paper.bind(table)
    torch.testing.assert_close(paper(s, y, index=index),
                               asl_sum + 0.5 * ((s - cgp) ** 2).sum() + 0.5 * ((s - dgp) ** 2).sum())
    paper(s, y, index=index).backward()  # differentiable in the student's logits
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_distillation_losses_registered_and_checked(tmp_path: Path) -> None:
    assert {"cpsd", "kd_mse"} <= set(list_losses())
    s, t = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(create_loss("kd_mse")(s, t), ((s - t) ** 2).mean())
    torch.testing.assert_close(mse_logits(s, t, reduction="sum"), ((s - t) ** 2).sum())
    assert default_teacher_weights(["single"]) == {"single": 0.5}
    assert default_teacher_weights(["cgp", "dgp"], 0.3) == {"cgp": 0.15, "dgp": 0.35}
    ids, names = ["a", "b"], ["x", "y", "z"]
    kd = create_loss("kd_mse", teacher=_teacher_file(tmp_path / "t.npz", t.numpy(), ids, names))
    kd.bind(LabelledImages(paths=["/b.png", "/a.png"], labels=np.zeros((2, 3)), class_names=names,
                                   image_ids=["b", "a"]))
    torch.testing.assert_close(kd(s, torch.zeros(2, 3), index=torch.tensor([1, 0])), ((s - t) ** 2).mean())
    loss = create_loss("cpsd", teachers={"cgp": str(tmp_path / "t.npz")})
    with pytest.raises(ValueError, match="classes"):
        loss.bind(LabelledImages(paths=["/a.png"], labels=np.zeros((1, 3)), class_names=["x", "y", "w"],
                                         image_ids=["a"]))
    with pytest.raises(ValueError, match="no teacher logits for 1"):
        loss.bind(LabelledImages(paths=["/c.png"], labels=np.zeros((1, 3)), class_names=names,
                                         image_ids=["c"]))
    loss.set_teacher_logits({"cgp": t})
    with pytest.raises(ValueError, match="index"):
        loss(s, torch.zeros(2, 3))
    with pytest.raises(FileNotFoundError, match="train the teachers"):
        create_loss("cpsd", teachers={"cgp": str(tmp_path / "missing.npz")}).bind(toy_table())


# ------------------------------------------------------------------------------------------------ the pipeline
def _base(scenes_root: Path, tmp_path: Path, *, frozen: bool) -> RunConfig:
    return tiny_config(scenes_root, tmp_path / "unused", **{"train.epochs": 1, "train.ema_decay": None,
                                                             "model.freeze_backbone": frozen, "runtime.threads": 1})


@pytest.fixture(scope="module")
def frozen_ablation(scenes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[CPSDStudy, pd.DataFrame]:
    study = CPSDStudy(_base(scenes_root, tmp_path_factory.mktemp("unused"), frozen=True),
                      tmp_path_factory.mktemp("frozen_study"))
    return study, run_ablation(study, k=2, seeds=[0])


@pytest.mark.slow
def test_teachers_train_on_restricted_targets_and_merged_logits_are_cached(
        frozen_ablation: tuple[CPSDStudy, pd.DataFrame]) -> None:
    study, frame = frozen_ablation
    part = study.partition("dgp", 2, 0)
    assert Partition.load(study.root / "partitions" / "dgp-k2-seed0.json") == part
    (logits_file,) = (study.root / "teachers" / "dgp-k2-seed0").glob("logits-*.npz")
    cached = np.load(logits_file)
    assert cached["logits"].shape == (96, 20) and np.isfinite(cached["logits"]).all()
    assert list(cached["image_ids"]) == [str(i) for i in study.train_table.image_ids]
    for t, cfg in enumerate(study.teacher_configs("dgp", 2, 0)):
        run = runs.Run(cfg.output_dir)
        model, run_cfg, classes = runs.load_model(run.checkpoint("best"))
        assert classes == part.part_classes(t) and model.num_classes == len(classes)  # a head of |part| outputs
        assert run_cfg.data.dataset == "label_subset" and run_cfg.model.freeze_backbone
        assert run.class_names == classes and run_cfg.tags == {**run_cfg.tags, "role": "teacher", "part": t}
        logits = predict_logits(run.checkpoint("best"), study.train_table)  # eval mode, cached features
        np.testing.assert_allclose(cached["logits"][:, part.groups[t]], logits, rtol=1e-5, atol=1e-5)
    student = runs.Run(frame.set_index("variant").loc["cpsd", "run_dir"]).state("best")
    kwargs = student["config"]["loss"]["kwargs"]
    assert student["config"]["loss"]["name"] == "cpsd" and set(kwargs["teachers"]) == {"cgp", "dgp"}
    assert kwargs["alpha"] == 0.5 and kwargs["cls_weight"] == 0.5 and kwargs["base"] == "asl"
    assert len(kwargs["teacher_digest"]) == 24  # retrained teachers change it: the student becomes another run
    found = figure_models(study.root, k=2, seed=0)
    assert found["CPSD"] == frame.set_index("variant").loc["cpsd", "run_dir"]
    assert found["CGP"] == [c.output_dir for c in study.teacher_configs("cgp", 2, 0)]


@pytest.mark.slow
def test_ablation_table_summary_gain_and_figures(frozen_ablation: tuple[CPSDStudy, pd.DataFrame]) -> None:
    study, frame = frozen_ablation
    assert frame["variant"].tolist() == ["baseline", "sd", "cgpd", "dgpd", "cpsd"]
    assert frame["teachers"].tolist() == [0, 1, 2, 2, 4]
    assert (frame["total_seconds"] > 0).all() and frame["test_shift/mAP"].between(0, 100).all()
    summary = summarize(frame)
    assert summary.loc[0, "test/mAP"] == f"{frame.loc[0, 'test/mAP']:.2f} ± 0.00" and summary["seeds"].eq(1).all()
    gain = per_label_gain(frame, "cpsd", train_labels=study.train_table.labels,
                          groups=study.train_table.extras["scenes"]["groups"])
    assert len(gain) == 40 and set(gain["split"]) == {"test", "test_shift"}
    np.testing.assert_allclose(gain["gain"], gain["ap_cpsd"] - gain["ap_baseline"])
    sweep = frame[frame.variant.isin(["cgpd", "dgpd", "cpsd"])]
    base = {s: frame.loc[0, f"{s}/mAP"] for s in ("test", "test_shift")}
    labels = study.train_table.labels
    parts, ari = partition_sweep(labels, [2, 3], groups=study.train_table.extras["scenes"]["groups"])
    assert set(ari["strategy"]) == {"cgp", "dgp", "random"} and ari["ari"].between(-1, 1).all()
    from mlic.models.label_graph import affinity, cooccurrence, laplacian_spectrum

    M, N = cooccurrence(labels)
    names = study.train_table.class_names
    figures = [plots.ablation_bars(frame), plots.k_sweep(sweep, baseline=base, sd=base),
               plots.label_gain(gain), plots.training_cost(variant_costs(frame)), plots.ari_per_k(ari),
               plots.partition_grid(parts, names, groups=study.train_table.extras["scenes"]["groups"]),
               plots.clustered_heatmap(M, names, groups=study.train_table.extras["scenes"]["groups"]),
               plots.label_graph(affinity(M, N, "co"), names, parts["cgp"][3]),
               plots.eigenvalue_spectrum({"CGP": laplacian_spectrum(affinity(M, N, "co"))})]
    for fig in figures:
        assert fig.axes
        matplotlib.pyplot.close(fig)


@pytest.mark.slow
def test_teacher_logits_are_the_eval_mode_predictions_of_the_saved_weights(
        frozen_ablation: tuple[CPSDStudy, pd.DataFrame], scenes_root: Path) -> None:
    study, _ = frozen_ablation
    cfg = study.teacher_configs("cgp", 2, 0)[1]
    view = load_split("label_subset", scenes_root, "val", **cfg.data.options)
    run = runs.Run(cfg.output_dir)
    logits = predict_logits(run.checkpoint("best"), view)
    np.testing.assert_allclose(torch.sigmoid(torch.from_numpy(logits)).numpy(), run.predictions("val")["scores"],
                               atol=1e-5)


@pytest.mark.slow
def test_eval_of_a_teacher_checkpoint_needs_no_study_import(frozen_ablation: tuple[CPSDStudy, pd.DataFrame],
                                                            tmp_path: Path) -> None:
    """`mlic eval` of a CPSD teacher in a fresh process: the label_subset reader is registered with the readers."""
    import subprocess
    import sys

    study, _ = frozen_ablation
    run = runs.Run(study.teacher_configs("cgp", 2, 0)[0].output_dir)
    out = tmp_path / "eval.json"
    done = subprocess.run([sys.executable, "-m", "mlic", "eval", str(run.path), "--split", "val", "--device", "cpu",
                           "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["val"]["mAP"] == pytest.approx(run.metrics["val"]["mAP"], abs=1e-3)


@pytest.mark.slow
def test_tiny_cpsd_end_to_end_through_the_cli(scenes_root: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cpsd"
    argv = ["cpsd", "--data-root", str(scenes_root), "--image-size", "32", "--batch-size", "16", "--backbone",
            "test_efficientnet", "--no-pretrained", "--epochs", "1", "--k", "2", "--root", str(root),
            "--no-progress", "--threads", "1", "--jobs", "2", "--set", "train.ema_decay=null",
            "--teacher-set", "optim.lr=0.002", "--train-split", "train"]
    assert mlic_main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["variant"] == "cpsd" and out[0]["teachers"] == 4 and "test_shift" in out[0]["metrics"]
    teachers = sorted(run.final_file for run in runs.find(root, role="teacher"))
    assert len(teachers) == 4
    assert RunConfig.from_yaml(teachers[0].parent / "config.yaml").optim.lr == 0.002  # teacher-only override
    (student,) = runs.find(root, role="student", variant="cpsd")
    assert not student.config.model.freeze_backbone  # end to end
    table = load_split("scenes", scenes_root, "train")
    logits_files = sorted(root.glob("teachers/*/logits-*.npz"))
    for logits_file in logits_files:  # eval-mode logits of the images (no augmentation)
        family = logits_file.parent.name
        part = Partition.load(root / "partitions" / f"{family}.json")
        members = sorted(runs.find(root, role="teacher", family=family), key=lambda r: r.config.tags["part"])
        merged = merge_part_logits([predict_logits(r.checkpoint("best"), table) for r in members], part.groups, 20)
        np.testing.assert_allclose(np.load(logits_file)["logits"], merged, atol=1e-5)

    stamps = {p: p.stat().st_mtime_ns for p in [*teachers, *logits_files]}
    teachers[1].unlink()  # an unfinished teacher: only it runs again (from its last.pt if kept, else afresh)
    import shutil

    shutil.rmtree(student.path)  # the student phase reruns alone from the cached logits
    assert mlic_main(argv) == 0
    assert teachers[1].exists()
    (again,) = runs.find(root, role="student", variant="cpsd")  # retrained teachers: the student is a new run
    assert again.path != student.path and again.is_finished()
    changed = sorted(p for p, t in stamps.items() if p.stat().st_mtime_ns != t)
    family_logits = next(iter((teachers[1].parent.parent.parent).glob("logits-*.npz")))
    assert changed == sorted([teachers[1], family_logits])  # its family only
    assert set(VARIANTS) == {"baseline", "sd", "cgpd", "dgpd", "cpsd", "rpd"}
