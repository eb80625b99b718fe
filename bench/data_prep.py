"""Chat data preparation speed: the product's render + tokenize + mask against a bare `datasets.map` of
`apply_chat_template` over the same file, in the same run.

    .venv/bin/python bench/data_prep.py                   # 20,000 conversations, 3 rounds
    .venv/bin/python bench/data_prep.py --examples 5000 --rounds 2
    .venv/bin/python bench/data_prep.py --tokenizer MODEL_DIR   # a real model's tokenizer and template

The data is a JSONL file of `messages` conversations (a system prompt on a third of them, one to three
exchanges), written once. The tokenizer (unless --tokenizer) is a byte-level BPE trained on the same
words with a ChatML template without generation markers (like Qwen2.5-Instruct's), so the product masks
by rendering prefixes, its slower path. Each round measures, on a fresh cache folder:
- product: engine.data.example_file.build_example_file (detect the layout, render through the template,
  tokenize in batches, assistant mask, write ids/mask/index) - what `train`, `estimate` and `llm-wizard
  data` run;
- baseline: datasets.load_dataset("json") + .map(apply_chat_template(tokenize=True)) with no mask at all,
  the usual hand-written preprocessing (datasets' own cache off, so both do the work every round).
Rounds alternate the two so a busy moment hits both. It prints examples a second and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, when run from a checkout
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

WORDS = ("the model learns from data tokens per parameter train small large text memory check sky blue "
         "river stone light music answer question prime seven hello night stars").split()
CHATML = ("{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
          "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def sentence(rng: random.Random, lo: int = 6, hi: int = 40) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def write_data(path: Path, n: int) -> None:
    rng = random.Random(0)
    with path.open("w") as handle:
        for k in range(n):
            messages = [{"role": "system", "content": sentence(rng, 4, 12)}] if k % 3 == 0 else []
            for _ in range(rng.randint(1, 3)):
                messages += [{"role": "user", "content": sentence(rng)},
                             {"role": "assistant", "content": sentence(rng, 10, 80)}]
            handle.write(json.dumps({"messages": messages}) + "\n")


def make_tokenizer(folder: Path):  # noqa: ANN201
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    rng = random.Random(1)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([sentence(rng) for _ in range(5000)], trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def product(path: Path, tokenizer, cache: Path) -> tuple[float, int]:  # noqa: ANN001
    from engine.data import chat_templates
    from engine.data.example_file import build_example_file
    from engine.data.render import Renderer
    from engine.data.sources import DataSource

    start = time.perf_counter()
    source = DataSource(str(path))
    renderer = Renderer(tokenizer, chat_templates.resolve("auto", tokenizer))
    built = build_example_file(source, renderer, cache_dir=cache)
    return time.perf_counter() - start, built.n_examples


def baseline(path: Path, tokenizer) -> tuple[float, int]:  # noqa: ANN001
    import datasets

    datasets.disable_caching()
    datasets.disable_progress_bars()
    start = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=str(path), split="train", keep_in_memory=True)
    out = ds.map(lambda row: {"input_ids": tokenizer.apply_chat_template(row["messages"], tokenize=True,
                                                                          return_dict=True)["input_ids"]},
                 remove_columns=ds.column_names, keep_in_memory=True)
    return time.perf_counter() - start, len(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokenizer", help="a model folder whose tokenizer (and chat template) to use")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmw-bench-data-") as tmp:
        root = Path(tmp)
        data = root / "chat.jsonl"
        write_data(data, args.examples)
        if args.tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        else:
            tokenizer = make_tokenizer(root / "tok")
        print(f"{args.examples} conversations, {data.stat().st_size / 1e6:.1f} MB, {os.cpu_count()} CPUs, "
              f"template {'with' if '{% generation' in str(tokenizer.chat_template) else 'without'} generation markers")
        ours: list[float] = []
        theirs: list[float] = []
        for r in range(args.rounds):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for which in order:
                if which == 0:
                    seconds, n = product(data, tokenizer, root / f"cache{r}")
                    ours.append(n / seconds)
                else:
                    seconds, n = baseline(data, tokenizer)
                    theirs.append(n / seconds)
            print(f"round {r + 1}: product {ours[-1]:,.0f} ex/s, datasets.map {theirs[-1]:,.0f} ex/s")
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"median: product {a:,.0f} examples/s (render + tokenize + mask + write), datasets.map "
              f"{b:,.0f} examples/s (render + tokenize, no mask): ratio {a / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
