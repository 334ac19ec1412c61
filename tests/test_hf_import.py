"""Starting from a model made elsewhere (the paper authors' OLMo 150m / 1b with Llama-2's tokenizer): a tiny
Llama-like tokenizer.json built here with the `tokenizers` package (<unk> 0, <s> 1, </s> 2, a post-processor
that adds <s>) and a tiny transformers OlmoForCausalLM saved beside it, as their convert_to_hf.sh leaves a
folder. Import -> the same logits and greedy tokens as transformers, the tokenizer rebuilt from the checkpoint
alone, prompts with BOS as the authors' evaluation had them, one-line errors for a wrong tokenizer, then one RL
step and one evaluation on the imported checkpoint. Offline: no hub, no network."""
import json
import os
import shutil
import string
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (requirements-dev.txt)")
tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed (requirements.txt)")
from transformers import OlmoConfig, OlmoForCausalLM  # noqa: E402

import export  # noqa: E402
from common import UserError  # noqa: E402
from data import encode_prompts, prompt_text  # noqa: E402
from data.synthetic import FORMATS, problems, render  # noqa: E402
from data.tokenizer import HFTokenizer, get_tokenizer  # noqa: E402
from model import GPT, load_checkpoint, model_from_checkpoint, save_checkpoint  # noqa: E402

transformers.logging.set_verbosity_error()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTIONS = [p["question"] for p in problems("test", 4)]


