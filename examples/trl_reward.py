"""selfrl's label-free rewards inside TRL's GRPOTrainer. Needs `pip install trl` (the test suite never imports this).

    python examples/trl_reward.py MODEL_DIR                          # majority vote on the shipped math sample
    python examples/trl_reward.py MODEL_DIR --reward self_certainty  # Intuitor: the policy scores its completions
    python examples/trl_reward.py MODEL_DIR --reward pooled          # + 8 votes per prompt from a second model
    python examples/trl_reward.py organism --task arith --max-completion-length 12   # the CPU model organism

The dataset holds prompts only. A `solution` column would reach the rewards as a keyword argument (TRL forwards
every column); they ignore it. With a tokenizer that has a chat template the prompts are conversational, so TRL
applies the template and passes completions as messages; the rewards read both forms.

`--reward pooled` shows the pooled vote's voter_completions: here a frozen copy of the start model supplies them.
M-GRPO proper (selfrl train --set method=mgrpo) updates that copy as an EMA of the policy after every step and adds
the IQR entropy filter; in TRL that would be a TrainerCallback, which this example leaves out.
"""
from __future__ import annotations

import argparse
import copy

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from selfrl.organism import organism_path
from selfrl.rewards import MajorityVoteReward, PooledVoteReward, SelfCertaintyReward
from selfrl.rollout import encode_prompts, generate
from selfrl.tasks import load_task, render_prompt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="a local HF model directory (save_pretrained) or 'organism'")
    ap.add_argument("--task", default="math", help="a selfrl task: math, arith, or file.py:Class")
    ap.add_argument("--reward", choices=("majority", "self_certainty", "pooled"), default="majority")
    ap.add_argument("--max-steps", type=int, default=2)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--max-completion-length", type=int, default=256)
    args = ap.parse_args()

    path = str(organism_path()) if args.model == "organism" else args.model
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    task = load_task(args.task)
    chat = bool(tok.chat_template)
    texts = [task.format_prompt(q) for q in task.train_prompts()]
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": t}] for t in texts] if chat else texts})
    config = GRPOConfig(output_dir="runs/trl_reward", max_steps=args.max_steps, num_generations=args.num_generations,
                        per_device_train_batch_size=args.num_generations, max_completion_length=args.max_completion_length,
                        temperature=1.0, learning_rate=1e-6, beta=0.0, report_to="none", save_strategy="no",
                        use_cpu=not torch.cuda.is_available(), bf16=False, logging_steps=1)

    if args.reward == "majority":
        reward = MajorityVoteReward(task)
    elif args.reward == "self_certainty":
        # the policy itself scores (a frozen scorer gets reward-hacked); same temperature as the sampling
        reward = SelfCertaintyReward(model, tok, temperature=config.temperature)
    else:
        voter_model, pooled = copy.deepcopy(model).eval(), PooledVoteReward(task)

        def pooled_vote(prompts, completions, **kwargs):
            """The policy's completions vote together with 8 samples per prompt from voter_model."""
            rendered = [render_prompt(tok, p[0]["content"], True) if chat else p for p in prompts]
            unique = list(dict.fromkeys(rendered))
            batch = encode_prompts(tok, unique, next(voter_model.parameters()).device)
            with torch.no_grad():
                out = generate(voter_model, tok, batch, 8, args.max_completion_length, config.temperature).texts
            voters = {u: out[i * 8 : (i + 1) * 8] for i, u in enumerate(unique)}
            return pooled(prompts, completions, voter_completions=[voters[r] for r in rendered], **kwargs)

        reward = pooled_vote
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config, train_dataset=data, processing_class=tok)
    trainer.train()
    last = next(h for h in reversed(trainer.state.log_history) if "reward" in h)  # the last step's metrics
    print({k: v for k, v in last.items() if k.startswith("reward")})


if __name__ == "__main__":
    main()
