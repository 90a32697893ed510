"""The per-person work split over processes with accelerate (issue 28, item 6): 2 CPU processes divide 4 people 2 + 2,
and rank 0 gathers one table equal to the one a single process computes."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
from magicid import evaluate as E

HERE = Path(__file__).resolve().parent
ACCELERATE = str(Path(sys.executable).parent/'accelerate')

def test_two_processes_split_the_people_and_rank_0_gathers_the_single_process_table(tmp_path):
    r = subprocess.run([ACCELERATE, 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1', '--mixed_precision', 'no',
                        '--dynamo_backend', 'no', '--main_process_port', '29517', str(HERE/'eval_two_processes.py'),
                        str(tmp_path/'work'), str(tmp_path/'two.json')],
                       capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = {p.name: json.loads((p/'scores.json').read_text())['rank'] for p in sorted((tmp_path/'work').iterdir())}
    assert ranks == {'0': 0, '1': 0, '2': 1, '3': 1}                      # 2 + 2, contiguous in rank order
    two = json.loads((tmp_path/'two.json').read_text())
    # the same people, prompts and videos in one process
    sys.path.insert(0, str(HERE))
    from eval_two_processes import people, prompts, generate           # the script's own people, prompts and generator
    one = E.evaluate_people(people, prompts, generate, lambda: E.scale_instruments('smoke'), tmp_path/'one', progress=False)
    assert [r['identity'] for r in two['rows']] == ['0', '0', '1', '1', '2', '2', '3', '3']
    assert json.loads(json.dumps(one['render']['rows'], default=float)) == two['rows']
    assert json.loads(json.dumps(E.summarize(one['render']), default=float)) == two['summary']
