"""export.py: our checkpoints <-> Hugging Face OLMo folders (models made elsewhere, with their own tokenizer.json:
tests/test_hf_import.py). transformers is a test-only dependency (requirements-bench.txt): the tests that need it
skip, with the reason, where absent."""
import json
import os
import subprocess
import sys

import pytest
import torch

import export
from common import UserError
from model import GPT, GPTConfig, load_checkpoint, model_from_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    import transformers  # noqa: F401
    from transformers import OlmoForCausalLM
    transformers.logging.set_verbosity_error()
    HAVE_HF = True
except ImportError:
    HAVE_HF = False
needs_hf = pytest.mark.skipif(not HAVE_HF, reason="transformers is not installed (pip install -r requirements-bench.txt)")

V = 4096
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]]


def toy_ckpt(tie=False, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=V, n_layer=2, n_head=4, n_embd=64, block_size=128, tie_embeddings=tie,
                    rope_theta=5000.0)
    m = GPT(cfg, verbose=False).eval()
    with torch.no_grad():  # larger block weights: random-weight greedy outputs vary instead of echoing the input
        for name, p in m.named_parameters():
            if name.startswith("blocks."):
                p.mul_(6.0)
    m = m.to(dtype)
    return {"model": m.state_dict(), "config": vars(cfg), "tokenizer": {"name": "cl100k", "vocab_size": V},
            "step": 7, "kind": "pretrain"}


def exported(tmp_path, tie=False, dtype=torch.float32):
    ck = toy_ckpt(tie, dtype=dtype)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, ck)
    out = tmp_path / "hf"
    export.export_checkpoint(load_checkpoint(path), out, source=str(path))
    return ck, path, out


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def assert_same_checkpoint(a, b):
    assert a["config"] == b["config"]
    assert sorted(a["model"]) == sorted(b["model"])
    for k in a["model"]:
        x, y = a["model"][k], b["model"][k]
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert torch.equal(x.view(torch.uint8) if x.dtype == torch.bfloat16 else x,
                           y.view(torch.uint8) if y.dtype == torch.bfloat16 else y), k  # bitwise


# ---------------------------------------------------------------- no transformers needed
@pytest.mark.parametrize("tie,dtype", [(False, torch.float32), (True, torch.float32), (False, torch.bfloat16)])
def test_import_of_export_is_bitwise_identical(tmp_path, tie, dtype):
    ck, _, out = exported(tmp_path, tie, dtype)
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "generation_config.json", "model.safetensors",
                                       "tokenizer_spec.json"]
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["model_type"], cfg["eos_token_id"], cfg["tie_word_embeddings"]) == ("olmo", V - 1, tie)
    assert cfg["rope_parameters"]["rope_theta"] == 5000.0 and cfg["num_key_value_heads"] == 4
    back = export.import_hf(out)
    assert_same_checkpoint(ck, back)
    assert (back["kind"], back["step"], back["tokenizer"]) == ("hf-import", 0, ck["tokenizer"])
    if tie:
        assert back["model"]["lm_head.weight"] is back["model"]["wte.weight"]
    assert "4095" in (out / "README.md").read_text()  # the tokenizer note names the end-of-text id


def test_cli_round_trip_and_the_imported_checkpoint_loads(tmp_path):
    ck, path, _ = exported(tmp_path)
    r = run_cli("--ckpt", path, "--out", tmp_path / "cli")
    assert r.returncode == 0, r.stderr
    r = run_cli("--from-hf", tmp_path / "cli", "--out", tmp_path / "back.pt")
    assert r.returncode == 0, r.stderr
    back = load_checkpoint(tmp_path / "back.pt")
    assert_same_checkpoint(ck, back)
    assert back["kind"] == "hf-import"
    model_from_checkpoint(back)  # rl.py / evaluate.py build their model this way


def test_weights_file_is_plain_safetensors(tmp_path):
    """Written and read with the safetensors package, with the metadata transformers expects; a file that is
    not one is a one-line error."""
    from safetensors import safe_open
    ck, _, out = exported(tmp_path, dtype=torch.bfloat16)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"} and "lm_head.weight" in f.keys()
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]  # written atomically, temp file gone
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        export.load_safetensors(str(tmp_path / "bad.safetensors"))


def _one_line_error(r):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


def _main_error(capsys, *args):
    """export.main in-process (a subprocess per case costs seconds of imports): exit code and stderr."""
    with pytest.raises(SystemExit) as e:
        export.main([str(a) for a in args])
    err = capsys.readouterr().err
    return _one_line_error(subprocess.CompletedProcess(args, e.value.code, "", err))


def test_export_of_a_wrong_file_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert "not a readable checkpoint" in _one_line_error(run_cli("--ckpt", tmp_path / "notes.txt", "--out", tmp_path / "o"))
    torch.save({"model": {}}, tmp_path / "noconfig.pt")
    assert "no 'model'/'config'" in _one_line_error(run_cli("--ckpt", tmp_path / "noconfig.pt", "--out", tmp_path / "o"))
    torch.save({"model": {"critic.weight": torch.zeros(2)}, "config": {}}, tmp_path / "other.pt")
    assert "not a GPT" in _main_error(capsys, "--ckpt", tmp_path / "other.pt", "--out", tmp_path / "o")
    assert "no checkpoint" in _main_error(capsys, "--ckpt", tmp_path / "missing.pt", "--out", tmp_path / "o")
    assert "no config.json" in _main_error(capsys, "--from-hf", tmp_path, "--out", tmp_path / "x.pt")


