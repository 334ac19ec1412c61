"""The static decoding path (model.StaticDecoder) held to the dynamic one on the CPU, where it runs eagerly (no CUDA
graphs): greedy token for token, seeded sampling, the sampled distribution, its cache reuse, and a decode step that
torch.compile traces whole. The GPU side (graphs, speed) is measured by scripts/gpu_generate.sh."""
import pytest
import torch

import model as M
from model import GPT, GPTConfig, StaticDecoder, inference_copy, refresh_, sample_next

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15]]


def tiny(seed=0, tie=False, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=101, n_layer=2, n_head=4, n_embd=32, block_size=64, tie_embeddings=tie) | kw
    return GPT(GPTConfig(**cfg), verbose=False).eval()


@pytest.fixture
def small_buckets(monkeypatch):
    """Length buckets of 16 and a stop check every 4 steps, so that a 64-token context crosses several length
    buckets and compacts its rows; records every (rows, length) shape a step ran at."""
    monkeypatch.setattr(StaticDecoder, "length_bucket", 16)
    monkeypatch.setattr(StaticDecoder, "check_every", 4)
    shapes = []
    real = StaticDecoder.run_step

    def spy(self, model, rows, length, sampler):
        shapes.append((rows, length))
        return real(self, model, rows, length, sampler)
    monkeypatch.setattr(StaticDecoder, "run_step", spy)
    return shapes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_static_greedy_equals_dynamic_with_eos_samples_and_context_end(small_buckets, seed):
    m = tiny(seed)
    # a 50-token prompt reaches the end of the 64-token context after 14 new tokens
    prompts = PROMPTS + [[3] * 50]
    free = m.generate(prompts, 40, temperature=0, static=False)
    # an eos that as many short prompts as possible emit (so that rows finish and get compacted), not all of them,
    # and the long one never before the context end
    never = [t for r in free[:4] for t in r if t not in free[-1] and any(t not in r2 for r2 in free[:4])]
    eos = max(never, key=lambda t: sum(t in r[1:30] for r in free[:4]))
    dyn = m.generate(prompts, 40, temperature=0, num_samples=3, eos_id=eos, static=False)
    stat = m.generate(prompts, 40, temperature=0, num_samples=3, eos_id=eos, static=True)
    assert stat == dyn  # token for token, prompt-major
    lens = [len(r) for r in stat]
    assert any(r[-1] == eos and len(r) < 40 for r in stat)  # some rows stopped at eos (and include it)
    assert any(len(r) == 40 and eos not in r for r in stat)  # others ran to max_new_tokens
    assert lens[-3:] == [14] * 3 and eos not in stat[-1]  # the long prompt stopped at the context end
    assert len({length for _, length in small_buckets}) >= 3  # several length buckets were crossed
    assert min(rows for rows, _ in small_buckets) < len(stat)  # finished rows were compacted away
    assert {rows for rows, _ in small_buckets} <= {15, 8, 4, 2, 1}  # only the call's batch and powers of two


def test_static_reuses_its_cache_and_stale_slots_never_leak(small_buckets):
    m = tiny()
    long = m.generate([[7] * 30, [8, 9]], 30, temperature=0, num_samples=2, static=True)
    dec = M._DECODERS[m]
    ptr = dec.kv[0].data_ptr()
    # a smaller call reuses the same cache (its slots still hold the first call's keys) and must not see them
    for prompts in (PROMPTS[:2], [[5]]):
        assert m.generate(prompts, 20, temperature=0, static=True) == m.generate(prompts, 20, temperature=0,
                                                                                 static=False)
        assert M._DECODERS[m] is dec and dec.kv[0].data_ptr() == ptr
    assert long == m.generate([[7] * 30, [8, 9]], 30, temperature=0, num_samples=2, static=False)
    # a larger batch grows the decoder, once
    assert m.generate(PROMPTS, 10, temperature=0, num_samples=4, static=True) == \
        m.generate(PROMPTS, 10, temperature=0, num_samples=4, static=False)
    assert M._DECODERS[m] is not dec and M._DECODERS[m].max_batch == 16
    assert m.generate(PROMPTS, 0, temperature=0, static=True) == [[]] * 4


def test_static_seeded_sampling_is_reproducible():
    m = tiny()
    kw = dict(temperature=1.0, num_samples=3, eos_id=5, static=True)
    a, b = m.generate(PROMPTS, 24, seed=1, **kw), m.generate(PROMPTS, 24, seed=1, **kw)
    assert a == b
    assert a != m.generate(PROMPTS, 24, seed=2, **kw)
    assert len({tuple(r) for r in a}) > len(PROMPTS)  # the samples of one prompt differ from each other


def _multinomial_is_the_exponential_race():
    p = torch.randn(8, 50).softmax(-1)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = torch.multinomial(p, 1, generator=g1).squeeze(1)
    return torch.equal(a, (p / torch.empty_like(p).exponential_(generator=g2)).argmax(-1))


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=10),
                                dict(temperature=1.3, top_p=0.8)])
