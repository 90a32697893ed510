"""Real inputs named once (issue 28, item 2): the settings reach the notebooks that use them, and the preflight of
`magicid-run` at h100/paper lists every missing or wrong input in one message, exits 2 and writes nothing."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
from magicid import core
from magicid.identity import write_random_insightface_pack
from magicid.run import NOTEBOOK_INPUTS, OPTIONAL_INPUTS, effective_scale, preflight
from magicid.world import read_prompts

ROOT = Path(__file__).resolve().parent.parent
RUN = str(Path(sys.executable).parent/'magicid-run')
REQUIRED = [k for k in core.REAL_INPUTS if k not in OPTIONAL_INPUTS + ('consisid_dir',)]   # ConsisID's: only when a baseline names it

def _cli(*args, reports):
    return subprocess.run([RUN, *args], capture_output=True, text=True, env={**os.environ, 'MAGICID_REPORTS_DIR': str(reports)})

def _touch(p: Path, text: str = 'x') -> Path:
    p.parent.mkdir(parents=True, exist_ok=True); p.write_text(text)
    return p

@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    "Tiny stand-ins for every real input of h100, in the layouts the loaders expect (random packs, placeholder files)."
    t = tmp_path_factory.mktemp('real')
    for q in ('transformer', 'vae', 'text_encoder', 'tokenizer', 'scheduler'): (t/'wan'/q).mkdir(parents=True)
    _touch(t/'wan'/'transformer'/'config.json', json.dumps({'_class_name': 'WanTransformer3DModel'}))
    for q, mt in (('clip', 'clip'), ('vlm', 'qwen2_vl')):
        _touch(t/q/'config.json', json.dumps({'model_type': mt})); _touch(t/q/'model.safetensors'); _touch(t/q/'tokenizer.json')
    _touch(t/'vlm'/'tokenizer_config.json', json.dumps({'chat_template': '{{ messages }}'}))
    for person in ('ann', 'ben'): _touch(t/'ids'/person/'1.png'); _touch(t/'ids'/person/'2.jpg')
    _touch(t/'videos'/'a.mp4')
    return dict(weights_dir=t/'wan', reward_id_pack=write_random_insightface_pack(t/'reward', seed=0),
                eval_id_pack=write_random_insightface_pack(t/'eval', seed=1), clip_dir=t/'clip', vlm_dir=t/'vlm',
                i3d_path=_touch(t/'i3d_torchscript.pt'), raft_weights=_touch(t/'raft_large.pth'), identities_dir=t/'ids',
                eval_prompts=_touch(t/'prompts.txt', '# ours\na person waves\nA person runs on a beach\n'), real_videos_dir=t/'videos')

def _sets(d): return [a for k, v in d.items() for a in ('--set', f'{k}={v}')]

def test_nothing_set_names_every_input_once_exits_2_writes_nothing(tmp_path):
    reports = tmp_path/'reports'
    r = _cli('--scale', 'h100', '--no-progress', reports=reports)
    assert r.returncode == 2, r.stdout + r.stderr
    assert 'preflight of scale h100: 8 real inputs are missing or wrong; nothing was run or written' in r.stderr
    for k in REQUIRED:
        assert r.stderr.count(f'  {k}: not set; expected ') == 1, (k, r.stderr)
    for k in OPTIONAL_INPUTS: assert f'  {k}:' not in r.stderr          # RAFT (DIS flow instead), the shipped prompts
    assert 'a folder with a detector det_*.onnx' in r.stderr and 'one sub-folder per person holding >= 1 image' in r.stderr
    assert 'Traceback' not in r.stderr and '[1/' not in r.stdout       # no notebook started
    assert not reports.exists(), sorted(reports.rglob('*'))           # no reports folder, no runs folder

def test_consisid_folder_is_needed_only_when_a_baseline_names_it(tmp_path, inputs, run_cli):
    "`-p 15_magicid.baselines=[...,'ConsisID']` makes consisid_dir a real input; --only without 15_magicid does not."
    args = ('--scale', 'h100', '--preflight', *_sets(inputs))
    r = run_cli(*args, '-p', "15_magicid.baselines=['Magic-Me','ConsisID']", reports=tmp_path/'reports')
    assert r.returncode == 2 and '  consisid_dir: not set; expected a local copy of BestWishYsh/ConsisID-preview' in r.stderr, r.stderr
    assert r.stderr.count('\n  ') == 1, r.stderr                      # the only problem
    r = run_cli(*args, '-p', "15_magicid.baselines=['ConsisID']", '--only', '01_dpo', reports=tmp_path/'reports')
    assert r.returncode == 0, r.stderr
    r = run_cli(*args, '-p', "15_magicid.baselines=['ConsisID']", '--set', f'consisid_dir={tmp_path}', reports=tmp_path/'reports')
    assert r.returncode == 2 and f'  consisid_dir: {tmp_path}: missing model_index.json' in r.stderr, r.stderr

def test_paper_expects_a_hunyuanvideo_folder(tmp_path, inputs, run_cli):
    r = run_cli('--scale', 'paper', '--preflight', *_sets(inputs), reports=tmp_path/'reports')
    assert r.returncode == 2
    assert 'weights_dir: ' + str(inputs['weights_dir']) + ': no text_encoder_2/, tokenizer_2/' in r.stderr
    assert r.stderr.count('\n  ') == 1, r.stderr                      # the only problem
    assert not (tmp_path/'reports').exists()

def test_right_layouts_pass(tmp_path, inputs, run_cli):
    assert preflight(effective_scale('h100', [f'{k}={v}' for k, v in inputs.items()])) == []
    no_raft = {k: v for k, v in inputs.items() if k not in ('raft_weights', 'eval_prompts')}
    r = run_cli('--scale', 'h100', '--preflight', *_sets(no_raft), reports=tmp_path/'reports')
    assert r.returncode == 0, r.stderr
    assert 'every real input is there' in r.stdout and 'raft_weights: not set (optional: without it dynamic degree uses DIS flow)' in r.stdout
    assert f"eval_prompts: {ROOT/'data'/'prompts'/'eval_real.txt'}" in r.stdout   # the shipped default
    assert not (tmp_path/'reports').exists()

def test_wrong_layouts_are_named(tmp_path, inputs):
    ids = tmp_path/'ids'
    _touch(ids/'ann'/'1.png'); (ids/'bob').mkdir(); _touch(ids/'cid'/'1.png'); _touch(ids/'cid'/'notes.txt')
    bad = {**inputs, 'identities_dir': ids, 'eval_id_pack': inputs['reward_id_pack'], 'clip_dir': inputs['vlm_dir'],
           'i3d_path': tmp_path, 'eval_prompts': _touch(tmp_path/'p.txt', 'a person walks\nthe sea at night\n'),
           'real_videos_dir': tmp_path/'missing'}
    got = {p.split(':')[0]: p for p in preflight(effective_scale('h100', [f'{k}={v}' for k, v in bad.items()]))}
    assert sorted(got) == sorted(['identities_dir', 'eval_id_pack', 'clip_dir', 'i3d_path', 'eval_prompts', 'real_videos_dir'])
    assert f"identities_dir: {ids}: 2 of 3 person folders: bob/ holds no image; cid/ holds files that are not images (notes.txt)" in got['identities_dir']
    assert 'the same folder as reward_id_pack' in got['eval_id_pack']
    assert "config.json has model_type 'qwen2_vl', not clip; expected a CLIP folder" in got['clip_dir']
    assert f"i3d_path: {tmp_path}: a folder, not a file" in got['i3d_path']
    assert "line 2 without the subject 'a person'" in got['eval_prompts']
    assert 'no such folder' in got['real_videos_dir']
    copy = tmp_path/'copy'                                               # the same recognizer under another folder
    copy.mkdir()
    for f in Path(inputs['reward_id_pack']).iterdir(): (copy/f.name).write_bytes(f.read_bytes())
    p = preflight(effective_scale('h100', [f'{k}={v}' for k, v in {**inputs, 'eval_id_pack': copy}.items()]))
    assert len(p) == 1 and "its recognizer w600k_tiny.onnx is the same file as reward_id_pack's" in p[0]

def test_smoke_and_tiny_need_no_real_inputs(tmp_path, run_cli):
    for s in ('smoke', 'tiny'): assert preflight(core.load_scale(s)) == []
    r = run_cli('--scale', 'tiny', '--preflight', reports=tmp_path/'reports')
    assert r.returncode == 0 and 'no real inputs to check' in r.stdout, r.stderr

def test_list_shows_a_setting_reaching_the_notebooks_that_use_it(tmp_path, run_cli):
    r = run_cli('--list', '--scale', 'h100', '--set', 'clip_dir=/x', '--set', 'eval_id_pack=/e', '--set', 'reward_id_pack=/r',
             reports=tmp_path/'reports')
    assert r.returncode == 0, r.stderr
    lines = {l.split(':')[0].strip(): l for l in r.stdout.splitlines()[1:]}
    users = [nb for nb, l in lines.items() if 'clip_dir=' in l]
    assert users and all("clip_dir='/x'" in lines[nb] for nb in users), r.stdout
    assert "clip_dir='/x'" in lines['05_clip']
    assert "insightface_pack='/e'" in lines['03_identity'] and "pack_dir='/r'" in lines['02b_facedetect']
    assert not (tmp_path/'reports').exists()

@pytest.mark.parametrize('args, message', [
    (['-p', '05_clip.clip_dir=/y'], "-p 05_clip.clip_dir: 05_clip's clip_dir is the setting clip_dir; use --set clip_dir=PATH"),
    (['-p', 'pack_dir=/y'], "02b_facedetect's pack_dir is the setting reward_id_pack; use --set reward_id_pack=PATH"),
    (['--set', 'vlm_dir=3'], "vlm_dir=3 must be a path (a string)"),
])
def test_a_real_input_has_one_name(tmp_path, args, message, run_cli):
    r = run_cli('--list', '--scale', 'h100', *args, reports=tmp_path/'reports')
    assert r.returncode == 2 and message in r.stderr, r.stderr

def test_scale_file_naming_a_mapped_parameter_is_refused(tmp_path):
    params = tmp_path/'params'; params.mkdir()
    (params/'chain.yaml').write_text((ROOT/'nbs'/'params'/'chain.yaml').read_text())
    (params/'h100.yaml').write_text('settings: {backbone: wan2.1-t2v-1.3b}\nnotebooks:\n  03_identity:\n    insightface_pack: /z\n')
    from magicid.run import plan
    with pytest.raises(ValueError, match=r"h100.yaml: 03_identity.insightface_pack is a real input, named once as the setting eval_id_pack"):
        plan('h100', params=params)

def test_every_mapped_parameter_names_a_real_input():
    assert set(NOTEBOOK_INPUTS.values()) <= set(core.REAL_INPUTS)
    assert NOTEBOOK_INPUTS['pack_dir'] == 'reward_id_pack' and NOTEBOOK_INPUTS['insightface_pack'] == 'eval_id_pack'

def test_shipped_evaluation_prompts():
    p = ROOT/'data'/'prompts'/'eval_real.txt'
    assert p.read_text().startswith("# OURS, not the paper's")
    prompts = read_prompts(p)                                        # the comment lines are skipped
    assert len(prompts) == 40 == len(set(prompts))
    assert all(q.lower().count('a person') == 1 for q in prompts)   # one subject, where the token goes
    assert len(read_prompts(ROOT/'data'/'prompts'/'paper_figures.txt')) == 5   # Figs 9-13, one each
