"""The zero-shot ID adapter (nbs/18b_idadapter.ipynb): only the adapter trains, the loss falls, save → load gives the
same samples, a killed run resumes to the same weights, other references give other videos, bad inputs are refused."""
from dataclasses import asdict, replace
from pathlib import Path
import numpy as np
import pytest
import torch
from magicid import world
from magicid.identity import load_tiny_id_encoder
from magicid.idadapter import (ADAPTER_FILE, IDAdapter, IDAdapterConfig, check_consisid, id_embedding, id_tokens,
                               idadapter_generate, load_idadapter, save_idadapter, text_width, train_idadapter, training_pool)

SMALL = dict(n_identities=3, videos_per_identity=1, n_refs=2, frames=4, size=32, batch_size=2, n_tokens=2, hidden=16)
SAMPLE = dict(steps=2, cfg_scale=4.5, progress=False)
PROMPTS = ['a sks person waves wearing a red jacket in a forest', 'a sks person nods in a blue t-shirt on a beach']


@pytest.fixture(scope='module')
def enc(): return load_tiny_id_encoder('reward')


@pytest.fixture(scope='module')
def refs():
    return [world.reference_images(p, 2, k, size=32) for k, p in enumerate(world.sample_identities('dev', 2, 0))]


def _state(m): return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize('rank', [0, 2])
def test_only_the_adapter_trains(small_pipe, enc, rank):
    pipe = small_pipe(0)
    te, tr = _state(pipe.text_encoder), _state(pipe.transformer)
    ad, hist = train_idadapter(pipe, enc, IDAdapterConfig(**SMALL, steps=3, lora_rank=rank), progress=False, log=None)
    assert [h['step'] for h in hist] == [1, 2, 3] and all(np.isfinite(h['loss']) for h in hist)
    for k, v in pipe.text_encoder.state_dict().items(): assert torch.equal(v, te[k]), k
    after = pipe.transformer.state_dict()
    base = {k: v for k, v in after.items() if 'lora_' not in k}
    if not rank: assert set(base) == set(tr)
    for k, v in base.items():
        k0 = k.replace('.base_layer.', '.')                                  # peft wraps the attention's linear layers
        assert torch.equal(v, tr[k0]), k                                     # the backbone is bit-identical
    lora = {k: v for k, v in after.items() if 'lora_B' in k}
    assert bool(lora) == bool(rank)
    if rank: assert any(v.abs().sum() > 0 for v in lora.values())            # lora_B starts at 0: it moved


def test_loss_falls_on_a_tiny_problem(small_pipe, enc):
    "Two identities, one video each: the diffusion loss at fixed noise and times falls as the adapter (and LoRA) learn."
    pipe = small_pipe(0)
    cfg = IDAdapterConfig(**{**SMALL, 'n_identities': 2, 'batch_size': 2}, steps=60, lr=1e-2, lora_rank=4, id_drop=0.0)
    pool = training_pool(pipe, enc, cfg, progress=False)
    def fixed_loss(ad):
        losses = []
        with torch.no_grad():
            for s in range(8):
                with id_tokens(pipe, ad(pool['e'])):
                    losses.append(pipe.training_loss(pool['z'][:, 0], [p[0] for p in pool['prompts']],
                                                     generator=torch.Generator().manual_seed(s)).item())
        return np.mean(losses)
    torch.manual_seed(cfg.seed)
    start = fixed_loss(IDAdapter(pool['e'].shape[1], text_width(pipe), cfg.n_tokens, cfg.hidden))
    ad, hist = train_idadapter(pipe, enc, cfg, progress=False, log=None)
    end = fixed_loss(ad)
    assert end < 0.8*start, (start, end)


@pytest.mark.parametrize('rank', [0, 2])
def test_save_load_same_samples(small_pipe, enc, refs, tmp_path, rank):
    pipe = small_pipe(0)
    ad, _ = train_idadapter(pipe, enc, IDAdapterConfig(**SMALL, steps=2, lora_rank=rank), progress=False, log=None)
    f = save_idadapter(ad, tmp_path, pipe, rank)
    assert f == tmp_path/ADAPTER_FILE and sorted(p.name for p in tmp_path.iterdir()) == [ADAPTER_FILE]   # no temp files left
    v1 = idadapter_generate(pipe, ad, refs[0], PROMPTS, 3, enc, **SAMPLE)
    fresh = small_pipe(0)                                                    # a new process: a fresh backbone
    ad2 = load_idadapter(tmp_path, fresh)
    v2 = idadapter_generate(fresh, ad2, refs[0], PROMPTS, 3, enc, **SAMPLE)
    for a, b in zip(v1, v2): np.testing.assert_array_equal(a, b)
    if rank:
        with pytest.raises(ValueError, match='carries a rank-2 LoRA of the transformer; pass pipe='): load_idadapter(tmp_path)


