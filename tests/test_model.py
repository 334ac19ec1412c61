import os

import pytest
import torch

from model import (GPT, GPTConfig, PRESETS, CheckpointError, estimate_mfu, flops_per_token, load_checkpoint,
                   model_from_checkpoint, peak_flops, sample_next, save_checkpoint)


def tiny(tie=False, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=101, n_layer=2, n_head=4, n_embd=32, block_size=64, tie_embeddings=tie)
    return GPT(cfg, verbose=False).eval()


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15]]


def naive_greedy(model, prompt, n, eos_id=None):
    x, out = list(prompt), []
    for _ in range(n):
        logits, _ = model(torch.tensor([x]))
        t = int(logits[0, -1].argmax())
        out.append(t)
        x.append(t)
        if t == eos_id:
            break
    return out


def test_architecture_shapes_and_params(capsys):
    cfg = GPTConfig(**PRESETS["toy"])
    m = GPT(cfg)
    assert "parameters" in capsys.readouterr().out
    d, L, V, h = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.mlp_hidden
    # no biases, no norm weights: exactly q,k,v,o + gate,up,down per layer, plus embeddings and head
    assert m.num_params() == L * (4 * d * d + 3 * d * h) + 2 * V * d == 1_585_440  # the toy: d 144, SwiGLU 384 (presets.py)
    assert m.num_params(non_embedding=True) == L * (4 * d * d + 3 * d * h)
    assert GPTConfig(n_embd=64, n_head=4).mlp_hidden == 256  # unset: 4d, the paper's
    assert all(p.dim() == 2 for p in m.parameters())
    tied = GPT(GPTConfig(**PRESETS["toy"] | {"tie_embeddings": True}), verbose=False)
    assert tied.lm_head.weight is tied.wte.weight
    # truncated normal init: never beyond 3 sigma
    assert max(p.abs().max().item() for p in m.parameters()) <= 0.06 + 1e-7


def test_presets_match_the_paper():
    c150 = GPTConfig(**PRESETS["150m"])
    assert (c150.n_embd, c150.n_layer, c150.n_head, c150.block_size, c150.tie_embeddings) == (768, 12, 12, 2048, False)
    c1b = GPTConfig(**PRESETS["1b"])
    assert (c1b.n_embd, c1b.n_layer, c1b.n_head, c1b.block_size, c1b.tie_embeddings) == (2048, 16, 16, 2048, True)
    assert c1b.mlp_hidden == 4 * 2048


def test_forward_and_loss_ignore_index():
    m = tiny()
    idx = torch.randint(0, 101, (2, 10))
    logits, loss = m(idx)
    assert logits.shape == (2, 10, 101) and loss is None
    targets = idx.clone()
    targets[:, :5] = -1
    _, loss = m(idx, targets)
    ref = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 101), idx[:, 5:].reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-6)


def test_later_tokens_never_change_earlier_logits():
    m = tiny()
    a = torch.randint(0, 101, (1, 12))
    b = a.clone()
    b[0, 8:] = torch.randint(0, 101, (4,))
    la, _ = m(a)
    lb, _ = m(b)
    assert torch.allclose(la[0, :8], lb[0, :8], atol=1e-6)
    assert not torch.allclose(la[0, 8:], lb[0, 8:])


@pytest.mark.parametrize("tie", [False, True])
def test_cached_greedy_equals_naive_loop_on_ragged_prompts(tie):
    m = tiny(tie)
    out = m.generate(PROMPTS, 12, temperature=0, num_samples=3)
    assert len(out) == len(PROMPTS) * 3
    for i, p in enumerate(PROMPTS):
        ref = naive_greedy(m, p, 12)
        for s in range(3):
            assert out[i * 3 + s] == ref  # prompt-major, token for token


def test_generation_stops_at_eos_and_includes_it():
    m = tiny()
    free = m.generate(PROMPTS, 12, temperature=0)
    eos = free[1][3]  # a token that row 1 produces at step 3
    out = m.generate(PROMPTS, 12, temperature=0, eos_id=eos)
    for i, p in enumerate(PROMPTS):
        assert out[i] == naive_greedy(m, p, 12, eos_id=eos)
    assert out[1][-1] == eos and len(out[1]) <= 4


def test_generation_stops_at_context_end():
    m = tiny()
    out = m.generate([[1] * 60, [2] * 3], 20, temperature=0)
    assert len(out[0]) == 4  # 60 + 4 = block_size 64
    assert len(out[1]) == 20
    # more new tokens than the context holds: every row stops at the context end, none crashes
    out = m.generate([[1] * 60, [2] * 3, [3] * 10], 200, temperature=1.0, num_samples=3, seed=0)
    assert [len(o) for o in out] == [4] * 3 + [61] * 3 + [54] * 3


