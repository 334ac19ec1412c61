"""
Every preset in one place: the model shapes, pretraining's optimisation, RL's and Expert Iteration's settings,
for the toy (a 2-core CPU, minutes) and the paper's two sizes (150m, 1b). A script's flag left unset takes the
value of its --preset here; the experiments that chose the toy's numbers are in docs/LOG.md.

    python pretrain.py --preset toy      python rl.py --preset 150m --algo ppo      python rl.py --algo ei
"""

# ---- model shapes (model.GPTConfig). The paper's sizes: OLMo-1 150M (d 768, 12 layers, untied) and 1B (d 2048,
# 16 layers, tied). The toy is ../shared/TOY.md's 2.56M model with vocab 2049 and context 320 (docs/LOG.md).
MODEL = {
    "toy": dict(vocab_size=2049, n_layer=4, n_head=6, n_embd=192, block_size=320, tie_embeddings=False,
                mlp_hidden=512),
    "150m": dict(vocab_size=32768, n_layer=12, n_head=12, n_embd=768, block_size=2048, tie_embeddings=False),
    "1b": dict(vocab_size=32768, n_layer=16, n_head=16, n_embd=2048, block_size=2048, tie_embeddings=True),
}

# ---- pretraining (pretrain.py). 150m/1b: the paper (AdamW 1e-3, betas 0.9/0.95, wd 0.1, 5000 warmup steps,
# ~1M tokens a step = 512 x 2048, cosine to 10%). batch_size is per process; None = as large as the total batch
# allows on the world size (pretrain.py works it out). toy: 8 x 320 tokens x 1100 steps (docs/LOG.md).
PRETRAIN = {
    "toy": dict(batch_size=8, total_batch_size=8, lr=2.5e-3, warmup_iters=50, max_iters=1100,
                eval_interval=275, eval_iters=4, ckpt_interval=275),
    "150m": dict(batch_size=16, total_batch_size=512, lr=1e-3, warmup_iters=5000, max_iters=0,
                 eval_interval=500, eval_iters=20, ckpt_interval=1000),
    "1b": dict(batch_size=8, total_batch_size=512, lr=1e-3, warmup_iters=5000, max_iters=0,
               eval_interval=500, eval_iters=20, ckpt_interval=1000),
}

# ---- RL (rl.py; PPO and GRPO). 150m/1b: the paper's PPO (64 prompts x 8 samples at T 0.7, 8 minibatches of 64
# per rollout, actor lr 1e-6, critic 7e-6, cosine to 10% with 3% warmup, 10 passes over GSM8K train, at most
# 1024 new tokens). toy: ../shared/TOY.md point 4 (16 x 8, T 0.7, beta 0, one update per rollout) at a constant
# lr (a 30-step run leaves no room for a schedule); max_new_tokens 256 because the longest correct toy answer
# runs ~200 tokens and a cut response gets reward 0, so the cap must not decide the race between formats.
RL = {
    "toy": dict(algo="grpo", prompt_set="synthetic", eval_set="synthetic", prompts=1024, prompts_per_step=16,
                samples_per_prompt=8, temperature=0.7, top_p=1.0, max_new_tokens=256, lr=1.5e-4, critic_lr=5e-4,
                kl=0.0, ppo_epochs=1, minibatches=1, micro_batch=32, gen_batch=128, max_steps=30, passes=None,
                warmup_ratio=0.0, min_lr_ratio=1.0, eval_interval=5, eval_n=200, eval_samples=0, eval_batch=128,
                sft_epochs=2, sft_batch=32),
    "150m": dict(algo="ppo", prompt_set="gsm8k", eval_set="gsm8k", prompts=0, prompts_per_step=64,
                 samples_per_prompt=8, temperature=0.7, top_p=1.0, max_new_tokens=1024, lr=1e-6, critic_lr=7e-6,
                 kl=1e-3, ppo_epochs=1, minibatches=8, micro_batch=16, gen_batch=512, max_steps=0, passes=10,
                 warmup_ratio=0.03, min_lr_ratio=0.1, eval_interval=20, eval_n=0, eval_samples=0, eval_batch=256,
                 sft_epochs=2, sft_batch=256),
    "1b": dict(algo="ppo", prompt_set="gsm8k", eval_set="gsm8k", prompts=0, prompts_per_step=64,
               samples_per_prompt=8, temperature=0.7, top_p=1.0, max_new_tokens=1024, lr=1e-6, critic_lr=7e-6,
               kl=1e-3, ppo_epochs=1, minibatches=8, micro_batch=4, gen_batch=128, max_steps=0, passes=10,
               warmup_ratio=0.03, min_lr_ratio=0.1, eval_interval=20, eval_n=0, eval_samples=0, eval_batch=128,
               sft_epochs=2, sft_batch=256),
}

# ---- Expert Iteration (rl.py --algo ei), on top of RL[preset]: k samples per prompt at T 1.0, top-p 0.95 over
# all prompts each round; --max-steps counts rounds. The paper: k 64, SFT lr 1e-4, batch 256, 2 epochs, 3 rounds
# (150m) or 2 (1b). toy: k 8 over 256 prompts (one round samples 2k responses, about a minute on 2 cores).
EI = {
    "toy": dict(samples_per_prompt=8, temperature=1.0, top_p=0.95, lr=1e-4, prompts=256, max_steps=3,
                eval_interval=1, warmup_ratio=0.0, min_lr_ratio=1.0),
    "150m": dict(samples_per_prompt=64, temperature=1.0, top_p=0.95, lr=1e-4, max_steps=3, eval_interval=1,
                 warmup_ratio=0.03, min_lr_ratio=0.1),
    "1b": dict(samples_per_prompt=64, temperature=1.0, top_p=0.95, lr=1e-4, max_steps=2, eval_interval=1,
               warmup_ratio=0.03, min_lr_ratio=0.1),
}
