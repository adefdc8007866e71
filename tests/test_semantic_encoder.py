"""The numpy MiniLM encoder matches sentence-transformers (reference vectors pinned in tests/data)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.semantic_model import encoder, numpy

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"


def test_matches_sentence_transformers_reference_vectors() -> None:
    np = numpy()
    enc = encoder()
    ref = json.loads(REFERENCE.read_text())
    assert len(ref["texts"]) >= 4
    for text, want in zip(ref["texts"], ref["vectors"], strict=True):
        got = enc.embed(text)
        assert got.dtype == np.float32 and got.shape == (384,)
        assert np.abs(got - np.asarray(want, dtype=np.float32)).max() < 1e-5, text


def test_vectors_are_unit_length_so_cosine_is_a_dot_product() -> None:
    np = numpy()
    v = encoder().embed("Add a --verbose flag to cli.py")
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5


def test_padding_is_off_similar_and_unrelated_texts_score_apart() -> None:
    # the packaged tokenizer pads to 128: with [PAD] rows pooled, every pair scores 0.94+
    enc = encoder()
    a = enc.embed("That is a happy person")
    assert float(a @ enc.embed("That is a very happy person")) > 0.9
    assert float(a @ enc.embed("Today is a sunny day")) < 0.4
    assert enc.token_count("That is a happy person") == 7  # [CLS] + 5 words + [SEP], no padding


def test_long_texts_truncate_at_the_models_256_tokens() -> None:
    enc = encoder()
    assert enc.token_count("word " * 1000) == 256


def test_loaded_once_per_process() -> None:
    from r1proxy.cache.semantic.encoder import load_encoder
    assert encoder() is load_encoder()


def test_a_folder_without_the_model_files_is_a_clear_error(tmp_path: Path) -> None:
    numpy()
    import pytest

    from r1proxy.cache.semantic.encoder import Encoder, EncoderUnavailable
    with pytest.raises(EncoderUnavailable, match=r"model\.safetensors"):
        Encoder(tmp_path)
