"""
The one model file: an OLMo-1 style GPT, a batched KV-cache sampler, and checkpoint save/load.

Architecture (../shared/PAPER.md "Models"): RoPE (theta 10000), SwiGLU with hidden size 4*d,
non-parametric LayerNorm (no weight, no bias, eps 1e-5), pre-norm blocks plus a final norm, no biases,
no dropout, init normal(0, 0.02) truncated at 3 sigma, optional weight tying. The layout matches
Hugging Face's OlmoForCausalLM (rotate-half RoPE, gate/up/down MLP) so weights map one to one
(export.py); we only fuse q/k/v and gate/up into single matmuls because at toy size on a CPU the number
of ops, not FLOPs, sets the speed.
"""
import math
import os
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import atomic_open

CKPT_VERSION = 1  # bump when the checkpoint dict changes shape; newer files are refused with a clear line


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 6
    n_embd: int = 192
    block_size: int = 256
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    mlp_hidden: int = 0  # 0 means 4 * n_embd, as in the paper

    def __post_init__(self):
        if self.mlp_hidden == 0:
            self.mlp_hidden = 4 * self.n_embd
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError("head size must be even for RoPE")


# the paper's two sizes plus a toy that learns the three formats on a 2-core CPU in minutes: ../shared/TOY.md's
# model (d 192, 4 layers, 6 heads, SwiGLU 512, vocab 2049: 2.56M parameters). Vocab 2049 rather than 4096 because
# the vocabulary projection was a third of the toy's FLOPs (1.3x the tokens/s, measured); context 320 so that
# every document and every harder-set answer fits (a 3-step tinygsm solution runs to ~300 tokens).
PRESETS = {
    "toy": dict(vocab_size=2049, n_layer=4, n_head=6, n_embd=192, block_size=320, tie_embeddings=False,
                mlp_hidden=512),
    "150m": dict(vocab_size=32768, n_layer=12, n_head=12, n_embd=768, block_size=2048, tie_embeddings=False),
    "1b": dict(vocab_size=32768, n_layer=16, n_head=16, n_embd=2048, block_size=2048, tie_embeddings=True),
}


def norm(x):
    # non-parametric LayerNorm (OLMo-1): no weight, no bias; computed in float32 like OLMo does
    return F.layer_norm(x.float(), (x.size(-1),), eps=1e-5).type_as(x)


