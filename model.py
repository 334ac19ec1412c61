"""
The one model file: an OLMo-1 style GPT, a batched KV-cache sampler, and checkpoint save/load.

Architecture (../shared/PAPER.md "Models"): RoPE (theta 10000), SwiGLU with hidden size 4*d,
non-parametric LayerNorm (no weight, no bias, eps 1e-5), pre-norm blocks plus a final norm, no biases,
no dropout, init normal(0, 0.02) truncated at 3 sigma, optional weight tying. The layout matches
Hugging Face's OlmoForCausalLM (rotate-half RoPE, gate/up/down MLP) so weights map one to one
(export.py); we only fuse q/k/v and gate/up into single matmuls because at toy size on a CPU the number
of ops, not FLOPs, sets the speed.
"""
import os
import time
import weakref
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


# the model shapes of each preset live with every other preset in presets.py (toy, 150m, 1b)
from presets import MODEL as PRESETS  # noqa: E402


# bf16 activations without autocast: inside `with forward_dtype(torch.bfloat16):` the forward runs in bf16 end to
# end (every Linear casts its fp32 weight as it uses it), while parameters, gradients and AdamW's states stay fp32.
# Autocast does the same for the matmuls only and pays a dispatch per op; this is how nanochat moved off it.
_FORWARD_DTYPE = None  # None: activations follow the weights' dtype


class forward_dtype:
    """Context manager (reusable, like torch.autocast, so pretrain.py's `with ctx:` takes either)."""

    def __init__(self, dtype=torch.bfloat16):
        self.dtype = dtype

    def __enter__(self):
        global _FORWARD_DTYPE
        self.prev, _FORWARD_DTYPE = _FORWARD_DTYPE, self.dtype

    def __exit__(self, *exc):
        global _FORWARD_DTYPE
        _FORWARD_DTYPE = self.prev


