"""Run by tests/test_evaluate.py under `accelerate launch --multi_gpu --num_processes 2` (2 CPU processes over gloo):
4 smoke people, 2 prompts, renders as the "method"; rank 0 writes the gathered summary to argv[2]; argv[1] is the work
folder. The test imports `people`, `prompts` and `generate` to compute the same table in one process."""
import json, sys
from pathlib import Path
from magicid import evaluate as E, world

people = E.eval_people('smoke', 4, size=32)
prompts = E.eval_prompts('smoke', 2)

def generate(person):
    return dict(render=[world.render_prompt(p, person.identity, seed=i, frames=8, size=32).video for i, p in enumerate(prompts)])

if __name__ == '__main__':
    res = E.evaluate_people(people, prompts, generate, lambda: E.scale_instruments('smoke'), Path(sys.argv[1]), progress=False)
    if res is not None:
        Path(sys.argv[2]).write_text(json.dumps(dict(rows=res['render']['rows'], summary=E.summarize(res['render'])), default=float))
