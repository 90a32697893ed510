"""The Magic-Me baseline (nbs/18_magicme.ipynb): the ID module trains only its K token rows on the masked loss, saves,
loads and resumes; the 3D Gaussian noise prior has the covariance it claims; bad inputs are refused by name."""
import numpy as np
import pytest
import torch
from magicid import magicme, world
from magicid.magicme import (MagicMeConfig, add_id_tokens, correlated_noise, frame_covariance, id_rows_trained, latent_masks,
                             load_id_tokens, magicme_generate, masked_loss, noise_prior, reference_masks, train_id_tokens, word_row)
from magicid.dreambooth import reference_latents

SIZE = 32   # BackboneConfig.small draws 32×32


@pytest.fixture(scope='module')
def person():
    "A dev identity's 3 references at 32 px and their person masks from the renderer."
    ident = world.sample_identities('dev', 1, 3)[0]
    refs = world.reference_images(ident, 3, 7, size=SIZE)
    return refs, magicme.world_reference_masks(ident, refs, 7)


def _cfg(**kw):
    return MagicMeConfig(**dict(n_tokens=2, steps=6, lr=5e-2, batch_size=2, save_every=2, sample_steps=2) | kw)


def _fixed_loss(pipe, refs, masks, cfg):
    "The mask loss at 6 fixed noise draws."
    x0 = reference_latents(pipe, refs, cfg)[:, 0]
    m = latent_masks(masks.astype(np.float32), x0.shape[-2:])[:, 0]
    with torch.no_grad():
        return np.mean([masked_loss(pipe, x0, m, [cfg.prompt]*len(x0), torch.Generator().manual_seed(s)).item() for s in range(6)])


def test_only_the_id_rows_train_and_the_loss_falls(small_pipe, person, tmp_path):
    refs, masks = person
    pipe, cfg = small_pipe(seed=2), _cfg(steps=30)
    tr0 = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    te0 = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    n0 = te0['shared.weight'].shape[0]
    ids = add_id_tokens(pipe, cfg.tokens)
    init = word_row(pipe, cfg.init_word).repeat(cfg.n_tokens, 1)
    magicme.write_id_rows(pipe, ids, init)
    before = _fixed_loss(pipe, refs, masks, cfg)
    hist = train_id_tokens(pipe, refs, masks, cfg, tmp_path/'ckpt', progress=False, log=None)
    assert [h['step'] for h in hist] == list(range(1, 31))
    after = _fixed_loss(pipe, refs, masks, cfg)
    assert after < before, (before, after)
    W = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(W[:n0], te0['shared.weight'])                                      # every other row bit-identical
    assert not torch.allclose(W[ids], init)                                               # the ID rows moved
    for k, v in pipe.text_encoder.state_dict().items():
        if 'shared' not in k and 'embed_tokens' not in k: assert torch.equal(v, te0[k]), k
    for k, v in pipe.transformer.state_dict().items(): assert torch.equal(v, tr0[k]), k
    assert all(p.requires_grad for p in pipe.transformer.parameters())                     # flags restored after training
    assert (tmp_path/'ckpt'/magicme.ID_FILE).is_file()


def test_zero_mask_gives_zero_loss_and_gradient(small_pipe, person):
    refs, masks = person
    pipe, cfg = small_pipe(seed=2), _cfg()
    ids = add_id_tokens(pipe, cfg.tokens)
    x0 = reference_latents(pipe, refs, cfg)[:2, 0]
    def grad(mask):
        rows = torch.nn.Parameter(torch.randn(2, pipe.text_encoder.config.d_model, generator=torch.Generator().manual_seed(0)))
        with id_rows_trained(pipe, ids, rows):
            loss = masked_loss(pipe, x0, mask, [cfg.prompt]*2, torch.Generator().manual_seed(1))
            loss.backward()
        return loss.item(), rows.grad
    shape = (2, 1, 1, *x0.shape[-2:])
    loss0, g0 = grad(torch.zeros(shape))
    assert loss0 == 0.0 and g0.abs().sum().item() == 0.0
    lm = latent_masks(masks.astype(np.float32), x0.shape[-2:])[:2, 0]
    _, gm = grad(lm)
    _, g1 = grad(torch.ones(shape))
    assert gm.abs().sum() > 0 and not torch.allclose(gm, g1)