class Linear(nn.Linear):
    """nn.Linear that casts its weight to the input's dtype when the two differ; when they match it is nn.Linear."""

    def forward(self, x):
        w = self.weight
        return F.linear(x, w if w.dtype == x.dtype else w.to(x.dtype))


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
        self.qkv = Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos, sin, cache=None, pos=0, mask=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None and torch.is_tensor(pos):
            # static decoding (StaticDecoder): the cache is a fixed-length view and pos a slot held on the device,
            # so nothing here changes from step to step; the mask hides the slots not written yet
            kc, vc = cache
            kc.index_copy_(2, pos, k)
            vc.index_copy_(2, pos, v)
            k, v = kc, vc
        elif cache is not None:
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
        self.gate_up = Linear(config.n_embd, 2 * config.mlp_hidden, bias=False)  # [gate; up]
        self.down = Linear(config.mlp_hidden, config.n_embd, bias=False)

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
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
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
        # see forward_dtype; not when generating, whose cache keeps the weights' dtype
        if _FORWARD_DTYPE is not None and caches is None and x.dtype != _FORWARD_DTYPE:
            x, cos, sin = x.to(_FORWARD_DTYPE), cos.to(_FORWARD_DTYPE), sin.to(_FORWARD_DTYPE)
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
                 num_samples=1, seed=None, static=None):
        """
        Sample continuations of ragged prompts with a preallocated KV cache.

        prompts: list of token-id lists (any lengths). Returns, prompt-major (prompt 0's samples first),
        the NEW tokens of each sample, ending at and including eos_id when it is produced.
        temperature 0 means greedy. A row also stops when it reaches the model's context length.
        static: None = the static path (StaticDecoder: fixed shapes, CUDA graphs) on CUDA and the dynamic one
        below on the CPU, where dropping finished rows pays; True / False force one (the CPU runs the static
        step eagerly, no graphs). The two give the same greedy tokens; seeded samples are reproducible on each.

        How (dynamic): prompts are left-padded to the longest and prefilled once each; their cache rows are then
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
        if static is None:
            static = device.type == "cuda"
        if static:
            return self._generate_static(prompts, max_new_tokens, (temperature, top_k, top_p), eos_id, n, seed)
        gen = None
        if seed is not None:
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
        dtype = next(self.parameters()).dtype
        if device.type == "cuda" and torch.is_autocast_enabled():
            dtype = torch.get_autocast_dtype("cuda")

        # prefill: unique prompts, left-padded, one forward
        Bp = len(prompts)
        T_total = P + max_new_tokens
        logits, caches, pad = self._prefill(prompts, T_total, dtype)
        ragged = min(lens) < P

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


    def _prefill(self, prompts, cache_len, dtype):
        """Left-pad the prompts to the longest (P) and run them in one forward, writing fresh caches of cache_len
        slots. Returns the last position's logits (B, V) in fp32, the caches and each prompt's padding."""
        cfg, device = self.config, self.wte.weight.device
        lens = [len(p) for p in prompts]
        Bp, P = len(prompts), max(lens)
        pad = torch.tensor([P - L for L in lens], device=device)
        idx = torch.zeros(Bp, P, dtype=torch.long)
        for b, p in enumerate(prompts):
            idx[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
        idx = idx.to(device)  # built on the host, sent once
        H, hd = cfg.n_head, cfg.n_embd // cfg.n_head
        caches = [(torch.empty(Bp, H, cache_len, hd, device=device, dtype=dtype),
                   torch.empty(Bp, H, cache_len, hd, device=device, dtype=dtype)) for _ in range(cfg.n_layer)]
        ar = torch.arange(P, device=device)
        pos_ids = (ar[None, :] - pad[:, None]).clamp(min=0)  # (Bp, P) RoPE positions
        cos, sin = self.rope_cos[pos_ids][:, None], self.rope_sin[pos_ids][:, None]  # (Bp, 1, P, hd)
        mask = None
        if min(lens) < P:
            key_ok = ar[None, :] >= pad[:, None]  # (Bp, P) real (non-pad) keys
            causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
            # a pad query sees the pads before it (an all-False row would give NaN); real queries see real keys
            mask = causal[None] & (key_ok[:, None, :] | ~key_ok[:, :, None])
            mask = mask[:, None]  # (Bp, 1, P, P)
        h = self.hidden_states(idx, cos, sin, caches, 0, mask)
        return self.lm_head(h[:, -1]).float(), caches, pad

    def _generate_static(self, prompts, max_new_tokens, sampler, eos_id, n, seed):
        device, model = self.wte.weight.device, self
        if max_new_tokens <= 0:
            return [[] for _ in range(len(prompts) * n)]
        if device.type == "cuda" and torch.is_autocast_enabled("cuda") \
                and torch.get_autocast_dtype("cuda") != self.wte.weight.dtype:
            # fp32 weights under autocast (evaluate.py): decode with a copy in the autocast dtype, refreshed now,
            # so that no autocast cast runs inside the captured step
            dt, model = torch.get_autocast_dtype("cuda"), _COPIES.get(self)
            if model is None or model.wte.weight.dtype != dt or model.wte.weight.device != device:
                model = _COPIES[self] = inference_copy(self, dt)
            refresh_(model, self)
        gen = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        P = max(len(p) for p in prompts)
        with torch.autocast(device.type, enabled=False):
            logits, caches, pad = model._prefill(prompts, P, model.wte.weight.dtype)
            dec = StaticDecoder.for_model(model, len(prompts) * n, P + max_new_tokens)
            return dec.generate(model, logits, caches, pad, n, max_new_tokens, sampler, eos_id, gen)


def sample_next(logits, temperature=1.0, top_k=None, top_p=1.0, generator=None, noise=None):
    """One token per row from (B, V) logits. temperature 0 = greedy; top_k / top_p (nucleus) filter first.
    noise: Exp(1) draws shaped like logits; given, the token is argmax(probs / noise), the race torch.multinomial
    runs for one sample, but with no host sync (multinomial checks its input with .item()), so a captured step
    can sample from noise written before it."""
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
    if noise is not None:  # the clamp: a 0 draw would make a filtered token's 0 / 0 a NaN, which argmax picks
        return (probs / noise.clamp(min=1e-30)).argmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


class StaticDecoder:
    """
    GPT.generate's static path. A small model's decode step is bound by kernel launches and host syncs, not by
    the GPU, so every shape here is fixed and the host stays out of the loop: one KV cache allocated once and
    reused by later calls that fit; per-row state in fixed tensors and a cache slot counter on the device; attention
    over length buckets with one additive mask a step for all layers (padding and unwritten slots hidden);
    sampling on the device; "all done?" read every check_every steps, and only then live rows compacted into a
    smaller batch bucket (a power of two). On CUDA each (batch, length, sampler) step is captured once in a CUDA
    graph and replayed; on the CPU it runs eagerly, which is how the tests hold it to the dynamic path.
    """
    check_every = 16
    length_bucket = 128

    def __init__(self, model, max_batch, cache_len):
        cfg, w = model.config, model.wte.weight
        dev, H, hd = w.device, cfg.n_head, cfg.n_embd // cfg.n_head
        self.max_batch, self.cache_len, self.block_size, self.dtype = max_batch, cache_len, cfg.block_size, w.dtype
        self.weights = _weights_key(model)
        # zeros, not empty: masked slots still meet a 0 weight in attention, and 0 * inf (garbage) would be NaN
        self.kv = [torch.zeros(2, max_batch, H, cache_len, hd, device=dev, dtype=w.dtype) for _ in range(cfg.n_layer)]
        # per row (last token, padding, original row, new-token count, done); new tokens by original row and slot;
        # the cache slot of the token fed in; the eos id
        self.tok, self.pad, self.rows, self.n_out, self.done = (torch.zeros(max_batch, dtype=dt, device=dev) for dt in
                                                                [torch.long] * 4 + [torch.bool])
        self.out = torch.zeros(max_batch, cache_len, dtype=torch.long, device=dev)
        self.slot, self.eos = torch.zeros(1, dtype=torch.long, device=dev), torch.zeros(1, dtype=torch.long, device=dev)
        self.noise = torch.ones(max_batch, cfg.vocab_size, device=dev)
        self.keys = torch.arange(cache_len, device=dev)
        self.graphs, self.capture_s, self.use_graphs = {}, 0.0, dev.type == "cuda"
        if self.use_graphs:  # one memory pool for all graphs: they never run at the same time
            self.pool, self.stream = torch.cuda.graph_pool_handle(), torch.cuda.Stream(dev)

    @staticmethod
    def for_model(model, batch, cache_len):
        """The model's decoder, reused when it fits; else a new one covering this call and the last."""
        dec = _DECODERS.get(model)
        if dec is not None and batch <= dec.max_batch and cache_len <= dec.cache_len \
                and dec.weights == _weights_key(model):
            return dec
        if dec is not None:  # grow, so that alternating shapes do not reallocate every call
            batch, cache_len = max(batch, dec.max_batch), max(cache_len, dec.cache_len)
            del _DECODERS[model], dec  # free the old cache and graphs before allocating the new ones
        lb = StaticDecoder.length_bucket
        _DECODERS[model] = dec = StaticDecoder(model, batch, -(-cache_len // lb) * lb)
        return dec

    def generate(self, model, logits, caches, pad, n, max_new, sampler, eos_id, gen):
        """Decode from a prefill (logits (Bp, V), caches of P slots, pad (Bp,)); returns new-token lists."""
        Bp, P = logits.size(0), caches[0][0].size(2)
        B = Bp * n
        for kv, (k, v) in zip(self.kv, caches):  # each prompt's keys/values to its n rows, prompt-major
            kv[:, :B, :, :P] = torch.stack((k, v)).repeat_interleave(n, 1)
        self.pad[:B] = pad.repeat_interleave(n, 0)
        self.rows[:B] = torch.arange(B, device=self.rows.device)
        self.done[:B] = False
        self.n_out.zero_()
        self.slot.fill_(P - 1)
        self.eos.fill_(-1 if eos_id is None else eos_id)  # -1: never sampled
        self.fill_noise(B, sampler, gen)
        self.record(B, sample_next(logits.repeat_interleave(n, 0), *sampler, noise=self.noise[:B]))
        rows = B
        for t in range(1, max_new):
            if t % self.check_every == 0:
                live = int((~self.done[:rows]).sum())  # the only host sync in the loop
                if live == 0:
                    break
                rows = self.compact(rows, live, P + t)
            length = min(self.cache_len, -(-(P + t) // self.length_bucket) * self.length_bucket)
            self.fill_noise(rows, sampler, gen)
            self.run_step(model, rows, length, sampler)
        res = torch.cat([self.n_out[:B, None], self.out[:B, P:P + max_new]], 1).tolist()  # one read back
        return [r[1:1 + r[0]] for r in res]

    def fill_noise(self, rows, sampler, gen):  # outside the graph, so the generator advances as in eager code
        if sampler[0] != 0:
            self.noise[:rows].exponential_(generator=gen)

    def record(self, rows, new):
        """Store each row's new token at its slot, count it for live rows, and mark rows done: eos, or the
        context is full after this token."""
        live, idx, col = ~self.done[:rows], self.rows[:rows], self.slot + 1
        self.out.index_put_((idx, col.expand(rows)), new)  # done rows write past their end: never read
        self.n_out.index_add_(0, idx, live.long())
        self.done[:rows] |= (new == self.eos) | (col - self.pad[:rows] + 1 >= self.block_size)
        self.tok[:rows] = new

    def step(self, model, rows, length, sampler):
        """One decoding step of the first `rows` rows over the first `length` slots: feed each row's last
        token, sample the next. Only tensor ops on fixed buffers, no host reads: what a CUDA graph replays."""
        self.slot += 1
        pad = self.pad[:rows]
        pos = (self.slot - pad).clamp(max=self.block_size - 1)  # RoPE position; rows past the end are done
        cos, sin = model.rope_cos[pos][:, None, None], model.rope_sin[pos][:, None, None]
        keys = self.keys[:length]
        hidden = (keys < pad[:, None]) | (keys > self.slot)  # padding, and slots not written yet
        mask = torch.zeros(rows, 1, 1, length, dtype=self.dtype, device=pad.device)
        mask.masked_fill_(hidden[:, None, None], float("-inf"))
        caches = [(kv[0, :rows, :, :length], kv[1, :rows, :, :length]) for kv in self.kv]
        h = model.hidden_states(self.tok[:rows, None], cos, sin, caches, self.slot, mask)
        logits = model.lm_head(h[:, -1]).float()
        self.record(rows, sample_next(logits, *sampler, noise=self.noise[:rows]))

    def run_step(self, model, rows, length, sampler):
        if not self.use_graphs:
            return self.step(model, rows, length, sampler)
        graph = self.graphs.get((rows, length, sampler))
        if graph is not None:
            return graph.replay()
        # a new shape: run the step eagerly (lazy set-up such as cuBLAS workspaces must not happen inside a
        # capture), then capture it; a capture records the kernels without running them, so state moves once
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            self.step(model, rows, length, sampler)
        torch.cuda.current_stream().wait_stream(self.stream)
        t0, graph = time.perf_counter(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            self.step(model, rows, length, sampler)
        self.capture_s += time.perf_counter() - t0
        self.graphs[(rows, length, sampler)] = graph

    def compact(self, rows, live, slots):
        """Move the live rows to the front and shrink to the smallest bucket that holds them (done rows fill
        the rest); only then, so that the number of shapes stays small."""
        new = min(rows, 1 << (live - 1).bit_length())
        if new == rows:
            return rows
        order = torch.sort(self.done[:rows].to(torch.uint8), stable=True).indices[:new]  # live rows first
        for buf in (self.tok, self.pad, self.rows, self.done):
            buf[:new] = buf[:rows][order]
        for kv in self.kv:
            kv[:, :new, :, :slots] = kv[:, order, :, :slots]
        return new


# model -> its StaticDecoder / its inference copy. Module-level weak tables, not attributes, so that deepcopy,
# state_dict and parameters() never see the caches, the graphs or the copy, and both go when the model does.
_DECODERS = weakref.WeakKeyDictionary()
_COPIES = weakref.WeakKeyDictionary()


def _weights_key(model):
    # captured graphs read the weights' memory: a moved or re-cast model (model.to) needs a new decoder
    return tuple(t.data_ptr() for t in (*model.parameters(), model.rope_cos, model.rope_sin))


def _unwrap(model):
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):  # DDP's and torch.compile's wrappers
        model = getattr(model, "module", None) or model._orig_mod
    return model


def inference_copy(model, dtype=torch.bfloat16):
    """A copy of model for generation, its weights (and RoPE tables) in dtype: rollouts decode with a bf16 copy
    of the fp32 policy, so no autocast runs inside the captured step. Call refresh_ before each use."""
    model = _unwrap(model)
    with torch.device(model.wte.weight.device):
        copy = GPT(model.config, verbose=False)
    return refresh_(copy.to(dtype).eval().requires_grad_(False), model)


@torch.no_grad()
def refresh_(copy, model):
    """Copy model's weights into copy, in place: the copy's memory never moves, so its graphs stay valid."""
    src = dict(_unwrap(model).named_parameters())
    for name, p in copy.named_parameters():
        p.copy_(src[name])
    return copy


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
