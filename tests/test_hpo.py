"""Unit tests of magicid.hpo beyond the notebook's own checks (tiny backbones, 4-frame 16×16 videos)."""
import math, os, subprocess, sys, textwrap
from pathlib import Path
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
import magicid.hpo as hpo
from magicid.hpo import HPOConfig, hpo_loss, pair_forward, prepare_policy, combine_loras, train_hpo, denoising_error
from magicid.backbone import BackboneConfig, build_tiny
from magicid.lora import add_lora, save_lora, load_lora, lora_disabled, LORA_FILE
from magicid.pretrain import render_dataset
from magicid.dpo import diffusion_dpo_margin
from magicid.world import inflate

ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Tiny models run fastest on one thread (more only adds contention on a shared CPU); restored afterwards."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def tiny(prediction='flow', seed=0): return build_tiny(BackboneConfig.small(prediction=prediction), seed)

@pytest.fixture(scope='module')
def pairs():
    v, _, c = render_dataset(12, 0, frames=4, size=16, progress=False)
    motion = np.abs(v.astype(np.float32) - v[:, :1]).mean((1, 2, 3, 4))
    return [dict(prompt=c[i], win=v[i], lose=inflate(v[i][:1], 4)[0]) for i in np.argsort(-motion)[:3]]

@pytest.fixture(scope='module')
def init_lora(tmp_path_factory):
    "A random initial LoRA with α ≠ r stored in diffusers metadata (scale 3), and the LoRA model's pipe."
    from diffusers import WanPipeline
    from peft.utils import get_peft_model_state_dict
    p = tiny(); ps = add_lora(p, rank=2, alpha=6.0)
    with torch.no_grad():
        for q in ps: q.add_(0.1*torch.randn(q.shape, generator=torch.Generator().manual_seed(q.numel())))
    d = tmp_path_factory.mktemp('init')
    cfg = p.transformer.peft_config['default']
    meta = dict(r=cfg.r, lora_alpha=cfg.lora_alpha, target_modules=sorted(cfg.target_modules))
    WanPipeline.save_lora_weights(d, transformer_lora_layers=get_peft_model_state_dict(p.transformer, adapter_name='default'),
                                  weight_name=LORA_FILE, transformer_lora_adapter_metadata=meta)
    return d, p

def probe(pipe, seed=0):
    "A fixed noisy input (x_t, t, text embedding) for output comparisons."
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(2, 3, 4, 16, 16, generator=g), torch.rand(2, generator=g)
    return x, t, pipe.encode_prompt(['a person nods wearing a red jacket in a forest']*2)

# --- the loss ---

@pytest.mark.parametrize('shape', [(3,), (2, 5), (4, 3, 2, 4, 4)])
def test_hpo_loss_hand_formula(shape):
    g = torch.Generator().manual_seed(len(shape))
    pw, pl, rw, rl, tw, tl = (torch.randn(shape, generator=g) for _ in range(6))
    loss, st = hpo_loss(pw, pl, rw, rl, tw, tl, beta=3.0)
    e = lambda a, b: ((a - b)**2).reshape(len(a), -1).mean(1)
    m = -1.5*((e(pw, tw) - e(rw, tw)) - (e(pl, tl) - e(rl, tl)))
    assert math.isclose(loss.item(), torch.nn.functional.softplus(-m).mean().item(), rel_tol=1e-6)
    assert math.isclose(st['rewards/margins'], m.mean().item(), rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(st['rewards/chosen'], (-1.5*(e(pw, tw) - e(rw, tw))).mean().item(), rel_tol=1e-5, abs_tol=1e-6)
    assert st['rewards/accuracies'] == (m > 0).float().mean().item()
    assert all(isinstance(v, float) for v in st.values())

def test_hpo_loss_reuses_dpo_margin():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, 6, generator=g) for _ in range(6)]
    errs = [denoising_error(p, t) for p, t in zip(xs[:4], xs[4:] + xs[4:])]
    _, st = hpo_loss(*xs, beta=11.0)
    assert math.isclose(st['rewards/margins'], diffusion_dpo_margin(*errs, 11.0).mean().item(), rel_tol=1e-6)

