"""Label-name embeddings: GloVe text files, the offline MiniLM sentence model with its on-disk cache, and the heads'
`label_embeddings` option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mlic.data.table import LabelledImages
from mlic.models import create_head, label_text

GLOVE = """the 0.1 0.2 0.3
traffic 1.0 0.0 2.0
light 3.0 2.0 0.0
cat 0.5 0.5 0.5
"""


@pytest.fixture
def glove_file(tmp_path: Path) -> Path:
    path = tmp_path / "glove.3d.txt"
    path.write_text(GLOVE)
    return path


def test_class_names_become_words() -> None:
    assert label_text.class_name_text("traffic_light") == "traffic light"
    assert label_text.class_name_text("TrafficLight") == "traffic light"
    assert label_text.class_name_text("hair drier") == "hair drier"
    assert label_text.class_name_text("t-shirt") == "t shirt"


def test_glove_vectors_average_the_words_of_a_name(glove_file: Path) -> None:
    vectors = label_text.label_embeddings(["cat", "traffic_light"], f"glove:{glove_file}")
    np.testing.assert_allclose(vectors, [[0.5, 0.5, 0.5], [2.0, 1.0, 1.0]])
    assert vectors.dtype == np.float32
    assert label_text.embedding_dim(f"glove:{glove_file}") == 3


def test_glove_names_the_class_it_cannot_embed(glove_file: Path) -> None:
    with pytest.raises(ValueError, match="'zebra'"):
        label_text.label_embeddings(["cat", "zebra"], f"glove:{glove_file}")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        label_text.label_embeddings(["cat"], "glove:nope.txt")


def test_unknown_source_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="glove.*minilm"):
        label_text.embedding_dim("word2vec")
    with pytest.raises(ValueError, match="learned"):
        label_text.label_embeddings(["cat"], "learned")
    assert label_text.embedding_dim("learned", learned_dim=7) == 7
    assert label_text.embedding_dim("minilm") == 384


@pytest.mark.slow
def test_minilm_embeddings_are_semantic_unit_vectors_cached_per_class_list(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["cat", "kitten", "airplane"]
    vectors = label_text.label_embeddings(names, "minilm")
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2  # cat ~ kitten, not airplane
    cached = label_text.minilm_cache_file(names)
    assert cached.exists() and str(cached).startswith(str(label_text.default_cache_dir()))

    def no_model(texts: list[str]) -> np.ndarray:
        raise AssertionError("the model was loaded although the embeddings are cached")

    monkeypatch.setattr(label_text, "encode_minilm", no_model)
    np.testing.assert_array_equal(label_text.label_embeddings(names, "minilm"), vectors)
    assert label_text.minilm_cache_file(names[::-1]) != cached  # another order is another list


def test_graph_heads_take_their_embeddings_from_the_source(glove_file: Path) -> None:
    table = LabelledImages(paths=["a.png", "b.png", "c.png"], labels=[[1, 1], [1, 0], [0, 1]],
                           class_names=["cat", "traffic_light"])
    head = create_head("ml_gcn", in_features=4, num_classes=2, label_embeddings=f"glove:{glove_file}",
                       hidden_dim=5)
    assert head.embeddings.shape == (2, 3) and not head.embeddings.requires_grad
    head.bind(table.labels, table.class_names)
    torch.testing.assert_close(head.embeddings.detach(), torch.tensor([[0.5, 0.5, 0.5], [2.0, 1.0, 1.0]]))
    learned = create_head("gat_reweight", in_features=4, num_classes=2, label_embeddings="learned", embedding_dim=6)
    before = learned.embeddings.detach().clone()
    learned.bind(table.labels, table.class_names)  # learned embeddings are parameters: binding leaves them alone
    assert learned.embeddings.requires_grad and torch.equal(learned.embeddings.detach(), before)
    tuned = create_head("gat_reweight", in_features=4, num_classes=2, label_embeddings=f"glove:{glove_file}",
                        train_embeddings=True)
    assert tuned.embeddings.requires_grad
