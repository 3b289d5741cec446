"""A nanoGPT-style training loop, as its users write it; lrdebug is not mentioned.

The LR is computed each iteration (linear warmup, then cosine decay) and written into every param
group; gradients are accumulated over micro-steps; a GradScaler scales the loss, and one iteration's
loss is made infinite so that the scaler skips that step. ``python nanogpt_loop.py OUT.json`` writes
each iteration's LR and whether its step was skipped.
"""

import json
import math
import sys

import torch

torch.manual_seed(0)
learning_rate, min_lr, warmup_iters, lr_decay_iters, max_iters = 6e-4, 6e-5, 4, 12, 14
gradient_accumulation_steps, grad_clip, poisoned_iter = 3, 1.0, 6


class TinyGPT(torch.nn.Module):
    def __init__(self, vocab=32, n_embd=16, block=8):
        super().__init__()
        self.wte = torch.nn.Embedding(vocab, n_embd)
        self.wpe = torch.nn.Embedding(block, n_embd)
        self.ln = torch.nn.LayerNorm(n_embd)
        self.mlp = torch.nn.Linear(n_embd, n_embd)
        self.lm_head = torch.nn.Linear(n_embd, vocab, bias=False)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        x = x + self.mlp(self.ln(x))
        logits = self.lm_head(x)
        return logits, torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def get_lr(it):
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def get_batch():
    x = torch.randint(0, 32, (4, 8))
    return x, torch.roll(x, -1, dims=1)


model = TinyGPT()
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                              lr=learning_rate, betas=(0.9, 0.95))
scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
history = []
X, Y = get_batch()
for iter_num in range(max_iters):
    lr = get_lr(iter_num)
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    for micro_step in range(gradient_accumulation_steps):
        logits, loss = model(X, Y)
        loss = loss / gradient_accumulation_steps
        if iter_num == poisoned_iter:
            loss = loss * float("inf")
        X, Y = get_batch()
        scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    history.append({"iter": iter_num, "lr": lr, "skipped": scaler.get_scale() < scale})
    optimizer.zero_grad(set_to_none=True)

with open(sys.argv[1], "w") as f:
    json.dump(history, f)