def test_ties_and_signs():
    z, o = torch.zeros(4, 8), torch.ones(4, 8)
    loss, st = hpo_loss(o, o, o, o, z, z, 100.0)                          # policy = reference
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-7) and st['implicit_acc'] == 0.5 and st['rewards/accuracies'] == 0
    loss, st = hpo_loss(0.5*o, o, o, o, z, z, 100.0)                      # better on the winner only
    assert st['rewards/margins'] > 0 and st['rewards/accuracies'] == 1 and st['implicit_acc'] == 1 and loss.item() < math.log(2)
    loss, st = hpo_loss(o, 0.5*o, o, o, z, z, 100.0)                      # better on the loser only
    assert st['rewards/margins'] < 0 and st['rewards/accuracies'] == 0 and loss.item() > math.log(2)

def test_reference_gets_no_gradient():
    rw = torch.randn(2, 3, requires_grad=True); pw = torch.randn(2, 3, requires_grad=True)
    loss, _ = hpo_loss(pw, torch.randn(2, 3), rw, torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3), 5.0)
    loss.backward()
    assert rw.grad is None and pw.grad is not None

@pytest.mark.parametrize('bad, msg', [
    (dict(pred_l=torch.zeros(2, 4)), 'pred_l: shape (2, 4) differs'),
    (dict(ref_pred_w=torch.zeros(3, 3)), 'ref_pred_w: shape (3, 3) differs'),
    (dict(target_w=[0.0]), 'target_w: expected a torch.Tensor'),
    (dict(beta=-2.0), 'beta=-2.0 must be a finite number > 0'),
    (dict(beta=float('inf')), 'beta=inf'),
])
def test_hpo_loss_validation(bad, msg):
    args = dict(pred_w=torch.zeros(2, 3), pred_l=torch.zeros(2, 3), ref_pred_w=torch.zeros(2, 3), ref_pred_l=torch.zeros(2, 3),
                target_w=torch.zeros(2, 3), target_l=torch.zeros(2, 3), beta=1.0)
    with pytest.raises((ValueError, TypeError), match=None) as ei: hpo_loss(**{**args, **bad})
    assert msg in str(ei.value)

def test_gradient_step_lowers_loss():
    g = torch.Generator().manual_seed(5)
    rw, rl, tw, tl = (torch.randn(3, 10, generator=g) for _ in range(4))
    qw, ql = torch.nn.Parameter(rw.clone()), torch.nn.Parameter(rl.clone())
    opt = torch.optim.SGD([qw, ql], lr=1e-2)
    losses = []
    for _ in range(3):
        loss, _ = hpo_loss(qw, ql, rw, rl, tw, tl, 10.0); losses.append(loss.item())
        opt.zero_grad(); loss.backward(); opt.step()
    assert losses[0] == pytest.approx(math.log(2)) and losses[2] < losses[1] < losses[0]

# --- the reference: fused initial LoRA; the policy: zero-delta adapter ---

def test_prepare_policy_fuses_the_initial_lora(init_lora):
    d, lora_model = init_lora
    pol = tiny(); ps = prepare_policy(pol, d, rank=3)
    x, t, e = probe(pol)
    with torch.no_grad():
        want = lora_model.predict(x, t, e)
        with lora_disabled(pol): ref = pol.predict(x, t, e)
        out = pol.predict(x, t, e)
        base = tiny().predict(x, t, e)
    torch.testing.assert_close(ref, want, rtol=1e-5, atol=1e-5)           # α/r = 3 applied when fusing
    torch.testing.assert_close(out, ref, rtol=0, atol=0)                  # B = 0
    assert (want - base).abs().max() > 1e-2
    assert len(ps) == 16 and all(p.requires_grad for p in ps)
    assert [n for n, p in pol.transformer.named_parameters() if p.requires_grad] == [n for n, p in pol.transformer.named_parameters() if '.hpo.' in n]
    with pytest.raises(ValueError, match=r"already has LoRA adapters \['hpo'\]"): prepare_policy(pol, d)