def test_static_sampling_equals_dynamic_while_no_row_is_dropped(kw):
    # torch.multinomial draws one sample as argmax(probs / Exp(1) noise) from the same generator: with no row
    # dropped (no eos, no context end) both paths consume the same noise, so the samples agree exactly
    if not _multinomial_is_the_exponential_race():
        pytest.skip("this torch's multinomial draws differently; the distribution test still holds")
    m = tiny()
    assert m.generate(PROMPTS, 30, num_samples=3, seed=3, static=True, **kw) == \
        m.generate(PROMPTS, 30, num_samples=3, seed=3, static=False, **kw)


def fixed_logits_model(logits):
    """A GPT whose logits are `logits` at every position whatever the input: every token embeds to the same
    vector, the blocks add nothing, and the head maps the normed vector to the logits."""
    V = logits.numel()
    m = GPT(GPTConfig(vocab_size=V, n_layer=1, n_head=2, n_embd=8, block_size=64), verbose=False).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        c = torch.tensor([1.0, -1.0] * 4)
        m.wte.weight[:] = c
        h = torch.nn.functional.layer_norm(c, (8,), eps=1e-5)
        m.lm_head.weight[:] = logits[:, None] * h[None, :] / h.dot(h)
    return m


def expected(logits, temperature=1.0, top_k=None, top_p=1.0):
    z = logits / temperature
    p = z.softmax(-1)
    order = p.argsort(descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool)
    if top_k is not None:
        keep[order[:top_k]] = True
    else:
        keep[:] = True
    if top_p < 1.0:
        before = torch.cumsum(p[order], 0) - p[order]  # mass of the tokens ranked above each
        keep &= torch.zeros_like(keep).scatter(0, order, before < top_p)
    q = torch.where(keep, p, 0.0)
    return q / q.sum()


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.5), dict(temperature=1.0, top_k=3),
                                dict(temperature=1.0, top_p=0.6), dict(temperature=2.0, top_p=0.8)])
def test_static_sampler_frequencies_match_the_filtered_softmax(kw):
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
    m = fixed_logits_model(logits)
    assert torch.allclose(m(torch.tensor([[0, 5, 2]]))[0][0], logits.expand(3, -1), atol=1e-4)
    out = m.generate([[0]], 4, num_samples=2000, seed=0, static=True, **kw)
    draws = torch.tensor([t for row in out for t in row])
    assert draws.numel() == 8000
    freq = torch.bincount(draws, minlength=8).float() / draws.numel()
    want = expected(logits, **kw)
    tol = 0.025  # > 4 standard deviations of a frequency from 8000 draws
    assert (freq - want).abs().max() < tol, (freq, want)
    # the check has teeth: ignoring the temperature or the filter would move some frequency by more than 2 tol
    ignored = expected(logits) if kw != dict(temperature=1.0) else expected(logits, temperature=0.5)
    assert (ignored - want).abs().max() > 2 * tol


def test_default_path_is_dynamic_on_the_cpu(monkeypatch):
    m = tiny()
    ref = m.generate(PROMPTS, 8, temperature=0)

    def boom(*a, **k):
        raise AssertionError("static path taken")
    monkeypatch.setattr(StaticDecoder, "generate", boom)
    assert m.generate(PROMPTS, 8, temperature=0, static=None) == ref
    with pytest.raises(AssertionError, match="static path"):
        m.generate(PROMPTS, 8, temperature=0, static=True)


@pytest.mark.parametrize("sampler", [(0, None, 1.0), (0.8, 5, 0.9)])
def test_decode_step_compiles_as_one_graph_and_computes_the_same(sampler):
    m = tiny()
    with torch.no_grad():
        m.generate(PROMPTS, 5, temperature=0, num_samples=2, static=True)
    dec = M._DECODERS[m]
    dec.noise.exponential_(generator=torch.Generator().manual_seed(0))
    bufs = [dec.tok, dec.pad, dec.rows, dec.n_out, dec.done, dec.out, dec.slot, *dec.kv]
    start = [b.clone() for b in bufs]
    with torch.no_grad():
        dec.step(m, 8, 128, sampler)
    eager = [b.clone() for b in bufs]
    for b, s in zip(bufs, start):
        b.copy_(s)
    torch._dynamo.reset()
    # fullgraph=True raises on any graph break; aot_eager also checks the in-place writes functionalize
    step = torch.compile(dec.step, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        step(m, 8, 128, sampler)
    torch._dynamo.reset()
    assert all(torch.equal(b, e) for b, e in zip(bufs, eager))
    assert not torch.equal(dec.slot, start[6]) and not torch.equal(dec.kv[0], start[7])  # the step did work


def test_inference_copy_refreshes_in_place():
    m = tiny()
    copy = inference_copy(m, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in copy.parameters())
    assert copy.rope_cos.dtype == torch.bfloat16
    ptrs = [p.data_ptr() for p in copy.parameters()]
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(-1.0)
    assert refresh_(copy, m) is copy
    assert [p.data_ptr() for p in copy.parameters()] == ptrs  # the same memory: captured graphs stay valid
    assert all(torch.equal(q, p.to(torch.bfloat16)) for q, p in zip(copy.parameters(), m.parameters()))
    out = copy.generate(PROMPTS, 6, temperature=0, static=True)
    assert [len(r) for r in out] == [6] * 4 and out == copy.generate(PROMPTS, 6, temperature=0, static=False)
