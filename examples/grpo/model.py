"""A small, readable PyTorch Llama with Hugging Face semantics (the trainer's policy).

Loads a Hugging Face folder (config.json + model.safetensors) into float32 and computes logits the
way transformers' LlamaForCausalLM does: RMSNorm (in f32), RoPE by rotate_half, grouped-query
attention, SwiGLU MLP, lm_head tied to the embedding when the config says so. Parameter names are
the Hugging Face ones, so ``model.state_dict()`` is what zrollout engines load (a tied model has no
``lm_head.weight``: the engines tie it too).

No KV cache: the trainer only scores whole sequences (teacher forcing). ``forward_mixed`` scores
a sequence whose positions were computed by different weight versions (asynchronous mode, in-flight
policy "continue": a sample's early tokens and their KV come from version v, its later tokens from
v+1 reading that KV), exactly as the engine produced it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zrollout import safetensors as zsafetensors

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d = cfg["hidden_size"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads", self.n_heads)
        self.head_dim = cfg.get("head_dim") or d // self.n_heads
        bias = cfg.get("attention_bias", False)
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=bias)

    def qkv(self, x, cos, sin):  # x: (B, T, d); cos, sin: (T, head_dim) -> q (B, H, T, hd), k, v (B, KV, T, hd)
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def attend(self, q, k, v):  # causal softmax attention -> (B, T, H * hd), before o_proj
        rep = self.n_heads // self.n_kv  # grouped-query attention: each kv head serves `rep` q heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        T = q.shape[2]
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        return (att @ v).transpose(1, 2).reshape(q.shape[0], T, -1)

    def forward(self, x, cos, sin):
        return self.o_proj(self.attend(*self.qkv(x, cos, sin)))


class MLP(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d, h = cfg["hidden_size"], cfg["intermediate_size"]
        bias = cfg.get("mlp_bias", False)
        self.gate_proj = nn.Linear(d, h, bias=bias)
        self.up_proj = nn.Linear(d, h, bias=bias)
        self.down_proj = nn.Linear(h, d, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        eps = cfg.get("rms_norm_eps", 1e-6)
        self.input_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.mlp = MLP(cfg)


class Llama(nn.Module):
    """LlamaForCausalLM's forward: ``logits = model(ids)`` with ids (B, T) -> (B, T, vocab)."""

    def __init__(self, cfg: dict):
        super().__init__()
        if cfg.get("rope_scaling"):
            raise ValueError("config.json: rope_scaling is not supported by this example model")
        self.cfg = cfg
        d = cfg["hidden_size"]
        self.tied = bool(cfg.get("tie_word_embeddings", False))
        # Hugging Face's module tree, so the state_dict names are the checkpoint's names.
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg["vocab_size"], d)
        self.model.layers = nn.ModuleList(Block(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.model.norm = RMSNorm(d, cfg.get("rms_norm_eps", 1e-6))
        if not self.tied:
            self.lm_head = nn.Linear(d, cfg["vocab_size"], bias=False)
        head_dim = cfg.get("head_dim") or d // cfg["num_attention_heads"]
        inv_freq = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # not a weight: not published

    def rope(self, T: int, device):
        freqs = torch.outer(torch.arange(T, dtype=torch.float32, device=device), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def head(self, x):
        w = self.model.embed_tokens.weight if self.tied else self.lm_head.weight
        return x @ w.t()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(ids)
        cos, sin = self.rope(ids.shape[1], ids.device)
        for blk in self.model.layers:
            x = x + blk.self_attn(blk.input_layernorm(x), cos, sin)
            x = x + blk.mlp(blk.post_attention_layernorm(x))
        return self.head(self.model.norm(x))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "Llama":
        folder = Path(folder)
        cfg = json.loads((folder / "config.json").read_text())
        model = cls(cfg)
        tensors = zsafetensors.load(folder, "torch", dtype=torch.float32)  # the package's (C++) reader
        if model.tied:
            tensors.pop("lm_head.weight", None)  # stored by some checkpoints although tied
        tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ValueError(f"{folder}/model.safetensors: missing {missing}, unexpected {unexpected}")
        return model


def token_logprobs(model: nn.Module, seqs: torch.Tensor) -> torch.Tensor:
    """log p(seqs[:, t+1] | seqs[:, :t+1]) for every t: (B, T-1)."""
    logits = model(seqs[:, :-1])
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, seqs[:, 1:, None]).squeeze(-1)


def _pick(outs: list, which: torch.Tensor):
    """outs[k] (B, T, ...) chosen per position by which (B, T) (values index outs)."""
    out = outs[0]
    for k in range(1, len(outs)):
        sel = (which == k).view(*which.shape, *([1] * (outs[k].dim() - 2)))
        out = torch.where(sel, outs[k], out)
    return out


def forward_mixed(models: list, which: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Logits of ids (B, T) where position t is computed with the weights of models[which[b, t]]
    at every layer, and attends to the keys and values earlier positions got from their own
    version (what an engine's KV cache holds after a weight switch with in-flight "continue")."""
    m0 = models[0]
    x = _pick([m.model.embed_tokens(ids) for m in models], which)
    cos, sin = m0.rope(ids.shape[1], ids.device)
    for li in range(len(m0.model.layers)):
        blks = [m.model.layers[li] for m in models]
        parts = [b.self_attn.qkv(b.input_layernorm(x), cos, sin) for b in blks]
        q, k, v = (_pick([p[j].transpose(1, 2) for p in parts], which).transpose(1, 2) for j in range(3))
        a = blks[0].self_attn.attend(q, k, v)
        x = x + _pick([b.self_attn.o_proj(a) for b in blks], which)
        x = x + _pick([b.mlp(b.post_attention_layernorm(x)) for b in blks], which)
    return _pick([m.head(m.model.norm(x)) for m in models], which)