@pytest.mark.parametrize("change,why", [
    ({"attention_bias": True}, "attention_bias"),
    ({"clip_qkv": 8.0}, "clip_qkv"),
    ({"num_key_value_heads": 2}, "grouped-query"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope_parameters"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"model_type": "olmo2"}, "model_type"),
    ({"head_dim": 32}, "head_dim"),
])
def test_import_refuses_what_we_cannot_represent(tmp_path, change, why):
    _, _, out = exported(tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(UserError, match=why):
        export.import_hf(out)


def test_import_refuses_extra_weights_and_foreign_tokenizers(tmp_path, capsys):
    _, _, out = exported(tmp_path)
    w = export.load_safetensors(out / "model.safetensors")
    export.save_safetensors(out / "model.safetensors", {**w, "model.layers.0.self_attn.q_proj.bias": torch.zeros(64)})
    assert "biases" in _main_error(capsys, "--from-hf", out, "--out", tmp_path / "x.pt")
    export.save_safetensors(out / "model.safetensors", w, {"format": "pt"})
    # no tokenizer at all: never a guess, one line naming the fix; --tokenizer cl100k says which
    os.unlink(out / export.TOKENIZER_FILE)
    assert "no tokenizer.json" in _main_error(capsys, "--from-hf", out, "--out", tmp_path / "x.pt")
    assert export.import_hf(out, tokenizer="cl100k")["tokenizer"] == {"name": "cl100k", "vocab_size": V}
    assert export.import_hf(out, tokenizer="cl100k", vocab_size=4000)["tokenizer"]["vocab_size"] == 4000
    # a sidecar whose end-of-text is not the config's
    _, _, out = exported(tmp_path / "again")
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "eos_token_id": 7}))
    assert "is not the end-of-text" in _main_error(capsys, "--from-hf", out, "--out", tmp_path / "x.pt")


# ---------------------------------------------------------------- against transformers
def _padded(prompts, side):
    P = max(map(len, prompts))
    ids = torch.zeros(len(prompts), P, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        sl = slice(P - len(p), P) if side == "left" else slice(0, len(p))
        ids[i, sl], mask[i, sl] = torch.tensor(p), 1
    return ids, mask


@needs_hf
@pytest.mark.parametrize("tie", [False, True])
def test_transformers_logits_equal_ours_on_ragged_prompts(tmp_path, tie):
    ck, path, out = exported(tmp_path, tie)
    ours = model_from_checkpoint(load_checkpoint(path)).eval()
    hf = OlmoForCausalLM.from_pretrained(out).eval()  # the exported folder, loaded unchanged
    assert hf.config.vocab_size == V and hf.dtype == torch.float32
    with torch.no_grad():
        alone = [ours(torch.tensor([p]))[0][0] for p in PROMPTS]
        for side in ("left", "right"):
            ids, mask = _padded(PROMPTS, side)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # RoPE positions count real tokens only
            logits = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            for i, p in enumerate(PROMPTS):
                real = mask[i].bool()
                assert torch.allclose(logits[i, real], alone[i], atol=1e-4, rtol=0), (side, i)


@needs_hf
@pytest.mark.parametrize("tie", [False, True])
def test_transformers_greedy_generation_equals_ours(tmp_path, tie):
    _, path, out = exported(tmp_path, tie)
    ours = model_from_checkpoint(load_checkpoint(path)).eval()
    hf = OlmoForCausalLM.from_pretrained(out).eval()
    n = 24
    ids, mask = _padded(PROMPTS, "left")
    hf.generation_config.eos_token_id = None  # exactly n tokens on both sides, nothing suppressed
    got = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0)
    theirs = got[:, ids.size(1):].tolist()
    mine = ours.generate(PROMPTS, n, temperature=0)
    assert mine == theirs
    assert all(len(set(row)) > 3 for row in mine)  # not a degenerate repeat of one token


@needs_hf
def test_hf_model_in_memory_matches_export(tmp_path):
    ck, path, out = exported(tmp_path)
    ours = model_from_checkpoint(load_checkpoint(path)).eval()
    mem = export.hf_model(ours)
    disk = OlmoForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        assert torch.equal(mem(x).logits, disk(x).logits)


@needs_hf
@pytest.mark.parametrize("tie", [False, True])
def test_import_of_a_model_saved_by_transformers(tmp_path, tie):
    """An OLMo made elsewhere: transformers' own save_pretrained folder (no tokenizer files) imports with
    --tokenizer cl100k and computes the same logits in model.py."""
    from transformers import OlmoConfig
    torch.manual_seed(1)
    cfg = OlmoConfig(vocab_size=V, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=96, rope_theta=20000.0, tie_word_embeddings=tie, eos_token_id=V - 1,
                     pad_token_id=None)
    hf = OlmoForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "made-elsewhere")
    ck = export.import_hf(tmp_path / "made-elsewhere", tokenizer="cl100k")  # no tokenizer.json: say which
    assert ck["config"]["mlp_hidden"] == 160 and ck["config"]["rope_theta"] == 20000.0
    assert ck["tokenizer"] == {"name": "cl100k", "vocab_size": V}
    ours = model_from_checkpoint(ck).eval()
    x = torch.randint(0, V, (2, 33))
    with torch.no_grad():
        assert torch.allclose(ours(x)[0], hf(x).logits, atol=1e-4, rtol=0)
