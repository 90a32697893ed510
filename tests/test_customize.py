"""`magicid customize` end to end on a tiny random backbone: outputs, resume after a kill during HPO, and bad input."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import torch
import pytest
from PIL import Image
from safetensors.torch import load_file
from magicid import world, customize, hpo, selection
from magicid.backbone import load_backbone
from magicid.lora import add_lora, load_lora

MAGICID = str(Path(sys.executable).parent/'magicid')

@pytest.fixture(scope='module')
def backbone_dir(small_backbone_dir):
    return str(small_backbone_dir)

@pytest.fixture(scope='module')
def refs_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('refs')
    for i, im in enumerate(world.reference_images(world.sample_identities('dev', 1, 3)[0], 3, 0)): Image.fromarray(im).save(d/f'{i}.png')
    return d

def _cfg(backbone_dir, **kw):
    base = {'backbone_dir': backbone_dir, 'initial.steps': 4, 'hpo.steps': 4, 'save_every': 2, 'repository.n_prompts': 2,
            'repository.n_t': 4, 'repository.n_s': 2, 'repository.sample_steps': 2, 'selection.delta': 0.01, 'selection.tau': 10.0,
            'selection.n_fronts': 3, 'n_samples': 1, 'hpo.lr': 1e-3}
    return customize.CustomizeConfig.from_scale('smoke', **(base | kw))

def test_customize_writes_a_loadable_lora_and_a_record(backbone_dir, refs_dir, tmp_path):
    cfg = _cfg(backbone_dir, resample_vt=True)
    rec = customize.customize(refs_dir, tmp_path/'run', cfg, progress=False, log=lambda *a: None)
    out = tmp_path/'run'
    run = json.loads((out/'run.json').read_text())
    assert set(run['seconds']) >= {'initial_lora', 'repository', 'selection', 'hpo', 'output', 'total'}
    assert run['versions']['torch'] and run['config']['selection']['delta'] == 0.01
    assert rec['pairs']['id'] + rec['pairs']['dy'] == len(json.loads((out/'pairs.json').read_text())['id'] + json.loads((out/'pairs.json').read_text())['dy'])
    assert len(list((out/'samples').glob('*.mp4'))) == 1
    p2 = json.loads((out/'pairs_stage2.json').read_text())                     # resample_vt: stage 2's own pairs
    assert run['config']['resample_vt'] and rec['pairs']['dy_stage2'] == len(p2['dy']) and (out/'repository_stage2'/'index.jsonl').exists()
    fresh = load_lora(load_backbone(backbone_dir), out/'lora')                  # the output LoRA on the original backbone
    a = fresh(['a sks person nods wearing a red jacket in a forest'], steps=2, seed=5, progress=False)
    b = rec['pipe'](['a sks person nods wearing a red jacket in a forest'], steps=2, seed=5, progress=False)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1                     # = the trained policy (up to rounding)
    customize.customize(refs_dir, out, cfg, progress=False, log=lambda *a: None)   # read back: the record keeps the first session's times
    again = json.loads((out/'run.json').read_text())
    assert (run['sessions'], again['sessions']) == (1, 2) and again['started'] == run['started']
    assert all(again['seconds'][k] >= run['seconds'][k] for k in run['seconds']), (run['seconds'], again['seconds'])

@pytest.mark.parametrize('resample_vt', [False, True])
def test_a_run_killed_during_hpo_resumes_to_the_same_lora(backbone_dir, refs_dir, tmp_path, monkeypatch, resample_vt):
    cfg = _cfg(backbone_dir, resample_vt=resample_vt)          # True: stage 2 also samples its own V_t
    customize.customize(refs_dir, tmp_path/'a', cfg, progress=False, log=lambda *a: None)
    real = hpo.train_hpo
    class Killed(Exception): pass
    def killing(pipe, pairs, cfg, ckpt_dir=None, **kw):
        def cb(step, rec):
            if 'stage2' in str(ckpt_dir) and step == 1: raise Killed()
        return real(pipe, pairs, cfg, ckpt_dir, **(kw | dict(callback=cb)))
    monkeypatch.setattr(hpo, 'train_hpo', killing)
    with pytest.raises(Killed): customize.customize(refs_dir, tmp_path/'b', cfg, progress=False, log=lambda *a: None)
    assert not (tmp_path/'b'/'lora').exists()
    monkeypatch.setattr(hpo, 'train_hpo', real)
    customize.customize(refs_dir, tmp_path/'b', cfg, progress=False, log=lambda *a: None)
    la, lb = load_file(tmp_path/'a'/'lora'/'pytorch_lora_weights.safetensors'), load_file(tmp_path/'b'/'lora'/'pytorch_lora_weights.safetensors')
    assert la.keys() == lb.keys() and all(np.array_equal(la[k].numpy(), lb[k].numpy()) for k in la)

def test_resume_with_other_settings_is_refused(backbone_dir, refs_dir, tmp_path):
    customize.check_resumable(tmp_path, _cfg(backbone_dir))
    with pytest.raises(ValueError, match='delta: 0.01 → 5.0'): customize.check_resumable(tmp_path, _cfg(backbone_dir, **{'selection.delta': 5.0}))

def test_thresholds_that_select_no_pair_name_delta_and_tau(backbone_dir, refs_dir, tmp_path, customize_cli):
    r = customize_cli('customize', '--refs', str(refs_dir), '--out', str(tmp_path/'x'), '--scale', 'smoke', '--no-progress',
             '--set', f'backbone_dir={backbone_dir}', '--set', 'initial.steps=2', '--set', 'repository.n_t=0', '--set', 'repository.n_s=1',
             '--set', 'repository.n_prompts=1', '--set', 'repository.sample_steps=1', '--set', 'selection.delta=100', '--set', 'selection.top_k=1',
             '--set', 'selection.n_fronts=1', '--set', 'selection.tau=0.0')
    assert r.returncode == 1 and 'delta' in r.stderr and 'tau' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]

def test_empty_repository_is_an_error():
    with pytest.raises(ValueError, match='rows'): selection.hybrid_pairs([], 1.0, 1.0)

@pytest.mark.parametrize('make, message', [
    (lambda d: None, 'no image'),
    (lambda d: (d/'notes.txt').write_text('hello'), 'notes.txt'),
    (lambda d: [Image.new('RGB', (32, 32)).save(d/'a.png'), Image.new('RGB', (48, 32)).save(d/'b.png')], 'size'),
])
def test_bad_reference_folders(make, message, tmp_path, customize_cli):
    d = tmp_path/'refs'; d.mkdir(); make(d)
    r = customize_cli('customize', '--refs', str(d), '--out', str(tmp_path/'o'), '--scale', 'smoke')
    assert r.returncode == 2 and message in r.stderr and 'Traceback' not in r.stderr, r.stderr

def test_cli_rejects_unknown_settings(tmp_path, refs_dir, customize_cli):
    r = customize_cli('customize', '--refs', str(refs_dir), '--out', str(tmp_path/'o'), '--set', 'detla=1')
    assert r.returncode == 2 and "unknown setting(s) ['detla']" in r.stderr

# --- bad input of `magicid customize`: exit code, first line, no traceback, nothing written ---------------------------
def _refused(r, out, first):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines and lines[0].startswith(first), r.stderr[-2000:]
    assert 'Traceback' not in r.stderr and not Path(out).exists(), r.stderr[-2000:]

@pytest.mark.parametrize('setting, first', [
    ('initial.lr=abc', "magicid customize: error: initial.lr='abc' must be a finite number > 0"),
    ('hpo.beta=-1', "magicid customize: error: hpo.beta=-1 must be a finite number > 0"),
    ('selection.delta=0', "magicid customize: error: selection.delta=0: expected a number > 0"),
    ('frames=0', "magicid customize: error: frames=0 must be an int >= 1"),
    ('delta=1.5', "magicid customize: error: unknown setting(s) ['delta']; valid: scale, backbone_dir"),
    ('initial.seed=3', "magicid customize: error: unknown setting(s) ['initial.seed']"),
])
def test_an_invalid_setting_exits_2_before_anything_is_written(setting, first, backbone_dir, refs_dir, tmp_path, customize_cli):
    out = tmp_path/'o'
    r = customize_cli('customize', '--refs', str(refs_dir), '--out', str(out), '--scale', 'smoke', '--no-progress',
             '--set', f'backbone_dir={backbone_dir}', '--set', setting)
    _refused(r, out, first)

def test_bad_prompts_and_backbone_folder_exit_2(backbone_dir, refs_dir, tmp_path, customize_cli):
    r = customize_cli('customize', '--refs', str(refs_dir), '--out', str(tmp_path/'o'), '--scale', 'smoke', '--prompts', str(tmp_path/'none.txt'),
             '--set', f'backbone_dir={backbone_dir}')
    _refused(r, tmp_path/'o', f"magicid customize: error: prompts_file={str(tmp_path/'none.txt')!r}")
    (tmp_path/'p.txt').write_text('someone walks on a beach\n')
    r = customize_cli('customize', '--refs', str(refs_dir), '--out', str(tmp_path/'o'), '--scale', 'smoke', '--prompts', str(tmp_path/'p.txt'),
             '--set', f'backbone_dir={backbone_dir}', '--set', 'repository.n_prompts=1')
    _refused(r, tmp_path/'o', "magicid customize: error: prompt 'someone walks on a beach': no 'a person'")
    r = customize_cli('customize', '--refs', str(refs_dir), '--out', str(tmp_path/'o'), '--scale', 'smoke', '--set', f'backbone_dir={tmp_path/"nobb"}')
    _refused(r, tmp_path/'o', f"magicid customize: error: backbone_dir={str(tmp_path/'nobb')!r}: no such folder")

def test_references_without_a_face_are_refused_by_name(refs_dir, tmp_path, customize_cli):
    "The scale's face detector (the shipped tiny one at smoke) finds no face in a plain grey image: exit 2, the file named."
    d = tmp_path/'refs'; d.mkdir()
    for f in Path(refs_dir).iterdir(): (d/f.name).write_bytes(f.read_bytes())
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(d/'grey.png')
    r = customize_cli('customize', '--refs', str(d), '--out', str(tmp_path/'o'), '--scale', 'smoke')
    _refused(r, tmp_path/'o', "magicid customize: error: refs: no face found in 1 of 4 reference images: grey.png; "
                              "give photos with one clearly visible face")
    one = tmp_path/'one'; one.mkdir(); (one/'grey.png').write_bytes((d/'grey.png').read_bytes())
    _refused(customize_cli('customize', '--refs', str(one), '--out', str(tmp_path/'o'), '--scale', 'smoke'), tmp_path/'o',
             "magicid customize: error: refs: no face found in 1 of 1 reference images: grey.png")

def test_check_refs_runs_before_anything_is_written(refs_dir, tmp_path, monkeypatch, capsys):
    seen = []
    def no_face(refs, names, cfg):
        seen.append(list(names)); raise ValueError(f"refs: no face found in {names[0]}")
    monkeypatch.setattr(customize, 'check_refs', no_face)
    assert customize.main(['customize', '--refs', str(refs_dir), '--out', str(tmp_path/'o'), '--scale', 'smoke']) == 2
    assert seen == [['0.png', '1.png', '2.png']] and not (tmp_path/'o').exists()
    assert capsys.readouterr().err.startswith('magicid customize: error: refs: no face found in 0.png')

def test_unloading_the_initial_adapter_restores_the_base_exactly(backbone_dir):
    pipe = load_backbone(backbone_dir)
    a = pipe(['a person nods'], steps=2, seed=3, progress=False)
    with torch.no_grad():
        for p in add_lora(pipe, 4): p.add_(0.1)
    assert not np.array_equal(pipe(['a person nods'], steps=2, seed=3, progress=False), a)
    pipe.transformer.unload_lora()
    np.testing.assert_array_equal(pipe(['a person nods'], steps=2, seed=3, progress=False), a)

def test_the_repository_bar_moves_per_video(backbone_dir, refs_dir, tmp_path, monkeypatch):
    from magicid import repository, rewards
    steps = []
    class Bar:
        def __init__(self, total=None, **kw): self.total = total
        def update(self, n=1): steps.append(n)
        def close(self): pass
    monkeypatch.setattr(repository, 'tqdm', Bar)
    refs = world.reference_images(world.sample_identities('dev', 1, 3)[0], 2, 0)
    rc = repository.RepositoryConfig(n_prompts=2, n_t=3, n_s=2, sample_steps=1, batch_size=8)
    pipe = load_backbone(backbone_dir); add_lora(pipe, 2)                     # V_s: the same model, its adapter disabled
    repository.build_repository(pipe, refs, repository.load_prompts(n=2), tmp_path, rc, rewards.tiny_rewarder(refs))
    assert steps == [1]*7

# --- kill -9 in each stage, run again: the same pairs, metrics and LoRA as an uninterrupted run -------------------------
def _kill_args(backbone_dir, refs_dir, out):
    sets = {'backbone_dir': backbone_dir, 'initial.steps': 30, 'save_every': 2, 'repository.n_prompts': 2, 'repository.n_t': 8,
            'repository.n_s': 2, 'repository.sample_steps': 2, 'repository.batch_size': 2, 'selection.delta': 0.01,
            'selection.tau': 10.0, 'selection.n_fronts': 3, 'hpo.steps': 16, 'hpo.lr': 1e-3, 'n_samples': 1}
    return [MAGICID, 'customize', '--refs', str(refs_dir), '--out', str(out), '--scale', 'smoke', '--no-progress',
            *[a for k, v in sets.items() for a in ('--set', f'{k}={v}')]]

def _result(out):
    run = json.loads((out/'run.json').read_text())
    return (out/'pairs.json').read_bytes(), run['hpo_final'], load_file(out/'lora'/'pytorch_lora_weights.safetensors')

def test_killed_in_each_stage_and_run_again_gives_the_same_run(backbone_dir, refs_dir, tmp_path):
    import signal, time
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(_kill_args(backbone_dir, refs_dir, tmp_path/'a'), capture_output=True, text=True, env=env)
    assert r.returncode == 0 and '%|' not in r.stderr and 'resuming' not in r.stdout, r.stderr[-3000:]   # --no-progress: no bar at all
    assert 'magicid customize: done (' in r.stdout and 'over 1 session(s)' in r.stdout, r.stdout[-500:]
    pairs_a, final_a, lora_a = _result(tmp_path/'a')
    # stage: (the file whose appearance says the stage has saved something, the file that says it has ended, resume lines)
    stages = {'initial': ('initial_lora/state.pt', 'repository', ['initial LoRA: resuming from step']),
              'repository': ('repository/index.jsonl', 'pairs.json', ['initial LoRA: resuming from step 30', 'repository: resuming with']),
              'hpo': ('hpo/stage1/state.pt', 'lora', ['repository: resuming with', 'HPO: resuming from step'])}
    for name, (saved, ended, lines) in stages.items():
        out = tmp_path/name
        p = subprocess.Popen(_kill_args(backbone_dir, refs_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        t0 = time.time()
        while not (out/saved).exists() and p.poll() is None and time.time() - t0 < 300: time.sleep(0.01)
        p.send_signal(signal.SIGKILL); p.wait()
        assert p.returncode == -signal.SIGKILL and not (out/ended).exists(), f'{name}: not killed within its stage'
        r = subprocess.run(_kill_args(backbone_dir, refs_dir, out), capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert all(any(l.startswith(w) for l in r.stdout.splitlines()) for w in lines), (name, r.stdout)
        pairs, final, lora = _result(out)
        assert pairs == pairs_a and final == final_a, name
        assert lora.keys() == lora_a.keys() and all(np.array_equal(lora[k].numpy(), lora_a[k].numpy()) for k in lora), name


def test_references_of_another_size_are_fitted_to_the_backbone(backbone_dir, tmp_path):
    "Photos larger than the backbone's frames (and not square) are centre-cropped and resized before training, said in one line."
    d = tmp_path/'big'; d.mkdir()
    for i, im in enumerate(world.reference_images(world.sample_identities('dev', 1, 3)[0], 3, 0, size=64)):
        Image.fromarray(np.concatenate([im[:, :8], im, im[:, -8:]], 1)).save(d/f'{i}.png')   # 64×80
    lines = []
    rec = customize.customize(d, tmp_path/'run', _cfg(backbone_dir), progress=False, log=lines.append)
    assert any('refs: 80×64 images cropped and resized to the backbone\'s 32×32' in l for l in lines), lines
    from magicid.repository import load_row_video
    rows = [json.loads(l) for l in (tmp_path/'run'/'repository'/'index.jsonl').read_text().splitlines()]
    v_id = [load_row_video(tmp_path/'run'/'repository', r) for r in rows if r['source'] == 'id']   # the references, inflated
    assert v_id and all(v.shape[1:3] == (32, 32) for v in v_id)


def test_the_scale_names_the_initial_recipe_once(tmp_path, monkeypatch):
    "init_lr and init_rank of a scale file reach the initial LoRA only; unset, the shared lr stays."
    import shutil, yaml
    from magicid import core
    from magicid.customize import CustomizeConfig
    for f in (core.repo_root()/'nbs'/'params').glob('*.yaml'): shutil.copy(f, tmp_path/f.name)
    d = yaml.safe_load((tmp_path/'smoke.yaml').read_text())
    monkeypatch.setenv('MAGICID_PARAMS_DIR', str(tmp_path))
    c = CustomizeConfig.from_scale('smoke')
    assert c.initial.lr == c.hpo.lr == d['settings']['lr']
    d['settings'] |= dict(init_lr=3e-4, init_rank=16)
    (tmp_path/'smoke.yaml').write_text(yaml.safe_dump(d))
    c = CustomizeConfig.from_scale('smoke')
    assert (c.initial.lr, c.hpo.lr, c.initial.rank, c.hpo.rank) == (3e-4, d['settings']['lr'], 16, customize.HPOConfig().rank)
    d['settings']['init_rank'] = 0
    (tmp_path/'smoke.yaml').write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match='init_rank=0 must be > 0'): CustomizeConfig.from_scale('smoke')