def llama_like_tokenizer(n_vocab=384):
    """A small BPE laid out like Llama-2's tokenizer.json: spaces as '▁' with one prepended, specials first."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    docs = [p["question"] + "\n\n" + render(p, f) for p in problems("pretrain", 60) for f in FORMATS]
    tk.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=n_vocab, special_tokens=["<unk>", "<s>", "</s>"],
                                                     initial_alphabet=list(string.printable), show_progress=False))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tk


@pytest.fixture(scope="module")
def tk():
    return llama_like_tokenizer()


def authors_folder(path, tk, tie=False, eos=2, seed=0):
    """What convert_to_hf.sh leaves: config.json + model.safetensors (OlmoForCausalLM) + the tokenizer files."""
    torch.manual_seed(seed)
    V = tk.get_vocab_size()
    cfg = OlmoConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=512, tie_word_embeddings=tie, bos_token_id=None, eos_token_id=eos,
                     pad_token_id=1)
    hf = OlmoForCausalLM(cfg).eval()
    with torch.no_grad():  # larger block weights: random-weight greedy outputs vary instead of echoing the input
        for name, p in hf.named_parameters():
            if ".layers." in name:
                p.mul_(6.0)
    hf.save_pretrained(path)
    tk.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:  # as transformers saves Llama-2's
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
                   "add_eos_token": False, "tokenizer_class": "LlamaTokenizerFast"}, f)
    return hf


def import_to(d, tk, tie):
    hf = authors_folder(str(d / "hf"), tk, tie=tie)
    save_checkpoint(str(d / "ckpt.pt"), export.import_hf(str(d / "hf")))
    return {"dir": d, "hf": hf, "ckpt": str(d / "ckpt.pt"), "tie": tie}


@pytest.fixture(scope="module", params=[False, True], ids=["untied-150m-like", "tied-1b-like"])
def imported(request, tk, tmp_path_factory):
    return import_to(tmp_path_factory.mktemp("authors"), tk, request.param)


@pytest.fixture(scope="module")
def imported_150m(tk, tmp_path_factory):
    return import_to(tmp_path_factory.mktemp("authors-150m"), tk, False)


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def one_line_error(rc, err):
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


# ---------------------------------------------------------------- the tokenizer
def test_tokenizer_interface_round_trip_and_bos(tk, tmp_path):
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = get_tokenizer(str(tmp_path))  # a folder; the file alone works too
    assert isinstance(tok, HFTokenizer) and get_tokenizer(str(tmp_path / "tokenizer.json")).spec == tok.spec
    # ids come from the tokenizer, not "the last id"; no tokenizer_config.json: BOS and prompt_bos from the
    # post-processor, end-of-text from the usual names
    assert (tok.vocab_size, tok.eot_id, tok.bos_id, tok.prompt_bos, tok.unk_id) == (tk.get_vocab_size(), 2, 1, True, 0)
    ref = transformers.PreTrainedTokenizerFast(tokenizer_object=tk)
    for text in QUESTIONS + ["  two spaces, a tab\t(and brackets)!", "x = 12 * 3\nprint(x)", ""]:
        ids = tok.encode(text)
        assert ids == ref(text, add_special_tokens=False)["input_ids"]  # as OpenRLHF tokenized RL prompts
        assert 1 not in ids and 2 not in ids and tok.decode(ids) == text
    assert tok.encode_batch(QUESTIONS[:2]) == [tok.encode(q) for q in QUESTIONS[:2]]
    # prompts: BOS + the question + "\n\n", i.e. what a default encode (vLLM's on a text prompt) gives
    got = encode_prompts(tok, QUESTIONS)
    assert got == [ref(prompt_text(q))["input_ids"] for q in QUESTIONS] and all(p[0] == 1 for p in got)
    assert tok.decode(tok.encode("It is 5.") + [tok.eot_id]) == "It is 5.</s>"
    assert tok.decode([5, tok.vocab_size + 3, 6]).count("\ufffd") == 1  # a padded logit's id never crashes
    # the spec is JSON, self-contained (the folder can go away), and checked against its hash
    spec = json.loads(json.dumps(tok.spec))
    shutil.rmtree(tmp_path)
    assert get_tokenizer(spec).encode(QUESTIONS[0]) == tok.encode(QUESTIONS[0])
    with pytest.raises(UserError, match="sha256"):
        get_tokenizer({**spec, "tokenizer_json": spec["tokenizer_json"].replace("<unk>", "<UNK>")})
    # the authors' RL rollouts had no BOS: the override
    off = get_tokenizer({**spec, "prompt_bos": False})
    assert encode_prompts(off, QUESTIONS[:1]) == [off.encode(prompt_text(QUESTIONS[0]))]
    assert get_tokenizer(4096).bos_id is None and get_tokenizer(4096).prompt_bos is False  # ours: unchanged


# ---------------------------------------------------------------- the import, against transformers
def test_import_keeps_the_tokenizer_and_the_tying(imported, tk):
    ck = load_checkpoint(imported["ckpt"])
    spec = ck["tokenizer"]
    assert spec["name"] == "hf" and (spec["vocab_size"], spec["eos_id"], spec["bos_id"], spec["prompt_bos"]) == \
        (tk.get_vocab_size(), 2, 1, True)
    assert ck["kind"] == "hf-import" and ck["config"]["tie_embeddings"] is imported["tie"]
    m = model_from_checkpoint(ck)
    assert (m.lm_head.weight is m.wte.weight) is imported["tie"]
    assert m.config.vocab_size == get_tokenizer(spec).vocab_size  # what rl.py and evaluate.py check


def test_logits_equal_transformers_on_ragged_prompts(imported, tk):
    ours = model_from_checkpoint(imported["ckpt"]).eval()
    tok = get_tokenizer(load_checkpoint(imported["ckpt"])["tokenizer"])
    prompts = encode_prompts(tok, QUESTIONS)
    assert len({len(p) for p in prompts}) > 1  # ragged
    P = max(map(len, prompts))
    ids, mask = torch.zeros(len(prompts), P, dtype=torch.long), torch.zeros(len(prompts), P, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding, as in generation
        ids[i, P - len(p):], mask[i, P - len(p):] = torch.tensor(p), 1
    with torch.no_grad():
        theirs = imported["hf"](input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        for i, p in enumerate(prompts):
            mine = ours(torch.tensor([p]))[0][0]
            assert torch.allclose(mine, theirs[i, P - len(p):], atol=1e-4, rtol=0), i


def test_greedy_generation_equals_transformers(imported):
    ours = model_from_checkpoint(imported["ckpt"]).eval()
    tok = get_tokenizer(load_checkpoint(imported["ckpt"])["tokenizer"])
    prompts, n = encode_prompts(tok, QUESTIONS[:3]), 20
    hf = imported["hf"]
    theirs = []
    for p in prompts:  # one at a time: no padding question on their side
        out = hf.generate(input_ids=torch.tensor([p]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
        theirs.append(out[0, len(p):].tolist())
    mine = ours.generate(prompts, n, temperature=0)  # no eos_id: exactly n tokens, as theirs
    assert mine == theirs
    assert all(len(set(row)) > 3 for row in mine)  # not a degenerate repeat of one token


def test_export_of_an_imported_model_round_trips(imported, tmp_path):
    ck = load_checkpoint(imported["ckpt"])
    export.export_checkpoint(ck, str(tmp_path / "out"), source=imported["ckpt"])
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"} <= set(os.listdir(tmp_path / "out"))
    assert (tmp_path / "out" / "tokenizer.json").read_text() == ck["tokenizer"]["tokenizer_json"]
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (cfg["eos_token_id"], cfg["bos_token_id"], cfg["tie_word_embeddings"]) == (2, 1, imported["tie"])
    back = export.import_hf(str(tmp_path / "out"))
    assert back["tokenizer"] == ck["tokenizer"] and back["config"] == ck["config"]
    assert all(torch.equal(back["model"][k], ck["model"][k]) for k in ck["model"])
    x = torch.tensor([encode_prompts(get_tokenizer(ck["tokenizer"]), QUESTIONS[:1])[0]])
    with torch.no_grad():  # and transformers reads it back unchanged
        assert torch.equal(OlmoForCausalLM.from_pretrained(tmp_path / "out").eval()(x).logits, imported["hf"](x).logits)


# ---------------------------------------------------------------- folders that do not fit
def test_the_authors_eos_zero_is_read_as_unk(tk, tmp_path, capsys):
    """convert_olmo_weights_to_hf.py --no_fix_eos_token_id keeps OLMo's default eos_token_id 0 (<unk>)."""
    authors_folder(str(tmp_path / "hf"), tk, eos=0)
    ck = export.import_hf(str(tmp_path / "hf"))
    assert ck["tokenizer"]["eos_id"] == 2 and "unknown token" in capsys.readouterr().err


