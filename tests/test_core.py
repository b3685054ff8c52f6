"""Config, registry, atomic io, the LabelledImages table, transforms and the image reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlic.core.config import RunConfig
from mlic.core.errors import BadImageError
from mlic.core.io import atomic_path, atomic_write_json
from mlic.core.registry import Registry
from mlic.data.dataset import Cutout, ImageDataset, build_transforms, collate_skipping, read_image
from mlic.data.table import LabelledImages


def test_config_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = RunConfig().updated({"train.epochs": 3, "loss.kwargs": {"gamma_neg": 2}, "data.eval_splits": ["test"]})
    cfg.to_yaml(tmp_path / "c.yaml")
    assert RunConfig.from_yaml(tmp_path / "c.yaml") == cfg
    assert cfg.train.epochs == 3 and cfg.loss.kwargs == {"gamma_neg": 2}


def test_config_rejects_unknown_keys_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="epochz"):
        RunConfig.from_dict({"train": {"epochz": 3}})
    (tmp_path / "bad.yaml").write_text("train: {epochz: 3}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*epochz"):
        RunConfig.from_yaml(tmp_path / "bad.yaml")


def test_registry_creates_by_name_drops_none_and_lists_choices() -> None:
    reg: Registry[dict] = Registry("thing")
    reg.register("pair")(lambda a=1, b=2: {"a": a, "b": b})
    assert reg.create("pair", a=5, b=None) == {"a": 5, "b": 2}
    built = {"already": True}
    assert reg.create(built) is built
    with pytest.raises(ValueError, match="Unknown thing 'nope'. Available: pair"):
        reg.create("nope")
    with pytest.raises(KeyError):
        reg.register("pair")(lambda: None)


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()
    assert list(tmp_path.iterdir()) == [target]  # no temporary left behind


def _table(tmp_path: Path, n: int = 4) -> LabelledImages:
    paths = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((10, 12, 3), 40 * i, dtype=np.uint8)).save(path)
        paths.append(path)
    labels = np.eye(n, 3, dtype=np.uint8)
    return LabelledImages(paths, labels, ["a", "b", "c"], extras={"context": np.arange(n)})


def test_table_validates_shapes_and_subsets_keep_extras(tmp_path: Path) -> None:
    table = _table(tmp_path)
    sub = table.subset([2, 0])
    assert sub.image_ids == ["2", "0"] and sub.extras["context"].tolist() == [2, 0]
    assert sub.labels.tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="shape"):
        LabelledImages(table.paths, np.zeros((4, 2)), ["a", "b", "c"])
    assert table.summary()["images_without_labels"] == 1


def test_cutout_fills_half_side_square_with_one_colour() -> None:
    torch.manual_seed(3)
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    changed = Cutout(0.5)(image).ne(0).any(0)
    rows, cols = np.nonzero(changed.numpy())
    assert rows.max() - rows.min() + 1 <= 20 and cols.max() - cols.min() + 1 <= 20
    assert changed.sum() > 0


def test_eval_transform_squishes_and_normalises(tmp_path: Path) -> None:
    table = _table(tmp_path)
    ds = ImageDataset(table, build_transforms(16, train=False, mean=(0.5,) * 3, std=(0.25,) * 3))
    item = ds[1]
    assert item["image"].shape == (3, 16, 16)  # 10×12 squished to 16×16
    torch.testing.assert_close(item["image"], torch.full((3, 16, 16), (40 / 255 - 0.5) / 0.25))
    assert item["target"].tolist() == [0.0, 1.0, 0.0]


def test_bad_image_skip_and_raise(tmp_path: Path) -> None:
    table = _table(tmp_path)
    table.paths[2].write_bytes(b"garbage")
    table.paths[3].unlink()
    with pytest.raises(BadImageError, match=r"2\.png"):
        read_image(str(table.paths[2]))
    ds = ImageDataset(table, build_transforms(8, train=False, mean=(0,) * 3, std=(1,) * 3))
    batch = collate_skipping([ds[i] for i in range(4)])
    assert batch["skipped"] == [str(table.paths[2]), str(table.paths[3])]
    assert batch["image"].shape[0] == 2 and batch["index"].tolist() == [0, 1]
    strict = ImageDataset(table, ds.transform, bad_images="raise")
    with pytest.raises(BadImageError, match=r"3\.png: file not found"):
        strict[3]
