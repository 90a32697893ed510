"""`magicid customize` end to end on a tiny random backbone: outputs, resume after a kill during HPO, and bad input."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file
from magicid import world, customize, hpo, selection
from magicid.backbone import build_tiny, BackboneConfig, save_backbone, load_backbone, load_lora

MAGICID = str(Path(sys.executable).parent/'magicid')

@pytest.fixture(scope='module')
def backbone_dir(tmp_path_factory):
    return str(save_backbone(build_tiny(BackboneConfig(layers=1, head_dim=8, ffn_dim=32), seed=1), tmp_path_factory.mktemp('bb')/'backbone'))

@pytest.fixture(scope='module')
def refs_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('refs')
    for i, im in enumerate(world.reference_images(world.sample_identities('dev', 1, 3)[0], 3, 0)): Image.fromarray(im).save(d/f'{i}.png')
    return d

def _cfg(backbone_dir, **kw):
    base = dict(backbone_dir=backbone_dir, init_steps=4, hpo_steps=4, save_every=2, n_prompts=2, n_t=4, n_s=2, sample_steps=2,
                delta=0.01, tau=10.0, n_fronts=3, n_samples=1, hpo_lr=1e-3)
    return customize.CustomizeConfig.from_scale('smoke', **(base | kw))

def _cli(*args):
    return subprocess.run([MAGICID, *args], capture_output=True, text=True)

def test_customize_writes_a_loadable_lora_and_a_record(backbone_dir, refs_dir, tmp_path):
    rec = customize.customize(refs_dir, tmp_path/'run', _cfg(backbone_dir, resample_vt=True), progress=False, log=lambda *a: None)
    out = tmp_path/'run'
    run = json.loads((out/'run.json').read_text())
    assert set(run['seconds']) >= {'initial_lora', 'repository', 'selection', 'hpo', 'output', 'total'}
    assert run['versions']['torch'] and run['config']['delta'] == 0.01
    assert rec['pairs']['id'] + rec['pairs']['dy'] == len(json.loads((out/'pairs.json').read_text())['id'] + json.loads((out/'pairs.json').read_text())['dy'])
    assert len(list((out/'samples').glob('*.mp4'))) == 1
    p2 = json.loads((out/'pairs_stage2.json').read_text())                     # resample_vt: stage 2's own pairs
    assert run['config']['resample_vt'] and rec['pairs']['dy_stage2'] == len(p2['dy']) and (out/'repository_stage2'/'index.jsonl').exists()
    fresh = load_lora(load_backbone(backbone_dir), out/'lora')                  # the output LoRA on the original backbone
    a = fresh(['a sks person nods wearing a red jacket in a forest'], steps=2, seed=5, progress=False)
    b = rec['pipe'](['a sks person nods wearing a red jacket in a forest'], steps=2, seed=5, progress=False)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1                     # = the trained policy (up to rounding)

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
    with pytest.raises(ValueError, match='delta: 0.01 → 5.0'): customize.check_resumable(tmp_path, _cfg(backbone_dir, delta=5.0))

def test_thresholds_that_select_no_pair_name_delta_and_tau(backbone_dir, refs_dir, tmp_path):
    r = _cli('customize', '--refs', str(refs_dir), '--out', str(tmp_path/'x'), '--scale', 'smoke', '--no-progress',
             '--set', f'backbone_dir={backbone_dir}', '--set', 'init_steps=2', '--set', 'n_t=0', '--set', 'n_s=1', '--set', 'n_prompts=1',
             '--set', 'sample_steps=1', '--set', 'delta=100', '--set', 'top_k=1', '--set', 'n_fronts=1', '--set', 'tau=0.0')
    assert r.returncode == 1 and 'delta' in r.stderr and 'tau' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]

def test_empty_repository_is_an_error():
    with pytest.raises(ValueError, match='rows'): selection.hybrid_pairs([], 1.0, 1.0)

@pytest.mark.parametrize('make, message', [
    (lambda d: None, 'no image'),
    (lambda d: (d/'notes.txt').write_text('hello'), 'notes.txt'),
    (lambda d: [Image.new('RGB', (32, 32)).save(d/'a.png'), Image.new('RGB', (48, 32)).save(d/'b.png')], 'size'),
])
def test_bad_reference_folders(make, message, tmp_path):
    d = tmp_path/'refs'; d.mkdir(); make(d)
    r = _cli('customize', '--refs', str(d), '--out', str(tmp_path/'o'), '--scale', 'smoke')
    assert r.returncode == 2 and message in r.stderr and 'Traceback' not in r.stderr, r.stderr

def test_cli_rejects_unknown_settings(tmp_path, refs_dir):
    r = _cli('customize', '--refs', str(refs_dir), '--out', str(tmp_path/'o'), '--set', 'detla=1')
    assert r.returncode == 2 and "unknown setting(s) ['detla']" in r.stderr