@pytest.mark.parametrize('prediction', ['flow', 'eps'])
def test_pair_forward_at_init_is_log2(prediction, pairs):
    pol = tiny(prediction); prepare_policy(pol, rank=2)
    win, lose = np.stack([p['win'] for p in pairs]), np.stack([p['lose'] for p in pairs])
    outs = pair_forward(pol, win, lose, [p['prompt'] for p in pairs], torch.Generator().manual_seed(0))
    assert all(o.shape == (3, 3, 4, 16, 16) for o in outs)
    loss, st = hpo_loss(*outs, beta=5000.0)
    assert abs(st['rewards/margins']) < 1e-6 and math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    assert outs[0].requires_grad and not outs[2].requires_grad

def test_pair_forward_shares_noise_and_t(pairs):
    "The same video as winner and loser gives the same prediction and target; the targets of a flow pipe are ε − x0."
    pol = tiny(); prepare_policy(pol, rank=2)
    v = np.stack([pairs[0]['win']]*2)
    pw, pl, rw, rl, tw, tl = pair_forward(pol, v, v, [pairs[0]['prompt']]*2, torch.Generator().manual_seed(4))
    torch.testing.assert_close(pw, pl, rtol=0, atol=0); torch.testing.assert_close(tw, tl, rtol=0, atol=0)
    g = torch.Generator().manual_seed(4); x0 = pol.encode_videos(v)
    torch.testing.assert_close(tw, torch.randn(x0.shape, generator=g) - x0)

# --- one LoRA file ---

def test_combine_loras_equals_policy(init_lora, tmp_path):
    from diffusers import WanPipeline
    d, _ = init_lora
    pol = tiny(); ps = prepare_policy(pol, d, rank=3)
    with torch.no_grad():
        for q in ps: q.add_(0.05*torch.randn(q.shape, generator=torch.Generator().manual_seed(q.numel() + 1)))
    x, t, e = probe(pol)
    with torch.no_grad(): want = pol.predict(x, t, e)
    out = combine_loras(d, pol, tmp_path/'combined')
    sd = load_file(out/LORA_FILE)
    assert sd['transformer.blocks.0.attn2.to_v.lora_A.weight'].shape[0] == 2 + 3 and not any('alpha' in k for k in sd)
    with torch.no_grad():
        torch.testing.assert_close(load_lora(tiny(), out).predict(x, t, e), want, rtol=1e-5, atol=1e-5)
        fresh = tiny()
        wp = WanPipeline(tokenizer=fresh.tokenizer, text_encoder=fresh.text_encoder, vae=None, scheduler=fresh.scheduler,
                         transformer=fresh.transformer)
        wp.load_lora_weights(out, weight_name=LORA_FILE)
        torch.testing.assert_close(wp.transformer(x, timestep=t*1000, encoder_hidden_states=e).sample, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pol.predict(x, t, e), want, rtol=0, atol=0)   # the policy is left as it was
    assert sorted(pol.transformer.peft_config) == ['hpo'] and all(q.requires_grad for q in ps)
    combine_loras(d, pol, tmp_path/'combined')                             # overwrites in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ['combined']

# --- configuration and pairs ---

@pytest.mark.parametrize('kw, msg', [
    (dict(beta=0), 'HPOConfig.beta=0 must be a finite number > 0'), (dict(lr=-1.0), 'HPOConfig.lr=-1.0'),
    (dict(max_grad_norm=0.0), 'HPOConfig.max_grad_norm=0.0'), (dict(weight_decay=float('nan')), 'HPOConfig.weight_decay=nan'),
    (dict(steps=0), 'HPOConfig.steps=0 must be an int >= 1'), (dict(batch_size=True), 'HPOConfig.batch_size=True'),
    (dict(rank=0), 'HPOConfig.rank=0'), (dict(save_every='10'), "HPOConfig.save_every='10'"), (dict(seed=-1), 'HPOConfig.seed=-1'),
    (dict(warmup=1.5), 'HPOConfig.warmup=1.5'), (dict(adapter_name=None), 'HPOConfig.adapter_name=None'),
])
def test_config_validation(kw, msg):
    with pytest.raises(ValueError) as ei: HPOConfig(**kw)
    assert msg in str(ei.value)

