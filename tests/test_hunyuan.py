"""Integration tests of magicid.hunyuan: HunyuanVideo behind `load_backbone` (issue 28, item 4). One tiny random folder of
the real diffusers classes (HunyuanVideoTransformer3DModel, AutoencoderKLHunyuanVideo, LlamaModel, CLIPTextModel, their
tokenizers, FlowMatchEulerDiscreteScheduler), checked against diffusers' own `HunyuanVideoPipeline`: sampling in both
guidance modes, training and HPO steps with LoRA gradients, LoRA files diffusers loads, bf16, the text cache, offload,
and bad folders. Everything runs on a CPU in well under a minute."""
import json, shutil
import numpy as np
import pytest
import torch
from diffusers import HunyuanVideoPipeline
from magicid import backbone as B
from magicid import hunyuan as H
from magicid.hpo import HPOConfig, combine_loras, pair_forward, prepare_policy, train_hpo
from magicid.lora import LORA_FILE, add_lora, lora_disabled, save_lora

PROMPTS = ['a person nods wearing a red jacket in a forest', 'a sks person walks to the left on a beach']
KW = dict(num_frames=5, steps=2, height=32, width=32, seed=3, progress=False)
Z = 4                                                        # latent channels of the tiny VAE


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return H.write_random_hunyuan(tmp_path_factory.mktemp('hy')/'HunyuanVideo-tiny')


@pytest.fixture(scope='module')
def hv(folder):
    "diffusers' own pipeline on the folder: the reference."
    return HunyuanVideoPipeline.from_pretrained(folder)


@pytest.fixture
def pipe(folder):
    return B.load_backbone(folder)


def _diffusers_frames(hv, **kw):
    gens = [torch.Generator().manual_seed(KW['seed'] + i) for i in range(len(PROMPTS))]
    f = hv(PROMPTS, height=32, width=32, num_frames=5, num_inference_steps=2, output_type='np', generator=gens, **kw).frames
    return np.round(f*255).astype(int)


def _videos(n=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 5, 32, 32, 3), dtype=np.uint8)


def _perturb(params, scale=0.1):
    with torch.no_grad():
        for q in params: q.add_(scale*torch.randn_like(q))


# ---------------------------------------------------------------- loading and sampling

def test_load_backbone_dispatches_to_hunyuan(folder):
    p = B.load_backbone(folder)
    assert isinstance(p, H.HunyuanT2VPipeline) and isinstance(p, B.T2VPipeline)
    assert p.prediction == 'flow' and p.guidance_mode == 'embedded' and p.embedded_guidance == 1.0 and not p.strict_tokens
    assert (p.default_frames, p.default_size, p.max_text_len) == (61, 720, 256)        # Supp A's 61 frames; the model's 256 tokens
    assert p.latent_shape(2, 9, 32, 64) == (2, Z, 3, 4, 8)                                # ×4 time (4k+1), ×8 space
    with pytest.raises(ValueError, match=r'num_frames=6: with this VAE it must be 4k\+1'): p.latent_shape(1, 6, 32, 32)
    with pytest.raises(ValueError, match='height=24 must be a multiple of 16'): p.latent_shape(1, 5, 24, 32)
    with pytest.raises(ValueError, match='HunyuanVideo is a flow model'): B.load_backbone(folder, prediction='eps')


def test_embedded_sampling_is_diffusers_hunyuan_pipeline(pipe, hv):
    v = pipe(PROMPTS, cfg_scale=7.5, **KW)
    assert v.shape == (2, 5, 32, 32, 3) and v.dtype == np.uint8 and not np.array_equal(v[0], v[1])
    assert np.abs(v.astype(int) - _diffusers_frames(hv, guidance_scale=7.5)).max() <= 1       # same noise → same videos
    assert np.abs(v.astype(int) - _diffusers_frames(hv, guidance_scale=1.0)).max() > 1        # ... and g is what makes them
    np.testing.assert_array_equal(v, pipe(PROMPTS, cfg_scale=7.5, **KW))                     # seeded


def test_cfg_sampling_is_true_cfg_with_the_empty_prompt(pipe, hv):
    v = pipe(PROMPTS, cfg_scale=7.5, guidance_mode='cfg', **KW)
    assert v.shape == (2, 5, 32, 32, 3)
    ref = _diffusers_frames(hv, guidance_scale=1.0, true_cfg_scale=7.5, negative_prompt=[''] * 2)   # v∅ + s(v_c − v∅), g = 1
    assert np.abs(v.astype(int) - ref).max() <= 1
    assert not np.array_equal(v, pipe(PROMPTS, cfg_scale=7.5, **KW))                          # not the embedded reading
    pipe.guidance_mode = 'cfg'
    np.testing.assert_array_equal(v, pipe(PROMPTS, cfg_scale=7.5, **KW))                     # the pipeline's default mode
    with pytest.raises(ValueError, match='guidance_mode'): pipe(PROMPTS, guidance_mode='distilled', **KW)
    with pytest.raises(ValueError, match="needs guidance_mode='cfg'"):
        pipe(PROMPTS, guidance_mode='embedded', guidance_interval=(0.3, 1.0), **KW)


