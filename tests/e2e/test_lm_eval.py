"""lm-evaluation-harness drives `/v1/completions` as it drives vLLM's server: model type
`local-completions`, tasks from local files, a pinned expert, no hub access. The multiple-choice task
scores continuations with `echo` + `logprobs` (loglikelihood); the generation task uses `stop`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.server_process import ServerProcess

pytestmark = pytest.mark.e2e

QUESTIONS = [
    {"question": "Which SQL clause filters rows before grouping?", "choices": ["WHERE", "ORDER BY"], "answer": 0},
    {"question": "Which SQL keyword removes duplicate rows?", "choices": ["DISTINCT", "LIMIT"], "answer": 0},
    {"question": "Which SQL function counts rows?", "choices": ["SUM", "COUNT"], "answer": 1},
    {"question": "Which SQL statement adds rows to a table?", "choices": ["INSERT", "SELECT"], "answer": 0},
]
TASKS = """
task: switchyard_sql_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
---
task: switchyard_sql_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
metric_list:
  - metric: exact_match
"""


def test_lm_eval_runs_local_tasks_against_a_pinned_expert(server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "sql_questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for i, task in enumerate(TASKS.format(data=data).split("---")):
        (tasks / f"task{i}.yaml").write_text(task)
    tokenizer = Path.home() / ".cache" / "switchyard" / "models" / "smollm2-135m-instruct"
    served_before = _served_by_sql(server)
    output = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    model_args = (f"model=sql,base_url={server.base_url}/v1/completions,tokenizer_backend=huggingface,"
                  f"tokenizer={tokenizer},tokenized_requests=False,num_concurrent=1,max_retries=1")
    run = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
         "--tasks", "switchyard_sql_choice,switchyard_sql_generate", "--include_path", str(tasks),
         "--output_path", str(output), "--seed", "0"],
        env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(next(output.rglob("results_*.json")).read_text())["results"]
    assert 0.0 <= results["switchyard_sql_choice"]["acc,none"] <= 1.0
    assert 0.0 <= results["switchyard_sql_generate"]["exact_match,none"] <= 1.0
    # 8 loglikelihood requests (4 questions x 2 choices) and 4 generations, all answered by the pinned expert
    assert _served_by_sql(server) - served_before >= 12


def _served_by_sql(server: ServerProcess) -> float:
    metrics = httpx.get(f"{server.base_url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("switchyard_requests_total{") and 'endpoint="completions"' in line
               and 'expert="sql"' in line and 'status="ok"' in line)