def rope_tables(head_dim, length, theta, device=None):
    """cos/sin of shape (length, head_dim) in the rotate-half layout Hugging Face's Olmo uses."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(length, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    # x: (B, H, T, hd); cos/sin broadcast to it: (1, 1, T, hd) or (B, 1, T, hd)
    h = x.size(-1) // 2
    x1, x2 = x[..., :h], x[..., h:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos, sin, cache=None, pos=0, mask=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            # write this step's keys/values into the preallocated cache, attend to everything so far
            kc, vc = cache
            kc[:, :, pos:pos + T] = k
            vc[:, :, pos:pos + T] = v
            k, v = kc[:, :, :pos + T], vc[:, :, :pos + T]
        if mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif T == k.size(2):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # fewer queries than keys and no padding: the queries are the newest positions and may see all
            # keys. (SDPA's is_causal aligns to the top-left corner, which would be wrong here.)
            assert T == 1, "multi-token extension of a cache needs an explicit mask"
            y = F.scaled_dot_product_attention(q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.hidden = config.mlp_hidden
        self.gate_up = nn.Linear(config.n_embd, 2 * config.mlp_hidden, bias=False)  # [gate; up]
        self.down = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn = Attention(config)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, cache=None, pos=0, mask=None):
        x = x + self.attn(norm(x), cos, sin, cache, pos, mask)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, verbose=True):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        cos, sin = rope_tables(config.n_embd // config.n_head, config.block_size, config.rope_theta)
        # not persistent: rebuilt from the config, so checkpoints hold only learned weights
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        if verbose:
            n, n_emb = self.num_params(), self.num_params(non_embedding=True)
            print(f"model: {n / 1e6:.2f}M parameters ({n_emb / 1e6:.2f}M without embeddings)")

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, mean=0.0, std=0.02, a=-0.06, b=0.06)

    def num_params(self, non_embedding=False):
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        if non_embedding:
            n -= self.wte.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    # ---------------------------------------------------------------- forward passes
    def hidden_states(self, idx, cos=None, sin=None, caches=None, pos=0, mask=None):
        """Final-normed hidden states (B, T, d). PPO's critic puts its value head on these."""
        T = idx.size(1)
        if cos is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens is longer than the context ({self.config.block_size})")
            cos, sin = self.rope_cos[None, None, :T], self.rope_sin[None, None, :T]
        x = self.wte(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if caches is None else caches[i], pos, mask)
        return norm(x)

    def forward(self, idx, targets=None):
        """logits (B, T, V) for every position; with targets, mean cross-entropy ignoring targets == -1."""
        logits = self.lm_head(self.hidden_states(idx))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0, top_k=None, eos_id=None,
                 num_samples=1, seed=None):
        """
        Sample continuations of ragged prompts with a preallocated KV cache.

        prompts: list of token-id lists (any lengths). Returns, prompt-major (prompt 0's samples first),
        the NEW tokens of each sample, ending at and including eos_id when it is produced.
        temperature 0 means greedy. A row also stops when it reaches the model's context length.

        How: prompts are left-padded to the longest and prefilled once each; their cache rows are then
        copied to num_samples rows and decoded together. Padding is masked out of attention and RoPE
        positions start at each prompt's first real token, so a padded row computes what it would alone.
        Rows that finish are dropped from the batch (with their cache) once enough have finished.
        """
        cfg = self.config
        device = self.wte.weight.device
        if len(prompts) == 0:
            return []
        lens = [len(p) for p in prompts]
        if min(lens) == 0:
            raise ValueError("every prompt needs at least one token")
        if max(lens) >= cfg.block_size:
            raise ValueError(f"a prompt of {max(lens)} tokens leaves no room in a context of {cfg.block_size}")
        P, n = max(lens), num_samples
        # no row can go past the context: the shortest prompt bounds how many new tokens anyone can get
        max_new_tokens = min(max_new_tokens, cfg.block_size - min(lens))
        gen = None
        if seed is not None:
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
        dtype = next(self.parameters()).dtype
        if device.type == "cuda" and torch.is_autocast_enabled():
            dtype = torch.get_autocast_dtype("cuda")

        # prefill: unique prompts, left-padded, one forward
        Bp = len(prompts)
        pad = torch.tensor([P - L for L in lens], device=device)
        idx = torch.zeros(Bp, P, dtype=torch.long, device=device)
        for b, p in enumerate(prompts):
            idx[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
        T_total = P + max_new_tokens
        H, hd = cfg.n_head, cfg.n_embd // cfg.n_head
        caches = [(torch.empty(Bp, H, T_total, hd, device=device, dtype=dtype),
                   torch.empty(Bp, H, T_total, hd, device=device, dtype=dtype)) for _ in range(cfg.n_layer)]
        ragged = bool((pad > 0).any())
        ar = torch.arange(P, device=device)
        pos_ids = (ar[None, :] - pad[:, None]).clamp(min=0)  # (Bp, P) RoPE positions
        cos, sin = self.rope_cos[pos_ids][:, None], self.rope_sin[pos_ids][:, None]  # (Bp, 1, P, hd)
        mask = None
        if ragged:
            key_ok = ar[None, :] >= pad[:, None]  # (Bp, P) real (non-pad) keys
            causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
            # a pad query sees the pads before it (an all-False row would give NaN); real queries see real keys
            mask = causal[None] & (key_ok[:, None, :] | ~key_ok[:, :, None])
            mask = mask[:, None]  # (Bp, 1, P, P)
        h = self.hidden_states(idx, cos, sin, caches, 0, mask)
        logits = self.lm_head(h[:, -1]).float()  # (Bp, V)

        # share each prompt's cache with its samples: rows prompt-major
        if n > 1:
            caches = [(k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)) for k, v in caches]
            logits = logits.repeat_interleave(n, 0)
            pad = pad.repeat_interleave(n, 0)
        B = Bp * n
        rows = torch.arange(B, device=device)  # original row of each active row
        out = torch.full((B, max_new_tokens), -1, dtype=torch.long, device=device)
        n_out = torch.zeros(B, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        key_ok_all = None
        if ragged:
            key_ok_all = torch.arange(T_total, device=device)[None, :] >= pad[:, None]  # (B, T_total)

        for t in range(max_new_tokens):
            tok = sample_next(logits, temperature, top_k, top_p, gen)  # (B_active,)
            live = ~done
            out[rows, t] = torch.where(live, tok, out[rows, t])
            n_out[rows] += live.long()
            finished = live & (tok == eos_id) if eos_id is not None else torch.zeros_like(live)
            pos = P + t - pad  # RoPE position of this new token, per active row
            finished |= live & (pos + 1 >= cfg.block_size)  # the context is full after this token
            done = done | finished
            if t == max_new_tokens - 1:
                break
            n_done = int(done.sum())
            if n_done == done.numel():
                break
            if n_done >= max(1, done.numel() // 8):
                # drop finished rows and their cache: later steps cost only the live rows
                keep = (~done).nonzero().squeeze(1)
                caches = [(k[keep], v[keep]) for k, v in caches]
                rows, pad, tok, pos, done = rows[keep], pad[keep], tok[keep], pos[keep], done[keep]
                if key_ok_all is not None:
                    key_ok_all = key_ok_all[keep]
            # rows that just hit the context end are finished but may still be in the batch: clamp their position
            pos = pos.clamp(max=cfg.block_size - 1)
            cos, sin = self.rope_cos[pos][:, None, None], self.rope_sin[pos][:, None, None]  # (B,1,1,hd)
            mask = None if key_ok_all is None else key_ok_all[:, None, None, :P + t + 1]
            h = self.hidden_states(tok[:, None], cos, sin, caches, P + t, mask)
            logits = self.lm_head(h[:, -1]).float()

        out, n_out = out.tolist(), n_out.tolist()
        return [row[:k] for row, k in zip(out, n_out)]


def sample_next(logits, temperature=1.0, top_k=None, top_p=1.0, generator=None):
    """One token per row from (B, V) logits. temperature 0 = greedy; top_k / top_p (nucleus) filter first."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already cover top_p (the first token always stays)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# ---------------------------------------------------------------- MFU
# peak dense bf16 tensor FLOP/s per GPU (vendor spec sheets, no sparsity). Matched by substring of
# torch.cuda.get_device_name(); the first match wins, so more specific names come first.
PEAK_BF16_FLOPS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16 (V100 has no bf16)
    ("T4", 65e12),  # fp16
]


def peak_flops(device_name):
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in (device_name or "").lower():
            return flops
    return None


def flops_per_token(config: GPTConfig, seq_len=None):
    """Training FLOPs per token: 6 per matmul parameter (fwd + bwd) plus attention (PaLM appendix B)."""
    d, L, V, hd = config.n_embd, config.n_layer, config.vocab_size, config.mlp_hidden
    T = seq_len or config.block_size
    matmul_params = L * (4 * d * d + 3 * d * hd) + V * d  # the input embedding is a lookup, not a matmul
    return 6 * matmul_params + 12 * L * d * T


def estimate_mfu(config: GPTConfig, tokens_per_s, seq_len=None, device_name=None):
    """Model FLOPs utilisation: achieved FLOP/s over the GPU's peak bf16 (None when the peak is unknown)."""
    if device_name is None and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name()
    peak = peak_flops(device_name)
    if peak is None:
        return None
    return flops_per_token(config, seq_len) * tokens_per_s / peak


# ---------------------------------------------------------------- checkpoints
class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line that says which and why."""


def save_checkpoint(path, ckpt):
    """Atomic: write a temp file beside the target, fsync, rename. A crash never leaves half a checkpoint."""
    ckpt = dict(ckpt, version=CKPT_VERSION)
    with atomic_open(path) as f:
        torch.save(ckpt, f)


def clean_state_dict(sd):
    """Strip the prefixes torch.compile (_orig_mod.) and DDP (module.) put on parameter names."""
    out = {}
    for k, v in sd.items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint dict onto any device; any problem is a CheckpointError with one clear line."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        # weights_only: a checkpoint holds tensors and plain Python values, never pickled code
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {first[:200]}")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path} is not an echo-chamber checkpoint (no 'model'/'config' keys)")
    if ckpt.get("version", 0) > CKPT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['version']}, newer than this code "
                              f"({CKPT_VERSION}): update echo-chamber")
    ckpt["model"] = clean_state_dict(ckpt["model"])
    return ckpt


def config_from_dict(d):
    names = {f.name for f in fields(GPTConfig)}
    return GPTConfig(**{k: v for k, v in d.items() if k in names})


def model_from_checkpoint(ckpt, device="cpu", verbose=False):
    """Build a GPT from a loaded checkpoint dict (or a path) and load its weights."""
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = load_checkpoint(ckpt)
    model = GPT(config_from_dict(ckpt["config"]), verbose=verbose)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not match its config: {str(e).splitlines()[0][:200]}")
    return model.to(device)