@pytest.mark.parametrize("case,want", [("no-tokenizer-json", "no tokenizer.json"), ("vocab", "vocab_size"),
                                       ("eos", "eos_token_id 7")])
def test_a_missing_or_mismatched_tokenizer_is_one_line(tk, tmp_path, capsys, case, want):
    d = str(tmp_path / "hf")
    authors_folder(d, tk, eos=7 if case == "eos" else 2)
    if case == "no-tokenizer-json":
        os.unlink(os.path.join(d, "tokenizer.json"))
    if case == "vocab":
        llama_like_tokenizer(320).save(os.path.join(d, "tokenizer.json"))
    if case == "no-tokenizer-json":  # once through a real subprocess: exit code and stderr as a user sees them
        r = run_cli("--from-hf", d, "--out", tmp_path / "x.pt")
        assert want in one_line_error(r.returncode, r.stderr)
    else:
        capsys.readouterr()  # save_pretrained's progress bar
        with pytest.raises(SystemExit) as e:
            export.main(["--from-hf", d, "--out", str(tmp_path / "x.pt")])
        assert want in one_line_error(e.value.code, capsys.readouterr().err)
    assert not os.path.exists(tmp_path / "x.pt")
    if case == "eos":  # the way out the message names
        assert export.import_hf(d, eos_id=2)["tokenizer"]["eos_id"] == 2