def test_save_load_round_trip_samples_identically(small_pipe, person, tmp_path):
    refs, masks = person
    cfg = _cfg(steps=4)
    a = small_pipe(seed=4)
    train_id_tokens(a, refs, masks, cfg, tmp_path/'ckpt', progress=False, log=None)
    b = small_pipe(seed=4)
    assert load_id_tokens(b, tmp_path/'ckpt'/magicme.ID_FILE) == cfg.tokens
    p = [f"a {' '.join(cfg.tokens)} person walks to the left"]
    va, vb = a(p, steps=2, progress=False, seed=3), b(p, steps=2, progress=False, seed=3)
    assert np.array_equal(va, vb)
    c = small_pipe(seed=4); add_id_tokens(c, cfg.tokens)                                # untrained rows: other videos
    assert not np.array_equal(va, c(p, steps=2, progress=False, seed=3))
    with pytest.raises(FileNotFoundError, match='no ID module'): load_id_tokens(b, tmp_path/'nothing.safetensors')


def test_resume_after_a_kill_matches_an_uninterrupted_run(small_pipe, person, tmp_path, monkeypatch):
    refs, masks = person
    cfg = _cfg(steps=6, save_every=2)
    full = small_pipe(seed=5)
    train_id_tokens(full, refs, masks, cfg, tmp_path/'full', progress=False, log=None)
    calls, real = [0], magicme.masked_loss
    def dies(*a, **k):
        calls[0] += 1
        if calls[0] == 5: raise KeyboardInterrupt('killed')
        return real(*a, **k)
    monkeypatch.setattr(magicme, 'masked_loss', dies)
    with pytest.raises(KeyboardInterrupt): train_id_tokens(small_pipe(seed=5), refs, masks, cfg, tmp_path/'run', progress=False, log=None)
    monkeypatch.setattr(magicme, 'masked_loss', real)
    said = []
    resumed = small_pipe(seed=5)
    hist = train_id_tokens(resumed, refs, masks, cfg, tmp_path/'run', progress=False, log=said.append)
    assert said and 'resuming from step 4' in said[0]
    assert [h['step'] for h in hist] == list(range(1, 7))
    ids = add_id_tokens(full, cfg.tokens)
    assert torch.equal(full.text_encoder.get_input_embeddings().weight[ids], resumed.text_encoder.get_input_embeddings().weight[ids])
    with pytest.raises(ValueError, match='lr: 0.05 → 0.01'):
        train_id_tokens(small_pipe(seed=5), refs, masks, _cfg(steps=6, lr=1e-2), tmp_path/'run', progress=False, log=None)


def test_generate_resumes_and_uses_the_noise_prior(small_pipe, person, tmp_path):
    refs, masks = person
    cfg = _cfg(steps=2, gamma=0.5)
    prompts = ['a sks person walking to the left in a living room']
    v1 = magicme_generate(small_pipe(seed=6), refs, prompts, tmp_path, cfg, seed=1, masks=masks)
    said = []
    v2 = magicme_generate(small_pipe(seed=6), refs, prompts, tmp_path, cfg, seed=1, masks=masks, log=said.append)
    assert 'resuming from step 2' in said[0] and np.array_equal(v1[0], v2[0])            # no training again, same videos
    v3 = magicme_generate(small_pipe(seed=6), refs, prompts, tmp_path, MagicMeConfig(**{**cfg.__dict__, 'gamma': 0.0}), seed=1, masks=masks)
    assert not np.array_equal(v1[0], v3[0])                                              # γ changes the initial noise
    assert v1[0].shape == (8, SIZE, SIZE, 3)


@pytest.mark.parametrize('gamma', [0.05, 0.5, 0.9])
def test_noise_prior_statistics(gamma):
    e = correlated_noise((3000, 2, 6, 4, 4), gamma, torch.Generator().manual_seed(0))    # (N, C, F, H, W)
    x = e.permute(0, 1, 3, 4, 2).reshape(-1, 6).double()                                 # samples × frames
    assert torch.allclose(x.var(0), torch.ones(6, dtype=torch.float64), atol=0.03)       # each frame N(0, 1)
    assert torch.allclose(x.mean(0), torch.zeros(6, dtype=torch.float64), atol=0.02)
    assert torch.allclose(torch.corrcoef(x.T), frame_covariance(6, gamma), atol=0.015)   # corr = γ^|m−n|
    assert abs(torch.corrcoef(x.T)[0, 2].item() - gamma**2) < 0.015                       # not equicorrelated (noise_mix's)


