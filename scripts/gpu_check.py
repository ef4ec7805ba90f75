"""GPU check: the server on CUDA with synthetic models in the real shapes, 8 adapters, a short load.

Runs on a machine with one NVIDIA GPU, PyTorch with CUDA, transformers and PEFT (model files cannot travel
there, so the weights are random, in the shapes of SmolLM2-135M and all-MiniLM-L6-v2, with small
generated tokenizers). It starts the real server (`switchyard serve`, transformers backend, device cuda),
registers 8 LoRA adapters through the admin API, checks through `/health` that the model, the encoder
and the routing index sit on the GPU, runs routing and chat load briefly, checks that greedy answers in a
mixed-adapter batch equal solo runs, and writes a JSON summary. Under 8 minutes on one GPU.

Also runs on CPU (`--device cpu`) to check the script itself.
Usage: python scripts/gpu_check.py --out DIR [--device cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.load import chat_scenario, pct, routing_scenario  # noqa: E402
from tests.support.server_process import ADMIN_TOKEN, ServerProcess  # noqa: E402

WORDS_TEXT = (
    "the a of to and in is it you that he was for on are with as his they be at one have this from or "
    "had by word but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them write would like so these her long make thing "
    "see him two has look more day could go come did number sound no most people my over know water than "
    "call first order sql select math add support help account password refund customer table count sum "
)
WORDS = WORDS_TEXT.split()
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def synthetic_base(directory: Path) -> None:
    """Random weights in SmolLM2-135M-Instruct's shapes, and a small byte-level BPE tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 50, vocab_size=2000, special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=100000.0,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def synthetic_encoder(directory: Path) -> None:
    """Random weights in all-MiniLM-L6-v2's shapes (BERT, 6 layers, 384 wide) and a word-piece vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), *"abcdefghijklmnopqrstuvwxyz",
             *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536)).save_pretrained(directory)


def synthetic_adapters(base: Path, root: Path, count: int) -> list[Path]:
    """`count` rank-8 LoRA adapters on q/k/v/o with random (non-zero) weights, saved as safetensors."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(count):
        model = AutoModelForCausalLM.from_pretrained(base)
        torch.manual_seed(100 + i)
        peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                    "o_proj"]))
        with torch.no_grad():
            for name, param in peft.named_parameters():
                if "lora_" in name:
                    param.normal_(0, 0.05)
        path = root / f"expert{i}"
        peft.save_pretrained(path)
        paths.append(path)
    return paths


def greedy(base_url: str, model: str, text: str) -> str:
    response = httpx.post(f"{base_url}/v1/chat/completions", timeout=300, json={
        "model": model, "max_tokens": 16, "temperature": 0, "messages": [{"role": "user", "content": text}]})
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    summary: dict = {"device": args.device, "torch": torch.__version__,
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthetic_base(root / "base")
        synthetic_encoder(root / "encoder")
        adapters = synthetic_adapters(root / "base", root / "adapters", 8)
        summary["prepare_s"] = round(time.perf_counter() - started, 1)
        config = root / "switchyard.yaml"
        config.write_text(yaml.safe_dump({
            "server": {"data_dir": str(root / "data")}, "routing": {"encoder_model": str(root / "encoder")},
            "backend": {"device": args.device, "base_model": str(root / "base"), "max_loras": 8,
                        "max_batch_size": 16},
            "security": {"adapter_roots": [str(root / "adapters")]}, "generation": {"max_tokens_limit": 256}}))
        server = ServerProcess(config, root / "server.log").start(timeout=300)
        try:
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            names = [f"expert{i}" for i in range(8)]
            register_ms = []
            for i, (name, path) in enumerate(zip(names, adapters, strict=True)):
                t = time.perf_counter()
                httpx.post(f"{server.base_url}/admin/experts", headers=headers, timeout=120, json={
                    "name": name, "adapter_path": str(path),
                    "examples": [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(6)) for _ in range(3)],
                }).raise_for_status()
                register_ms.append((time.perf_counter() - t) * 1000)
            summary["register_ms_p50"] = round(pct(register_ms, 0.5), 1)
            health = httpx.get(f"{server.base_url}/health").json()
            summary["devices"] = health["devices"]
            summary["on_requested_device"] = all(str(d).startswith(args.device) for d in health["devices"].values())
            rows = asyncio.run(load(server.base_url, names))
            summary["load"] = rows
            texts = ["order refund help", "select count table", "add number sum", "account password"]
            cases = [(names[i], texts[i % 4]) for i in range(8)]
            solo = [greedy(server.base_url, *c) for c in cases]
            with ThreadPoolExecutor(max_workers=8) as pool:
                mixed = list(pool.map(lambda c: greedy(server.base_url, *c), cases))
            summary["mixed_equals_solo"] = sum(a == b for a, b in zip(mixed, solo, strict=True))
            summary["mixed_cases"] = len(cases)
        finally:
            server.stop()
            summary["server_log_tail"] = (root / "server.log").read_text(errors="replace")[-3000:]
    summary["total_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "server_log_tail"}, indent=2))


async def load(base_url: str, names: list[str]) -> list[dict]:
    await routing_scenario(base_url, 4, 20)
    await chat_scenario(base_url, "warm-up", names, True, 4)
    return [
        await routing_scenario(base_url, 16, 400),
        await chat_scenario(base_url, "chat, 8 concurrent, one adapter", [names[0]] * 8, True, 64),
        await chat_scenario(base_url, "chat, 8 concurrent, 8 adapters", names, True, 64),
        await chat_scenario(base_url, "chat, 8 adapters one at a time", names, False, 64),
        await chat_scenario(base_url, "chat, 8 concurrent, generalist", ["base"] * 8, True, 64),
    ]


if __name__ == "__main__":
    main()
