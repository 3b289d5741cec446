"""Hugging Face Trainer runs, as a user would write them; lrdebug is not mentioned.

A tiny randomly initialised GPT-2 built from a config (no download), synthetic tokens, CPU. Two
runs: linear and cosine schedules with warmup (the first step's LR is 0.0 by design), gradient
accumulation 2. ``python hf_trainer.py OUT.json WORKDIR`` writes each run's ``log_history`` to OUT.json.
"""

import cpu_torchvision  # noqa: F401,I001 - before the framework imports torchvision
import json
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=32, length=16, vocab=64):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def run(schedule, workdir):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    args = TrainingArguments(
        output_dir=f"{workdir}/{schedule}", max_steps=8, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, learning_rate=1e-3, lr_scheduler_type=schedule, warmup_steps=3,
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Tokens())
    trainer.train()
    return trainer.state.log_history


if __name__ == "__main__":
    out, workdir = sys.argv[1], sys.argv[2]
    history = {schedule: run(schedule, workdir) for schedule in ("linear", "cosine")}
    with open(out, "w") as f:
        json.dump(history, f)