def test_a_hub_id_is_downloaded_with_snapshot_download(tk, tmp_path, monkeypatch):
    import huggingface_hub
    calls = []

    def fake(repo_id, revision=None, allow_patterns=None, **kw):
        calls.append((repo_id, revision, allow_patterns))
        authors_folder(str(tmp_path / "cache"), tk)
        return str(tmp_path / "cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    ck = export.import_hf("rosieyzh/some-olmo-150m", revision="abc123")
    (repo, rev, pats), = calls
    assert (repo, rev) == ("rosieyzh/some-olmo-150m", "abc123") and ck["source"] == "rosieyzh/some-olmo-150m@abc123"
    assert {"config.json", "*.safetensors", "pytorch_model*.bin", "tokenizer.json", "tokenizer_config.json"} <= set(pats)
    with pytest.raises(UserError, match="--revision is for a hub id"):
        export.import_hf(str(tmp_path / "cache"), revision="abc123")


# ---------------------------------------------------------------- rl.py and evaluate.py on the imported model
@pytest.fixture
def generate_spy(monkeypatch):
    """Records the prompts and eos_id every GPT.generate call gets (rl.py and evaluate.py both generate so)."""
    seen, real = [], GPT.generate

    def spy(self, prompts, *a, **kw):
        seen.append({"prompts": [list(p) for p in prompts], "eos_id": kw.get("eos_id")})
        return real(self, prompts, *a, **kw)

    monkeypatch.setattr(GPT, "generate", spy)
    return seen


def test_one_rl_step_on_the_imported_model(imported_150m, tmp_path, generate_spy):
    import rl
    imported = imported_150m
    recs = [{"id": f"q{i}", "question": q, "gold": "1"} for i, q in enumerate(QUESTIONS)]
    res = rl.train(["--algo", "grpo", "--ckpt", imported["ckpt"], "--out-dir", str(tmp_path), "--max-steps", "1",
                    "--prompts-per-step", "2", "--samples-per-prompt", "2", "--max-new-tokens", "4",
                    "--eval-interval", "0", "--micro-batch", "4", "--no-tqdm"],
                   reward_fn=lambda texts, records, responses: [{"correct": i % 2 == 0} for i in range(len(texts))],
                   prompts=recs)
    assert res["step"] == 1
    snap = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert snap["tokenizer"] == load_checkpoint(imported["ckpt"])["tokenizer"]  # the spec travels on
    assert generate_spy and all(c["eos_id"] == 2 for c in generate_spy)
    assert all(p[0] == 1 for c in generate_spy for p in c["prompts"]), "RL prompts must start with BOS (prompt_bos)"


def test_one_evaluation_on_the_imported_model(imported_150m, tmp_path, generate_spy):
    import evaluate
    imported = imported_150m
    out = tmp_path / "eval"
    evaluate.main(["--ckpt", imported["ckpt"], "--benchmark", "synthetic", "--limit", "3", "--max-new-tokens", "4",
                   "--out", str(out), "--no-tqdm", "--threads", "1"])
    s = json.loads((out / "summary.json").read_text())
    assert s["num_problems"] == 3 and sum(s["format_shares"].values()) == pytest.approx(1.0)
    assert generate_spy and all(c["eos_id"] == 2 for c in generate_spy)
    assert all(p[0] == 1 for c in generate_spy for p in c["prompts"]), "eval prompts must start with BOS (prompt_bos)"



def test_pretrain_with_an_hf_tokenizer(tmp_path, tk):
    """pretrain.py --tokenizer DIR trains on the Hugging Face tokenizer: the vocab follows from it and the checkpoint
    carries its spec, so every later script rebuilds the same tokenizer."""
    import pretrain
    from data.tokenizer import get_tokenizer
    folder = tmp_path / "hf"
    authors_folder(folder, tk)
    out = tmp_path / "pt"
    pretrain.main(["--tokenizer", str(folder), "--mix", "syn-omi2:1", "--unit", "60", "--data-dir",
                   str(tmp_path / "cache"), "--out-dir", str(out), "--max-iters", "2", "--n-layer", "1", "--n-embd",
                   "32", "--n-head", "2", "--block-size", "64", "--samples", "0", "--eval-interval", "0", "--no-tqdm"])
    ck = load_checkpoint(str(out / "ckpt.pt"))
    tok = get_tokenizer(ck["tokenizer"])
    assert ck["tokenizer"]["name"] == "hf" and ck["config"]["vocab_size"] == tok.vocab_size == tk.get_vocab_size()