def test_resume_after_kill(small_pipe, enc, tmp_path):
    class Killed(Exception): pass
    def kill_at_3(step, ad):
        if step == 3: raise Killed
    cfg = IDAdapterConfig(**SMALL, steps=5, save_every=2, lora_rank=2)
    pa = small_pipe(0); ad_a, log_a = train_idadapter(pa, enc, cfg, ckpt_dir=tmp_path/'a', progress=False, log=None)
    pb = small_pipe(0)
    with pytest.raises(Killed): train_idadapter(pb, enc, cfg, ckpt_dir=tmp_path/'b', progress=False, callback=kill_at_3, log=None)
    assert torch.load(tmp_path/'b'/'state.pt', weights_only=True)['step'] == 2
    lines, pc = [], small_pipe(0)                                            # the new process
    ad_c, log_c = train_idadapter(pc, enc, cfg, ckpt_dir=tmp_path/'b', progress=False, log=lines.append)
    assert lines == [f"zero-shot ID adapter: resuming from step 2 of {tmp_path/'b'/'state.pt'}"]
    assert log_c == log_a
    for k, v in ad_a.state_dict().items(): torch.testing.assert_close(ad_c.state_dict()[k], v, rtol=0, atol=0)
    for (n1, p1), (n2, p2) in zip(pa.transformer.named_parameters(), pc.transformer.named_parameters()):
        torch.testing.assert_close(p1, p2, rtol=0, atol=0, msg=lambda m: f'{n1}: {m}')
    with pytest.raises(ValueError, match=r"other settings \(n_tokens: 2 → 3\)"):
        train_idadapter(small_pipe(0), enc, replace(cfg, n_tokens=3), ckpt_dir=tmp_path/'b', progress=False, log=None)


def test_references_change_the_video(small_pipe, enc, refs):
    pipe = small_pipe(0)
    ad, _ = train_idadapter(pipe, enc, IDAdapterConfig(**SMALL, steps=2), progress=False, log=None)
    v0 = idadapter_generate(pipe, ad, refs[0], PROMPTS, 0, enc, **SAMPLE)
    v1 = idadapter_generate(pipe, ad, refs[1], PROMPTS, 0, enc, **SAMPLE)
    plain = pipe(PROMPTS, seed=0, **SAMPLE)
    assert all(v.shape == (pipe.default_frames, 32, 32, 3) and v.dtype == np.uint8 for v in v0)
    assert all((a != b).any() for a, b in zip(v0, v1))                       # other references, other videos
    assert all((a != b).any() for a, b in zip(v0, plain))                    # the tokens reach the transformer
    assert not np.allclose(id_embedding(enc, refs[0]), id_embedding(enc, refs[1]))


def test_bad_inputs(small_pipe, enc, refs, tmp_path):
    for kw, msg in [(dict(split='eval'), "IDAdapterConfig.split='eval' is not valid; choose one of: pretrain, instrument"),
                    (dict(split='dev'), "IDAdapterConfig.split='dev' is not valid"),
                    (dict(n_tokens=0), 'IDAdapterConfig.n_tokens=0 must be an int >= 1'),
                    (dict(lora_rank=-1), 'IDAdapterConfig.lora_rank=-1 must be an int >= 0'),
                    (dict(id_drop=1.5), 'IDAdapterConfig.id_drop=1.5 must be in [0, 1)'),
                    (dict(batch_size=2.5), 'IDAdapterConfig.batch_size=2.5 must be an int >= 1')]:
        with pytest.raises(ValueError, match=msg.replace('[', r'\[').replace('(', r'\(').replace(')', r'\)')): IDAdapterConfig(**kw)
    pipe = small_pipe(0)
    ad = IDAdapter(512, text_width(pipe), 2, 8)
    with pytest.raises(ValueError, match='refs'): idadapter_generate(pipe, ad, refs[0][:0], PROMPTS, 0, enc)
    with pytest.raises(ValueError, match=r'encoder: embeddings of 512 dims, the adapter takes 16'):
        idadapter_generate(pipe, IDAdapter(16, text_width(pipe), 2, 8), refs[0], PROMPTS, 0, enc)
    with pytest.raises(ValueError, match=r'tokens: expected \(B, N, 64\)'): id_tokens(pipe, torch.zeros(1, 2, 7))
    with pytest.raises(FileNotFoundError, match='no ID adapter'): load_idadapter(tmp_path)
    with pytest.raises(FileNotFoundError, match='no such folder'): check_consisid(tmp_path/'nothing')
    with pytest.raises(FileNotFoundError, match='missing model_index.json, transformer/config.json'): check_consisid(tmp_path)
