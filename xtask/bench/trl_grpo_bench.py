"""TRL's GRPOTrainer on the prompts `selfroute-train train` draws, for `cargo xtask bench train`.

Usage: trl_grpo_bench.py --model HF_DIR --prompts PROMPTS_JSON --group G --prompts-per-step P
                         --max-new-tokens L --steps S --lr LR --seed SEED --threads N --out DIR

HF_DIR is `selfroute-train export --hf` of the GGUF ours trains; PROMPTS_JSON is the output of
`cargo run -p selfroute-train --example dump_prompts` (each step's prompts, their template text and
the token ids ours feeds the model). The trainer is set up to do the work ours does in one step:
P prompts x G samples at temperature 1 (no top-k/top-p), up to L new tokens, one forward/backward
over the completions and one AdamW step; float32 on the CPU; no reference model (beta = 0, as GAPG
has no KL term); one optimisation pass per batch; no gradient checkpointing (ours keeps the
activations too; --gradient-checkpointing turns TRL's default back on).

Prints one JSON line: per step (warm-up included; the caller drops it) the wall time between
TrainerCallback.on_step_begin and on_step_end (`step_s`), the part spent making the batch
(`prepare_s`: tokenizing, generating, decoding, rewards, padding: what ours counts as rollout_s), of
which `generate_s` is transformers' generate itself, the rest (`update_s`: loss forward/backward and
the optimizer), and the completion tokens sampled (`completion_tokens`, each up to and including its
eos).
"""

import argparse
import json
import re
import statistics
import sys
import time


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face folder")
    ap.add_argument("--prompts", required=True, help="dump_prompts JSON")
    ap.add_argument("--group", type=int, required=True)
    ap.add_argument("--prompts-per-step", type=int, required=True)
    ap.add_argument("--max-new-tokens", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--out", required=True, help="the Trainer's output_dir (nothing is saved)")
    return ap.parse_args()


NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.IGNORECASE | re.DOTALL)


def final_number(text):
    """The answer a response gives: the last number in its last <answer> tag (the format the
    prompts ask for), else its last number."""
    tags = ANSWER_TAG.findall(text)
    for source in ([tags[-1]] if tags else []) + [text]:
        found = NUMBER.findall(source.replace(",", ""))
        if found:
            return found[-1]
    return None


def numeric_answer_reward(prompts, completions, answer, **kwargs):
    """1 for a response whose final number equals the reference answer, else 0."""
    rewards = []
    for completion, reference in zip(completions, answer):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        got = final_number(text)
        try:
            rewards.append(1.0 if got is not None and float(got) == float(reference) else 0.0)
        except ValueError:
            rewards.append(0.0)
    return rewards


def choose_prompt_format(tokenizer, prompts):
    """TRL tokenizes a plain-text prompt with `tokenizer(text=...)` and a conversational one with
    `apply_chat_template`: take the form whose ids are exactly the ids ours trains on."""
    text_ids = tokenizer(text=[p["prompt"] for p in prompts])["input_ids"]
    if all(list(ids) == p["prompt_ids"] for ids, p in zip(text_ids, prompts)):
        return "text"
    conv_ids = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p["question"]}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        for p in prompts
    ]
    if all(list(ids) == p["prompt_ids"] for ids, p in zip(conv_ids, prompts)):
        return "conversational"
    for ids, p in zip(text_ids, prompts):
        if list(ids) != p["prompt_ids"]:
            sys.exit(
                "the HF tokenizer does not give the ids selfroute-train trains on for\n"
                f"{p['prompt']!r}:\n  ours {p['prompt_ids']}\n  HF   {list(ids)}"
            )
    sys.exit("no prompt format gives selfroute-train's ids")


def main():
    args = parse_args()
    import torch

    # Before anything builds a thread pool: the same thread count as ours.
    torch.set_num_threads(args.threads)
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    with open(args.prompts) as f:
        dumped = json.load(f)
    prompts = dumped["prompts"]
    if len(prompts) < args.steps * args.prompts_per_step:
        sys.exit(
            f"{args.prompts} holds {len(prompts)} prompts, fewer than "
            f"{args.steps} steps x {args.prompts_per_step}"
        )
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    prompt_format = choose_prompt_format(tokenizer, prompts)
    rows = [
        {
            "prompt": p["prompt"]
            if prompt_format == "text"
            else [{"role": "user", "content": p["question"]}],
            "answer": p["answer"],
        }
        for p in prompts
    ]
    # In step order and unshuffled, so TRL's step k takes the P prompts ours takes at step k.
    dataset = Dataset.from_list(rows)

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=args.out,
        use_cpu=True,
        bf16=False,
        fp16=False,
        per_device_train_batch_size=args.prompts_per_step * args.group,
        gradient_accumulation_steps=1,
        num_generations=args.group,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        num_iterations=1,
        learning_rate=args.lr,
        max_steps=args.steps,
        seed=args.seed,
        shuffle_dataset=False,
        gradient_checkpointing=args.gradient_checkpointing,
        # Dr. GRPO's loss (no std scaling, a constant normaliser) is the closest of TRL's to GAPG's
        # sequence sums; the loss's form does not change its cost.
        loss_type="dr_grpo",
        scale_rewards="none",
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )

    timing = {"step_s": [], "prepare_s": [], "generate_s": [], "completion_tokens": []}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timing["prepare_s"].append(0.0)
            timing["generate_s"].append(0.0)
            timing["completion_tokens"].append(0)
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            timing["step_s"].append(time.perf_counter() - self.started)

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[numeric_answer_reward],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )

    # The trainer calls these through `self`, so instance attributes wrap them: the batch is made
    # by _generate_and_score_completions, and the sampling inside it by _generate_single_turn.
    prepare = trainer._generate_and_score_completions
    generate = trainer._generate_single_turn

    def timed_prepare(*a, **kw):
        started = time.perf_counter()
        out = prepare(*a, **kw)
        timing["prepare_s"][-1] += time.perf_counter() - started
        return out

    def timed_generate(*a, **kw):
        started = time.perf_counter()
        completion_ids, logprobs = generate(*a, **kw)
        timing["generate_s"][-1] += time.perf_counter() - started
        timing["completion_tokens"][-1] += sum(len(ids) for ids in completion_ids)
        return completion_ids, logprobs

    trainer._generate_and_score_completions = timed_prepare
    trainer._generate_single_turn = timed_generate
    trainer.train()

    steps = len(timing["step_s"])
    if steps != args.steps:
        sys.exit(f"TRL ran {steps} steps, expected {args.steps}")
    timing["update_s"] = [s - p for s, p in zip(timing["step_s"], timing["prepare_s"])]
    measured = timing["step_s"][1:] or timing["step_s"]
    print(
        json.dumps(
            {
                **timing,
                "median_step_s": statistics.median(measured),
                "prompt_format": prompt_format,
                "threads": torch.get_num_threads(),
                "versions": {
                    "trl": trl.__version__,
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