def test_cached_logits_equal_full_forward():
    m = tiny()
    cfg = m.config
    seq = torch.randint(0, 101, (2, 20))
    full, _ = m(seq)
    H, hd = cfg.n_head, cfg.n_embd // cfg.n_head
    caches = [(torch.zeros(2, H, 20, hd), torch.zeros(2, H, 20, hd)) for _ in range(cfg.n_layer)]
    P = 8
    h = m.hidden_states(seq[:, :P], m.rope_cos[None, None, :P], m.rope_sin[None, None, :P], caches, 0)
    steps = [m.lm_head(h)]
    for t in range(P, 20):
        c, s = m.rope_cos[None, None, t:t + 1], m.rope_sin[None, None, t:t + 1]
        steps.append(m.lm_head(m.hidden_states(seq[:, t:t + 1], c, s, caches, t)))
    cached = torch.cat(steps, dim=1)
    assert (cached - full).abs().max().item() < 1e-5


def test_padding_does_not_change_generation():
    # a prompt batched beside longer ones (so it is left-padded) decodes exactly as it does alone
    m = tiny()
    for i, p in enumerate(PROMPTS):
        assert m.generate([p], 10, temperature=0)[0] == m.generate(PROMPTS, 10, temperature=0)[i]


def test_seeds():
    m = tiny()
    a = m.generate(PROMPTS, 16, temperature=1.0, num_samples=2, seed=1)
    b = m.generate(PROMPTS, 16, temperature=1.0, num_samples=2, seed=1)
    c = m.generate(PROMPTS, 16, temperature=1.0, num_samples=2, seed=2)
    assert a == b
    assert a != c


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) == {2, 3}
    p = torch.tensor([0.0, 1.0, 2.0, 3.0]).softmax(-1)  # 0.032, 0.087, 0.237, 0.644
    assert set(sample_next(logits, 1.0, top_p=0.6, generator=g).tolist()) == {3}
    assert set(sample_next(logits, 1.0, top_p=float(p[3] + p[2]) - 1e-3, generator=g).tolist()) == {2, 3}
    assert sample_next(logits[:1], 0).item() == 3


def test_save_load_identical_logits_and_corrupt_files(tmp_path):
    m = tiny()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": m.state_dict(), "config": vars(m.config), "step": 7})
    ck = load_checkpoint(path)
    m2 = model_from_checkpoint(ck)
    x = torch.randint(0, 101, (2, 9))
    assert torch.equal(m(x)[0], m2.eval()(x)[0])
    assert ck["step"] == 7
    # compiled / DDP prefixes are stripped
    sd = {"_orig_mod." + k: v for k, v in m.state_dict().items()}
    save_checkpoint(path, {"model": sd, "config": vars(m.config)})
    assert torch.equal(model_from_checkpoint(load_checkpoint(path)).eval()(x)[0], m(x)[0])
    # truncated
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "trunc.pt")
    assert "\n" not in str(e.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "missing.pt")
    # a newer format is refused
    torch.save({"model": {}, "config": {}, "version": 999}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "new.pt")
    # no temp files left behind
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_mfu_uses_a_per_gpu_table():
    cfg = GPTConfig(**PRESETS["150m"])
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("cpu") is None
    tps = 1e5
    assert estimate_mfu(cfg, tps, device_name="NVIDIA A100-SXM4-80GB") == pytest.approx(
        flops_per_token(cfg) * tps / 312e12)
    assert estimate_mfu(cfg, tps, device_name="NVIDIA H100 80GB HBM3") < estimate_mfu(
        cfg, tps, device_name="NVIDIA A100-SXM4-80GB")
    assert estimate_mfu(cfg, tps, device_name="some cpu") is None


def test_forward_dtype_runs_bf16_activations_on_fp32_master_weights():
    from model import forward_dtype
    m = tiny()
    idx = torch.randint(0, 101, (2, 12))
    ref, _ = m(idx)
    ctx = forward_dtype(torch.bfloat16)
    with ctx:
        logits, loss = m(idx, idx)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert (logits.float() - ref).abs().max().item() < 0.05 and not torch.equal(logits.float(), ref)
    loss.backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in m.parameters())
    with ctx:  # reusable, like torch.autocast
        assert m(idx)[0].dtype == torch.bfloat16
    assert torch.equal(m(idx)[0], ref)  # outside it: exactly the fp32 forward
    with ctx:  # generation inside it keeps the weights' dtype (its cache is allocated in it)
        assert m.generate([[1, 2, 3]], 5, temperature=0) == m.generate([[1, 2, 3]], 5, temperature=0, static=True)