def test_latents_are_the_vae_posterior_mode_times_its_scaling_factor(pipe):
    vids = _videos()
    s = pipe.vae.config.scaling_factor
    assert s == pytest.approx(0.476986)                      # HunyuanVideo's VAE constant
    with torch.no_grad():
        lat = pipe.encode_videos(vids)
        raw = pipe.vae.encode(B.videos_to_tensor(vids)).latent_dist.mode()
        assert lat.shape == (2, Z, 2, 4, 4)
        torch.testing.assert_close(lat, raw*s)
        back, ref = pipe.decode(lat).astype(int), B.tensor_to_videos(pipe.vae.decode(raw).sample).astype(int)
        assert np.abs(back - ref).max() <= 1                     # z/s·s = z up to rounding


def test_cached_text_embeddings_equal_uncached(pipe):
    e = pipe.encode_prompt(PROMPTS)
    h, m, p = H.unpack_text(e, 16, 16)
    assert e.shape == (2, 257, 17) and h.shape == (2, 256, 16) and p.shape == (2, 16)
    assert m.sum(1).tolist() == [11, 11]                     # the prompt's words + <|eot_id|>, the template cropped
    c = pipe.encode_prompt(PROMPTS[::-1] + PROMPTS, cache=True)
    torch.testing.assert_close(c, torch.cat([e.flip(0), e]), rtol=0, atol=1e-6)
    assert set(pipe._text_cache) == set(PROMPTS)
    assert not torch.equal(pipe.encode_prompt(['a person waves']), e[:1])


# ---------------------------------------------------------------- training