def test_noise_prior_plugs_into_the_sampler(small_pipe):
    pipe = small_pipe(seed=0)
    with noise_prior(pipe, 1.0):
        x = pipe.noise((8, 8, 4, 4), torch.Generator().manual_seed(0))
        assert torch.equal(x[:, 0], x[:, 7])                                               # γ = 1: one noise for every frame
    assert 'noise' not in vars(pipe)
    with noise_prior(pipe, 0.0): v0 = pipe(['a person jumps up and down'], steps=2, progress=False)
    assert np.array_equal(v0, pipe(['a person jumps up and down'], steps=2, progress=False))
    mixed = small_pipe(seed=0, noise_mix=1.0)
    with pytest.raises(ValueError, match='noise_mix=1.0'):
        with noise_prior(mixed, 0.5): pass


def test_bad_inputs_are_refused_by_name(small_pipe, person, tmp_path):
    refs, masks = person
    with pytest.raises(ValueError, match=r'MagicMeConfig.n_tokens=0 must be an int >= 1'): MagicMeConfig(n_tokens=0)
    with pytest.raises(ValueError, match=r'MagicMeConfig.gamma=1.5 must be in \[0, 1\]'): MagicMeConfig(gamma=1.5)
    with pytest.raises(ValueError, match=r'MagicMeConfig.gamma=-0.2'): MagicMeConfig(gamma=-0.2)
    with pytest.raises(ValueError, match=r'gamma=2 must be in \[0, 1\]'): correlated_noise((1, 3, 2, 2), 2)
    with pytest.raises(ValueError, match=r'masks: expected shape \(3, 32, 32\).*got \(3, 16, 16\)'):
        train_id_tokens(small_pipe(), refs, masks[:, ::2, ::2], _cfg(), progress=False, log=None)
    with pytest.raises(ValueError, match=r'masks: values must be in \[0, 1\]'): reference_masks(refs, _cfg(), masks*2.0)
    with pytest.raises(ValueError, match="needs a face detector"): reference_masks(refs, _cfg(mask_source='face_box'))
    with pytest.raises(ValueError, match="no word 'sks'"):
        magicme_generate(small_pipe(), refs, ['a person jumps'], tmp_path, _cfg(), masks=masks)
    with pytest.raises(ValueError, match='use fewer tokens'):
        magicme_generate(small_pipe(), refs, ['a sks person ' + 'jumps '*25], tmp_path, _cfg(), masks=masks)
    with pytest.raises(ValueError, match="init_word='xyzzy'"): train_id_tokens(small_pipe(), refs, masks, _cfg(init_word='xyzzy'), log=None)


def test_wan_random_backbone(tmp_path, person):
    "Wan2.1's classes (UMT5 encoder, 🤗 tokenizer, video VAE), tiny random weights: tokens added, rows trained, the rest untouched."
    from magicid.backbone import load_backbone
    from magicid.rehearse import write_random_wan
    refs, masks = person
    pipe = load_backbone(write_random_wan(tmp_path/'wan'))
    emb0 = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    tr0 = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    cfg = _cfg(steps=3)
    train_id_tokens(pipe, refs, masks, cfg, tmp_path/'ckpt', progress=False, log=None)
    W = pipe.text_encoder.get_input_embeddings().weight.detach()
    ids = add_id_tokens(pipe, cfg.tokens)
    assert torch.equal(W[:emb0.shape[0]][torch.arange(emb0.shape[0]) < ids.min()], emb0[:ids.min()])
    assert not torch.allclose(W[ids], word_row(pipe, cfg.init_word).repeat(2, 1))
    for k, v in pipe.transformer.state_dict().items(): assert torch.equal(v, tr0[k]), k
    v = pipe([f"a {' '.join(cfg.tokens)} person"], num_frames=5, height=32, width=32, steps=2, progress=False)
    assert v.shape == (1, 5, 32, 32, 3)