def test_config_defaults():
    c = HPOConfig()
    assert (c.lr, c.weight_decay, c.steps, c.beta, c.batch_size) == (2e-5, 1e-4, 5000, 5000.0, 2)

def test_pairs_validation(pairs):
    pol = tiny(); prepare_policy(pol, rank=2)
    cfg = HPOConfig(steps=1)
    with pytest.raises(ValueError, match='pairs: the list is empty — no preference pairs were selected; lower delta / raise tau'):
        train_hpo(pol, [], cfg, progress=False)
    cases = [([pairs[0], dict(pairs[1], lose=pairs[1]['lose'][:, :8])], 'pairs[1]: win (4, 16, 16, 3) and lose (4, 8, 16, 3) differ'),
             ([pairs[0], dict(pairs[1], win=pairs[1]['win'][:2], lose=pairs[1]['lose'][:2])], "pairs[1]: shape (2, 16, 16, 3) differs from pairs[0]'s"),
             ([dict(pairs[0], win=pairs[0]['win'].astype(np.float32))], "pairs[0]['win']: expected a uint8 array"),
             ([dict(prompt='', win=pairs[0]['win'], lose=pairs[0]['lose'])], "pairs[0]['prompt']"),
             ([dict(win=pairs[0]['win'])], "pairs[0]: expected a dict with keys")]
    for bad, msg in cases:
        with pytest.raises(ValueError) as ei: train_hpo(pol, bad, cfg, progress=False)
        assert msg in str(ei.value)
    with pytest.raises(ValueError, match="call prepare_policy"): train_hpo(tiny(), pairs, cfg, progress=False)

# --- training: both backbone kinds, resume, non-finite loss ---

@pytest.mark.parametrize('prediction', ['eps', 'flow'])
def test_trains_both_forms(prediction, pairs):
    pol = tiny(prediction); ps = prepare_policy(pol, rank=2)
    w0 = [p.detach().clone() for p in ps]
    log = train_hpo(pol, pairs, HPOConfig(steps=4, lr=1e-3, warmup=2), progress=False, log_every=2)
    assert [r['step'] for r in log] == [2, 4] and [r['lr'] for r in log] == [1e-3, 1e-3]
    assert all(math.isfinite(r[k]) for r in log for k in ('loss', 'grad_norm', 'rewards/margins'))
    assert any(not torch.equal(a, b) for a, b in zip(w0, ps))
    assert not pol.transformer.training

RESUME = textwrap.dedent('''
    import sys, pickle, torch
    from pathlib import Path
    from magicid.hpo import HPOConfig, prepare_policy, train_hpo
    from magicid.backbone import BackboneConfig, build_tiny
    pairs, init, ck, out = pickle.load(open(sys.argv[1], 'rb'))
    pipe = build_tiny(BackboneConfig.small(), 0)
    ps = prepare_policy(pipe, init, rank=3)
    with torch.no_grad():
        for p in ps: p.normal_()
    log = train_hpo(pipe, pairs, HPOConfig(steps=6, lr=1e-3, save_every=3, rank=3), ckpt_dir=ck, progress=False)
    torch.save({n: p.detach() for n, p in pipe.transformer.named_parameters() if p.requires_grad}, out)
''')

class Killed(Exception): pass