def test_training_loss_gives_lora_gradients_also_with_checkpointing(folder):
    losses, grads = [], []
    for ckpt in (False, True):
        p = B.load_backbone(folder, gradient_checkpointing=ckpt)
        assert p.transformer.gradient_checkpointing == ckpt
        params = add_lora(p, rank=2)
        _perturb(params)
        p.transformer.train()
        loss = p.training_loss(_videos(), PROMPTS, generator=torch.Generator().manual_seed(0))
        loss.backward()
        assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in params)
        assert not any(q.grad is not None for n, q in p.transformer.named_parameters() if 'lora_' not in n)
        assert p.text_frozen()                               # both text encoders frozen: embeddings cached
        losses.append(loss.item()); grads.append(torch.cat([q.grad.flatten() for q in params]))
    assert np.isfinite(losses[0]) and losses[0] == pytest.approx(losses[1], rel=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_hpo_steps_and_combined_lora_load_in_diffusers(folder, tmp_path):
    p = B.load_backbone(folder)
    init = add_lora(p, rank=2, adapter_name='init'); _perturb(init)
    save_lora(p, tmp_path/'init', adapter_name='init')
    p = B.load_backbone(folder)
    prepare_policy(p, tmp_path/'init', rank=2)
    v = _videos(4, seed=1)
    pairs = [dict(prompt=PROMPTS[i % 2], win=v[i], lose=v[3 - i]) for i in range(2)]
    out = pair_forward(p, v[:1], v[1:2], PROMPTS[:1], torch.Generator().manual_seed(0))
    assert len(out) == 6 and all(o.shape == (1, Z, 2, 4, 4) for o in out)
    torch.testing.assert_close(out[0], out[2])                # a zero-delta adapter: policy = reference
    hist = train_hpo(p, pairs, HPOConfig(steps=2, batch_size=2, rank=2, lr=1e-2, beta=10.0), progress=False, log=None)
    assert [r['step'] for r in hist] == [1, 2] and all(np.isfinite(r['loss']) and r['grad_norm'] > 0 for r in hist)
    torch.manual_seed(0)
    x, t, e = torch.randn(1, Z, 2, 4, 4), torch.tensor([0.7]), p.encode_prompt(PROMPTS[:1])
    with torch.no_grad():
        tuned = p.predict(x, t, e)
        with lora_disabled(p): ref = p.predict(x, t, e)
    assert (tuned - ref).abs().max() > 1e-6                   # the HPO steps moved the policy
    combine_loras(tmp_path/'init', p, tmp_path/'combined')
    hv = HunyuanVideoPipeline.from_pretrained(folder)
    hv.load_lora_weights(tmp_path/'combined', weight_name=LORA_FILE)
    h, m, pooled = H.unpack_text(e, 16, 16)
    with torch.no_grad():
        got = hv.transformer(x, timestep=t*1000, encoder_hidden_states=h, encoder_attention_mask=m, pooled_projections=pooled,
                             guidance=torch.tensor([1000.0])).sample
    torch.testing.assert_close(got, tuned, rtol=1e-4, atol=1e-5)


def test_lora_saved_by_magicid_loads_in_diffusers_and_changes_output(folder, hv, tmp_path):
    p = B.load_backbone(folder)
    params = add_lora(p, rank=2)
    assert {n.split('.lora_A')[0].rsplit('.', 1)[-1] for n, _ in p.transformer.named_parameters() if 'lora_A' in n} >= {'to_q', 'to_k', 'to_v'}
    _perturb(params)
    out = save_lora(p, tmp_path)
    assert (out/LORA_FILE).is_file()
    fresh = HunyuanVideoPipeline.from_pretrained(folder)
    before = fresh(PROMPTS, height=32, width=32, num_frames=5, num_inference_steps=2, output_type='np',
                   generator=[torch.Generator().manual_seed(i) for i in range(2)]).frames
    fresh.load_lora_weights(tmp_path, weight_name=LORA_FILE)
    after = fresh(PROMPTS, height=32, width=32, num_frames=5, num_inference_steps=2, output_type='np',
                  generator=[torch.Generator().manual_seed(i) for i in range(2)]).frames
    assert np.abs(after - before).max() > 1e-3                # the LoRA changes diffusers' output ...
    ours = p(PROMPTS, cfg_scale=6.0, **dict(KW, seed=0))
    assert np.abs(ours.astype(int) - np.round(after*255).astype(int)).max() <= 1   # ... to what magicid samples with it


# ---------------------------------------------------------------- precision, offload, bad folders

def test_bf16_load(folder):
    p = B.load_backbone(folder, dtype=torch.bfloat16)
    assert p.dtype == torch.bfloat16 and p.transformer.dtype == torch.bfloat16
    assert p.text_encoder.dtype == torch.bfloat16 and p.vae.dtype == torch.float32
    e = p.encode_prompt(PROMPTS[:1])
    with torch.no_grad(): v = p.predict(torch.randn(1, Z, 2, 4, 4), torch.tensor([0.5]), e)
    assert v.dtype == torch.bfloat16 and torch.isfinite(v.float()).all()
    assert p([PROMPTS[0]], **KW).shape == (1, 5, 32, 32, 3)


def test_offload_keeps_text_encoders_and_vae_on_the_cpu(folder):
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    p = B.load_backbone(folder, device=dev, offload=True)
    assert p.offload and p.device.type == dev
    assert {m.device.type for m in (p.text_encoder, p.text_encoder_2, p.vae)} == {'cpu'}
    assert p.encode_prompt(PROMPTS).device.type == dev
    v = p(PROMPTS, cfg_scale=7.5, **KW)
    assert v.shape == (2, 5, 32, 32, 3)
    if dev == 'cuda':                                        # on a GPU: the same videos as without offload (up to kernels)
        assert np.abs(v.astype(int) - B.load_backbone(folder, device=dev)(PROMPTS, cfg_scale=7.5, **KW).astype(int)).max() <= 2


def test_non_video_folders_give_clear_errors(folder, tmp_path):
    img = tmp_path/'image-model'
    shutil.copytree(folder, img)
    cfg = json.loads((img/'transformer'/'config.json').read_text()); cfg['_class_name'] = 'FluxTransformer2DModel'
    (img/'transformer'/'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'FluxTransformer2DModel' is not supported; expected WanTransformer3DModel .* or HunyuanVideoTransformer3DModel"):
        B.load_backbone(img)
    empty = tmp_path/'empty'; (empty/'unet').mkdir(parents=True)
    with pytest.raises(ValueError, match='not a text-to-video folder'): B.load_backbone(empty)
    partial = tmp_path/'no-clip'
    shutil.copytree(folder, partial); shutil.rmtree(partial/'text_encoder_2')
    with pytest.raises(ValueError, match=r"missing \['text_encoder_2'\]"): B.load_backbone(partial)
    with pytest.raises(ValueError, match='not a packed HunyuanVideo text embedding'):
        B.load_backbone(folder).predict(torch.randn(1, Z, 2, 4, 4), torch.tensor([0.5]), torch.randn(1, 8, 16))


def test_rehearsal_writer_gives_a_loadable_hunyuan_folder(tmp_path):
    from magicid.rehearse import write_backbone
    p = B.load_backbone(write_backbone(tmp_path/'bb', 'hunyuanvideo'))
    assert isinstance(p, H.HunyuanT2VPipeline)