def test_kill_and_resume_in_a_new_process(pairs, init_lora, tmp_path):
    import pickle
    d, _ = init_lora
    cfg = HPOConfig(steps=6, lr=1e-3, save_every=3, rank=3)
    a = tiny(); prepare_policy(a, d, rank=3)
    log_a = train_hpo(a, pairs, cfg, ckpt_dir=tmp_path/'a', progress=False)
    b = tiny(); prepare_policy(b, d, rank=3)
    def kill(step, rec):
        if step == 4: raise Killed
    with pytest.raises(Killed): train_hpo(b, pairs, cfg, ckpt_dir=tmp_path/'b', progress=False, callback=kill)
    assert torch.load(tmp_path/'b'/'state.pt', weights_only=True)['step'] == 3
    args = tmp_path/'args.pkl'; pickle.dump((pairs, d, tmp_path/'b', tmp_path/'resumed.pt'), open(args, 'wb'))
    env = {**os.environ, 'OMP_NUM_THREADS': str(torch.get_num_threads())}
    r = subprocess.run([sys.executable, '-c', RESUME, str(args)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = torch.load(tmp_path/'resumed.pt', weights_only=True)
    want = {n: p.detach() for n, p in a.transformer.named_parameters() if p.requires_grad}
    assert set(resumed) == set(want) and len(want) == 16
    for n in want: torch.testing.assert_close(resumed[n], want[n], msg=lambda m: f'{n}: {m}')
    st_a, st_b = (torch.load(tmp_path/k/'state.pt', weights_only=True) for k in 'ab')
    assert st_b['step'] == 6 and [r['step'] for r in st_b['log']] == list(range(1, 7))
    for ra, rb in zip(log_a, st_b['log']): assert ra['loss'] == pytest.approx(rb['loss'], rel=1e-5)
    with pytest.raises(ValueError, match=r"holds a HPO run with other settings \(lr: 0.001 → 0.002\)"):
        train_hpo(a, pairs, HPOConfig(steps=6, lr=2e-3, save_every=3, rank=3), ckpt_dir=tmp_path/'a', progress=False)

def test_resume_when_finished_is_a_no_op(pairs, tmp_path):
    pol = tiny(); prepare_policy(pol, rank=2)
    cfg = HPOConfig(steps=2, lr=1e-3)
    log = train_hpo(pol, pairs, cfg, ckpt_dir=tmp_path, progress=False)
    w = [p.detach().clone() for p in pol.transformer.parameters() if p.requires_grad]
    assert train_hpo(pol, pairs, cfg, ckpt_dir=tmp_path, progress=False) == log
    assert all(torch.equal(a, b) for a, b in zip(w, [p for p in pol.transformer.parameters() if p.requires_grad]))

def test_nan_loss_keeps_the_checkpoint(pairs, tmp_path, monkeypatch):
    pol = tiny(); prepare_policy(pol, rank=2)
    cfg = HPOConfig(steps=8, lr=1e-3, save_every=2)
    real, calls = hpo.hpo_loss, []
    def nan_at_call_5(*a, **k):
        loss, st = real(*a, **k); calls.append(1)
        if len(calls) == 5: loss, st = loss*float('nan'), {**st, 'loss': float('nan')}
        return loss, st
    files = {}
    def snap(step, rec):
        if step == 4: files.update({f: (tmp_path/f).read_bytes() for f in ('state.pt', f'adapter/{LORA_FILE}')})
    monkeypatch.setattr(hpo, 'hpo_loss', nan_at_call_5)
    with pytest.raises(FloatingPointError) as ei: train_hpo(pol, pairs, cfg, ckpt_dir=tmp_path, progress=False, callback=snap)
    assert 'at step 5' in str(ei.value) and f'last good checkpoint in {tmp_path} (step 4) is kept unchanged' in str(ei.value)
    assert len(files) == 2 and all((tmp_path/f).read_bytes() == b for f, b in files.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ['adapter', 'state.pt']
    monkeypatch.setattr(hpo, 'hpo_loss', real)                            # a fresh run resumes from step 4 and finishes
    pol2 = tiny(); prepare_policy(pol2, rank=2)
    log = train_hpo(pol2, pairs, cfg, ckpt_dir=tmp_path, progress=False)
    assert [r['step'] for r in log] == list(range(1, 9))

def test_nan_without_ckpt_dir(pairs, monkeypatch):
    pol = tiny(); prepare_policy(pol, rank=2)
    monkeypatch.setattr(hpo, 'hpo_loss', lambda *a, **k: (torch.tensor(float('inf'), requires_grad=True), {'loss': float('inf')}))
    with pytest.raises(FloatingPointError, match=r'at step 1; no checkpoint was written yet \(no ckpt_dir\)'):
        train_hpo(pol, pairs, HPOConfig(steps=2), progress=False)
