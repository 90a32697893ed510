"""Integration tests of magicid.backbone, magicid.lora and magicid.pretrain: the real-model code path (a diffusers `WanPipeline` folder with a VAE, on tiny
random configs), the precision / checkpointing / text-cache options, LoRA plumbing against diffusers' own loaders,
bad inputs, the save/load round trip and the shipped tiny backbone. Everything is tiny and runs on a CPU."""
import json
import numpy as np
import pytest
import torch
from magicid import backbone as B
from magicid.core import repo_root, verify_weights
from magicid.lora import LORA_FILE, LORA_TARGETS, add_lora, lora_disabled, load_lora, save_lora
from magicid.pretrain import PretrainConfig, pretrain, render_dataset
from magicid.rehearse import WAN_LATENT_MEAN as LAT_MEAN, WAN_LATENT_STD as LAT_STD, random_wan_pipeline

PROMPT = 'a person nods wearing a red jacket in a forest'
Z = 4                                                        # latent channels of the tiny VAE


# ---------------------------------------------------------------- tiny random components of a real Wan2.1 folder

def _wan_pipeline(scheduler: str = 'unipc', seed: int = 0):
    "diffusers' `WanPipeline` of tiny random components (same classes and folder layout as Wan2.1-T2V-1.3B-Diffusers)."
    return random_wan_pipeline(scheduler, seed)


@pytest.fixture(scope='module')
def wan_dirs(tmp_path_factory):
    "Two saved tiny Wan folders: Wan2.1's own UniPC scheduler, and flow-matching Euler."
    out = {}
    for s in ('unipc', 'euler'):
        d = tmp_path_factory.mktemp(f'wan-{s}')/'Wan2.1-T2V-tiny-Diffusers'
        _wan_pipeline(s).save_pretrained(d)
        out[s] = d
    return out


@pytest.fixture(scope='module')
def wan(wan_dirs):
    return B.load_backbone(wan_dirs['unipc'])


def _videos(n=2, frames=5, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, frames, size, size, 3), dtype=np.uint8)


def _inputs(pipe, n=2, frames=8, size=32):
    torch.manual_seed(1)
    x = torch.randn(n, 3, frames, size, size)
    return x, pipe.sample_t(n), pipe.encode_prompt([PROMPT]*n)


# ---------------------------------------------------------------- the real-model code path (tiny random Wan2.1 folder)

def test_wan_folder_loads_with_its_vae_and_scheduler(wan_dirs):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler
    p = B.load_backbone(wan_dirs['unipc'])
    assert isinstance(p.vae, AutoencoderKLWan) and isinstance(p.scheduler, UniPCMultistepScheduler)
    assert isinstance(B.load_backbone(wan_dirs['euler']).scheduler, FlowMatchEulerDiscreteScheduler)
    assert not p.strict_tokens and p.max_text_len == 512 and p.prediction == 'flow'       # a real model's defaults
    assert (p.default_frames, p.default_size) == (33, 480)
    assert p.latent_shape(3, 9, 16, 32) == (3, Z, 3, 2, 4)                                 # ×4 time, ×8 space
    p.encode_prompt(['a person florbs'])                   # a real tokenizer is not strict: unknown words are not an error here


@pytest.mark.parametrize('sched', ['unipc', 'euler'])
def test_wan_folder_samples_uint8_videos(wan_dirs, sched):
    p = B.load_backbone(wan_dirs[sched])
    kw = dict(num_frames=5, steps=2, height=16, width=16, cfg_scale=4.5, seed=3, progress=False)
    v = p([PROMPT, 'a person waves'], **kw)
    assert v.shape == (2, 5, 16, 16, 3) and v.dtype == np.uint8
    assert v.std() > 0 and not np.array_equal(v[0], v[1])
    np.testing.assert_array_equal(v, p([PROMPT, 'a person waves'], **kw))       # seeded: the same videos again
    with pytest.raises(ValueError, match=r'num_frames=6: with this VAE it must be 4k\+1 \(e.g. 5\)'):
        p([PROMPT], num_frames=6, steps=1, height=16, width=16, progress=False)


def test_wan_latents_use_the_vae_statistics(wan):
    vids = _videos()
    with torch.no_grad():
        lat = wan.encode_videos(vids)
        raw = wan.vae.encode(B.videos_to_tensor(vids)).latent_dist.mode()
    assert lat.shape == (2, Z, 2, 2, 2)
    mean, std = torch.tensor(LAT_MEAN).view(1, -1, 1, 1, 1), torch.tensor(LAT_STD).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(lat, (raw - mean)/std)
    torch.testing.assert_close(wan._denormalize_latents(lat), raw)
    with torch.no_grad(): dec = wan.decode(lat)
    assert dec.shape == vids.shape and dec.dtype == np.uint8


def test_wan_training_loss_is_finite_and_trains_the_transformer(wan):
    wan.transformer.zero_grad(set_to_none=True)
    loss = wan.training_loss(_videos(), [PROMPT, ''], generator=torch.Generator().manual_seed(0))   # '' = a dropped caption
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    g = [q.grad for q in wan.transformer.parameters() if q.grad is not None]
    assert len(g) == len(list(wan.transformer.parameters()))
    assert all(torch.isfinite(x).all() for x in g) and sum(x.abs().sum() for x in g) > 0
    wan.transformer.zero_grad(set_to_none=True); wan.text_encoder.zero_grad(set_to_none=True); wan.vae.zero_grad(set_to_none=True)


def test_wan_training_does_not_backprop_into_the_vae(wan):
    wan.vae.zero_grad(set_to_none=True)
    wan.training_loss(_videos(), [PROMPT]*2, generator=torch.Generator().manual_seed(0)).backward()
    try: assert all(q.grad is None for q in wan.vae.parameters()), 'the VAE got gradients'
    finally: wan.transformer.zero_grad(set_to_none=True); wan.text_encoder.zero_grad(set_to_none=True); wan.vae.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- options: precision, gradient checkpointing, text cache

def test_bf16_load_casts_transformer_and_text_encoder_not_vae(wan_dirs):
    p = B.load_backbone(wan_dirs['unipc'], dtype=torch.bfloat16)
    assert p.transformer.patch_embedding.weight.dtype == torch.bfloat16
    assert p.text_encoder.dtype == torch.bfloat16 and p.vae.dtype == torch.float32
    assert p.transformer.scale_shift_table.dtype == torch.float32      # diffusers keeps Wan's norms/modulation in fp32


def test_bf16_load_samples_and_trains(wan_dirs):
    p = B.load_backbone(wan_dirs['unipc'], dtype=torch.bfloat16)
    v = p([PROMPT], num_frames=5, steps=2, height=16, width=16, progress=False)
    assert v.shape == (1, 5, 16, 16, 3)
    assert torch.isfinite(p.training_loss(_videos(), [PROMPT]*2))
    assert p.dtype == torch.bfloat16


def test_bf16_via_to_samples_and_trains_on_cpu(wan_dirs):
    "The working way to bf16 today: load in fp32, then T2VPipeline.to(dtype=...) (casts the transformer only)."
    p = B.load_backbone(wan_dirs['unipc']).to(dtype=torch.bfloat16)
    assert p.dtype == torch.bfloat16 and p.text_encoder.dtype == torch.float32 and p.vae.dtype == torch.float32
    v = p([PROMPT], num_frames=5, steps=1, height=16, width=16, progress=False)
    assert v.shape == (1, 5, 16, 16, 3) and v.dtype == np.uint8
    loss = p.training_loss(_videos(), [PROMPT]*2, generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert p.transformer.proj_out.weight.grad.dtype == torch.bfloat16 and torch.isfinite(p.transformer.proj_out.weight.grad).all()


def test_gradient_checkpointing_gives_the_same_gradients(wan_dirs):
    "No option of T2VPipeline: diffusers' own `transformer.enable_gradient_checkpointing()` works through training_loss."
    p = B.load_backbone(wan_dirs['unipc'])
    p.transformer.train()
    calls = []
    p.transformer.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))   # pre: recomputation may stop early
    with torch.no_grad(): vids = p.encode_videos(_videos())  # training_loss also takes encoded latents

    def grads():
        p.transformer.zero_grad(set_to_none=True)
        loss = p.training_loss(vids, [PROMPT]*2, generator=torch.Generator().manual_seed(0))
        loss.backward()
        return loss.detach(), [q.grad.clone() for q in p.transformer.parameters()]

    l0, g0 = grads(); n0 = len(calls); calls.clear()
    p.transformer.enable_gradient_checkpointing()
    assert p.transformer.is_gradient_checkpointing
    l1, g1 = grads()
    assert n0 == 1 and len(calls) == 2                      # checkpointed: the block is run again in backward
    torch.testing.assert_close(l1, l0)
    for a, b in zip(g1, g0): torch.testing.assert_close(a, b)


def test_cached_text_embeddings(wan):
    calls = []
    h = wan.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        wan._text_cache.clear()
        a = wan.encode_prompt([PROMPT], cache=True)
        b = wan.encode_prompt([PROMPT], cache=True)          # from the cache: the encoder is not run again
        assert len(calls) == 1 and not b.requires_grad and torch.equal(a.detach(), b)
        assert torch.equal(wan.encode_prompt([PROMPT], cache=True), b) and len(calls) == 1   # per-prompt cache
        c = wan.encode_prompt([PROMPT])                     # cache=False (the default): recomputed, differentiable
        assert len(calls) == 2 and c.requires_grad
        torch.testing.assert_close(c.detach(), b)
        wan.encode_prompt(['a person waves'], cache=True)
        assert len(calls) == 3 and len(wan._text_cache) == 2
    finally:
        h.remove(); wan._text_cache.clear()


# ---------------------------------------------------------------- LoRA plumbing

@pytest.fixture(scope='module')
def tiny_dir(small_backbone_dir):
    return small_backbone_dir


@pytest.fixture(scope='module')
def lora(tiny_dir, tmp_path_factory):
    "A tiny backbone with a perturbed ('trained') LoRA, its outputs with and without it, and the saved adapter."
    p = B.load_backbone(tiny_dir)
    x, t, e = _inputs(p)
    with torch.no_grad(): base = p.predict(x, t, e)
    params = add_lora(p, rank=4)
    with torch.no_grad():
        for q in params: q.add_(0.1*torch.randn_like(q))
        tuned = p.predict(x, t, e)
    d = save_lora(p, tmp_path_factory.mktemp('lora'))
    return dict(pipe=p, params=params, x=x, t=t, e=e, base=base, tuned=tuned, dir=d)


def test_add_lora_trains_only_the_adapter(lora, small_pipe):
    p, params = lora['pipe'], lora['params']
    trainable = [n for n, q in p.transformer.named_parameters() if q.requires_grad]
    assert len(trainable) == len(params) == 2*len(LORA_TARGETS)*len(p.transformer.blocks)*2   # A and B, attn1 and attn2
    assert all('lora_' in n and '.default.' in n for n in trainable)
    assert not any(q.requires_grad for q in p.text_encoder.parameters())
    with pytest.raises(ValueError, match='rank=0 must be >= 1'): add_lora(small_pipe(), rank=0)


def test_lora_disabled_is_exactly_the_base_model(lora):
    p = lora['pipe']
    with torch.no_grad():
        assert not torch.allclose(p.predict(lora['x'], lora['t'], lora['e']), lora['base'])
        with lora_disabled(p): assert torch.equal(p.predict(lora['x'], lora['t'], lora['e']), lora['base'])
        assert torch.equal(p.predict(lora['x'], lora['t'], lora['e']), lora['tuned'])       # re-enabled on exit


def test_save_lora_then_load_lora_gives_the_same_model(lora, tiny_dir):
    from safetensors.torch import load_file
    keys = list(load_file(lora['dir']/LORA_FILE))
    assert keys and all(k.startswith('transformer.') for k in keys)
    fresh = load_lora(B.load_backbone(tiny_dir), lora['dir'])
    with torch.no_grad(): torch.testing.assert_close(fresh.predict(lora['x'], lora['t'], lora['e']), lora['tuned'], rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match='no pytorch_lora_weights.safetensors'): load_lora(fresh, tiny_dir)


def test_saved_lora_loads_with_diffusers_own_loaders(lora, tiny_dir):
    from diffusers import WanPipeline
    x, t, e = lora['x'], lora['t'], lora['e']
    tr = B.load_backbone(tiny_dir).transformer
    tr.load_lora_adapter(lora['dir'], weight_name=LORA_FILE, prefix='transformer')
    with torch.no_grad():
        torch.testing.assert_close(tr(x, timestep=t*1000, encoder_hidden_states=e).sample, lora['tuned'], rtol=1e-5, atol=1e-6)
    fresh = B.load_backbone(tiny_dir)
    wp = WanPipeline(tokenizer=fresh.tokenizer, text_encoder=fresh.text_encoder, vae=None, scheduler=fresh.scheduler,
                     transformer=fresh.transformer)
    wp.load_lora_weights(lora['dir'], weight_name=LORA_FILE)
    with torch.no_grad():
        torch.testing.assert_close(wp.transformer(x, timestep=t*1000, encoder_hidden_states=e).sample, lora['tuned'], rtol=1e-5, atol=1e-6)


def test_wan_lora_round_trips_through_diffusers_wan_pipeline(wan_dirs, tmp_path):
    "LoRA on the real-layout (VAE) pipeline, read back by `WanPipeline.from_pretrained(folder).load_lora_weights`."
    from diffusers import WanPipeline
    p = B.load_backbone(wan_dirs['unipc'])
    params = add_lora(p, rank=2)
    with torch.no_grad():
        for q in params: q.add_(0.1*torch.randn_like(q))
    torch.manual_seed(0)
    x, t, e = torch.randn(1, Z, 2, 2, 2), p.sample_t(1), p.encode_prompt([PROMPT])
    with torch.no_grad(): tuned = p.predict(x, t, e)
    save_lora(p, tmp_path)
    wp = WanPipeline.from_pretrained(wan_dirs['unipc'])
    wp.load_lora_weights(tmp_path, weight_name=LORA_FILE)
    with torch.no_grad():
        torch.testing.assert_close(wp.transformer(x, timestep=t*1000, encoder_hidden_states=e).sample, tuned, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bad inputs

@pytest.fixture(scope='module')
def tiny(tiny_dir):
    return B.load_backbone(tiny_dir)


def test_empty_prompt_list_and_empty_prompt(tiny):
    with pytest.raises(ValueError, match='prompts: give at least one prompt'): tiny([], progress=False)
    with pytest.raises(ValueError, match='prompts: the list is empty'): tiny.encode_prompt([])
    with pytest.raises(ValueError, match='prompts: the list is empty'): tiny.training_loss(np.zeros((1, 8, 32, 32, 3), np.uint8), [])
    for bad in ([''], [PROMPT, '  ']):                      # sampling an empty prompt is refused ...
        with pytest.raises(ValueError, match='prompts: a prompt is empty'): tiny(bad, steps=1, progress=False)
    e = tiny.encode_prompt([''])                            # ... but it is CFG's unconditional input and a dropped caption
    assert e.shape == (1, 24, tiny.config.text_dim) and torch.equal(e, torch.zeros_like(e))
    assert torch.isfinite(tiny.training_loss(np.zeros((2, 8, 32, 32, 3), np.uint8), ['', PROMPT]))


def test_unknown_words_are_named(tiny):
    with pytest.raises(ValueError, match=r"prompt 'a person florbs wearing a Zorg': unknown words \['florbs', 'zorg'\]"):
        tiny.encode_prompt([PROMPT, 'a person florbs wearing a Zorg'])
    with pytest.raises(ValueError, match='florbs'): tiny(['a person florbs'], steps=1, progress=False)
    with pytest.raises(ValueError, match='florbs'): tiny.training_loss(np.zeros((1, 8, 32, 32, 3), np.uint8), ['a person florbs'])
    tiny.encode_prompt(['A SKS person, nods!'])             # case and punctuation are not unknown words


@pytest.mark.parametrize('kw,msg', [(dict(num_frames=0), 'num_frames=0 must be an int >= 1'),
                                    (dict(num_frames=-1), 'num_frames=-1 must be an int >= 1'),
                                    (dict(num_frames=2.5), 'num_frames=2.5 must be an int >= 1'),
                                    (dict(steps=0), 'steps=0 must be >= 1')])
def test_bad_sampling_arguments(tiny, kw, msg):
    with pytest.raises(ValueError, match=msg): tiny([PROMPT], progress=False, **kw)


def test_height_not_divisible_by_the_patch_is_named(tiny):
    with pytest.raises(ValueError, match='height'): tiny([PROMPT], steps=1, height=30, width=30, progress=False)


def test_frames_not_divisible_by_the_temporal_patch_are_named(small_pipe):
    p = small_pipe(patch=(2, 4, 4))
    with pytest.raises(ValueError, match=r"num_frames=7 must be a multiple of 2 \(the transformer's temporal patch 2\)"):
        p([PROMPT], num_frames=7, steps=1, progress=False)
    assert p([PROMPT], num_frames=6, steps=1, progress=False).shape == (1, 6, 32, 32, 3)


def test_compiled_pretraining_is_the_eager_run(tmp_path, small_pipe):
    """`pretrain(compile=True)` (tiny.yaml's retrain) trains the same weights as eager and checkpoints the plain module.

    Compiled kernels sum floats in another order (it differs by instruction set: one weight of 1024 was 2.2e-5 off on an
    Intel Xeon), and AdamW turns a near-zero gradient's rounding into a full-size step, so single weights are no
    measure. The update θ − θ0 of the whole transformer is: float reordering moved it by 9e-4 of its norm (AMD, 3 steps),
    and the tolerance is 1e-2, while a change of the math does not fit in it — the loss with frame_diff_weight 0.1
    instead of 0 (one extra gradient term) moves the update by 0.31 of its norm and the loss curve by 18%, a gradient of
    the wrong sign by 2.0 and 2.8%. The loss curves agree to 1.5e-7 (tolerance 1e-4)."""
    cfg = dict(patch=(2, 4, 4))
    v, _, c = render_dataset(8, 0, progress=False)
    theta0 = torch.cat([q.detach().flatten() for q in small_pipe(**cfg).transformer.parameters()])
    runs, logs = {}, {}
    for comp in (False, True):
        p = small_pipe(**cfg)
        logs[comp] = pretrain(p, v, c, PretrainConfig(steps=3, batch_size=2, ckpt_dir=tmp_path/str(comp), save_every=3, warmup=1,
                                                      progress=False, compile=comp))
        assert type(p.transformer).__name__ == 'WanTransformer3DModel'          # the compiled wrapper is gone after training
        runs[comp] = p
    np.testing.assert_allclose([r['loss'] for r in logs[True]], [r['loss'] for r in logs[False]], rtol=1e-4)   # the same loss curve
    update = {k: torch.cat([q.detach().flatten() for q in runs[k].transformer.parameters()]) - theta0 for k in runs}
    rel = float((update[True] - update[False]).norm()/update[False].norm())
    assert update[False].norm() > 0 and rel < 1e-2, f'compiled and eager updates differ by {rel:.2e} of their norm'
    saved = B.load_backbone(tmp_path/'True'/'model')
    assert saved.config.patch == (2, 4, 4)
    for a, b in zip(saved.transformer.parameters(), runs[True].transformer.parameters()): torch.testing.assert_close(a, b)


def test_missing_weights_dir_is_named(tmp_path):
    for missing in (tmp_path/'no-such-wan', None, ''):
        with pytest.raises(FileNotFoundError, match=r'backbone folder .*: not found; set weights_dir'): B.load_backbone(missing)
    with pytest.raises(FileNotFoundError, match='no-such-wan'): B.load_backbone(tmp_path/'no-such-wan')
    f = tmp_path/'a-file'; f.write_text('x')
    with pytest.raises(FileNotFoundError, match='a-file'): B.load_backbone(f)


def _folder(root, files):
    for rel, content in files.items():
        (root/rel).parent.mkdir(parents=True, exist_ok=True)
        (root/rel).write_text(json.dumps(content))
    return root


WRONG = {
    'clip': ({'config.json': {'architectures': ['CLIPModel'], 'model_type': 'clip'}},
             ValueError, r"not a text-to-video folder in diffusers format; expected subfolders transformer/, text_encoder/, "
                         r"tokenizer/, scheduler/ \(found \['config.json'\]\)"),
    'sd-unet': ({f'{s}/config.json': {'_class_name': c} for s, c in [('unet', 'UNet2DConditionModel'), ('vae', 'AutoencoderKL'),
                 ('text_encoder', 'CLIPTextModel'), ('tokenizer', 'CLIPTokenizer'), ('scheduler', 'PNDMScheduler')]},
                ValueError, r"expected subfolders transformer/.*\(found \['scheduler', 'text_encoder', 'tokenizer', 'unet', 'vae'\]\)"),
    'hunyuan': ({f'{s}/config.json': {'_class_name': c} for s, c in [('transformer', 'HunyuanVideoTransformer3DModel'),
                 ('text_encoder', 'LlamaModel'), ('tokenizer', 'x'), ('scheduler', 'FlowMatchEulerDiscreteScheduler')]},
                ValueError, r"a HunyuanVideo folder in diffusers format has .*; missing \['vae', 'text_encoder_2', 'tokenizer_2'\]"),
    'flux': ({f'{s}/config.json': {'_class_name': c} for s, c in [('transformer', 'FluxTransformer2DModel'),
              ('text_encoder', 'T5EncoderModel'), ('tokenizer', 'x'), ('scheduler', 'FlowMatchEulerDiscreteScheduler')]},
             ValueError, r"transformer: architecture 'FluxTransformer2DModel' is not supported; expected WanTransformer3DModel "
                         r"\(Wan2.1-T2V\) or HunyuanVideoTransformer3DModel"),
    'no-transformer-config': ({f'{s}/x.json': {} for s in ('transformer', 'text_encoder', 'tokenizer', 'scheduler')},
                              FileNotFoundError, r'transformer/config\.json'),
}

@pytest.mark.parametrize('kind', WRONG)
def test_wrong_architecture_says_what_was_expected(tmp_path, kind):
    files, exc, msg = WRONG[kind]
    with pytest.raises(exc, match=msg): B.load_backbone(_folder(tmp_path/kind, files))


def test_id_encoder_folder_is_not_a_backbone():
    d = repo_root()/'data'/'id_encoder'
    if not d.is_dir(): pytest.skip('data/id_encoder/ (the shipped tiny ID encoders) is not in this checkout')
    with pytest.raises(ValueError, match=r"id_encoder: not a text-to-video folder.*found \[.*'reward.onnx'"): B.load_backbone(d)


@pytest.mark.parametrize('bad', [np.zeros((2, 8, 32, 32, 3), np.float32), np.zeros((8, 32, 32, 3), np.uint8),
                                 np.zeros((2, 8, 32, 32, 4), np.uint8), np.zeros((2, 8, 32, 32), np.uint8)],
                         ids=['float32', 'no-batch', '4-channels', 'grey'])
def test_bad_videos_are_named(tiny, wan, bad):
    msg = rf"videos: expected uint8 \(N, F, H, W, 3\), got {bad.dtype} \({', '.join(map(str, bad.shape))}"
    for p in (tiny, wan):
        with pytest.raises(ValueError, match=msg): p.training_loss(bad, [PROMPT]*max(1, len(bad)))
        with pytest.raises(ValueError, match=msg): p.encode_videos(bad)


def test_videos_and_prompts_of_different_numbers_are_named(tiny):
    with pytest.raises(ValueError, match='prompts'): tiny.training_loss(np.zeros((2, 8, 32, 32, 3), np.uint8), [PROMPT]*3)


def test_video_tensor_in_pixel_layout_is_named(tiny):
    with pytest.raises(ValueError, match='videos'): tiny.training_loss(torch.zeros(2, 8, 32, 32, 3, dtype=torch.uint8), [PROMPT]*2)


# ---------------------------------------------------------------- save_backbone / load_backbone round trip

@pytest.mark.parametrize('prediction', ['flow', 'eps'])
def test_save_load_round_trip_is_identical(tmp_path, prediction, small_pipe):
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
    p = small_pipe(seed=5, prediction=prediction)
    d = B.save_backbone(p, tmp_path/'bb')
    B.save_backbone(p, d)                                    # over an existing folder: replaced, no temp folder left
    assert sorted(x.name for x in tmp_path.iterdir()) == ['bb']
    q = B.load_backbone(d)
    assert isinstance(q.scheduler, FlowMatchEulerDiscreteScheduler if prediction == 'flow' else DDIMScheduler)
    assert (q.prediction, q.config, q.default_frames, q.default_size, q.strict_tokens) == (prediction, p.config, 8, 32, True)
    x, t, _ = _inputs(p)
    with torch.no_grad():                                    # bit-identical text embeddings and predictions
        e = p.encode_prompt([PROMPT]*2)
        assert torch.equal(q.encode_prompt([PROMPT]*2), e) and torch.equal(q.predict(x, t, e), p.predict(x, t, e))
    kw = dict(steps=3, num_frames=4, seed=11, progress=False)
    v = p([PROMPT, 'a person waves'], **kw)
    assert v.shape == (2, 4, 32, 32, 3) and v.dtype == np.uint8
    np.testing.assert_array_equal(q([PROMPT, 'a person waves'], **kw), v)
    assert torch.isfinite(q.training_loss(_videos(2, 8, 32), [PROMPT, '']))


def test_save_load_round_trip_keeps_the_vae(wan, tmp_path):
    kw = dict(num_frames=5, steps=2, height=16, width=16, seed=2, progress=False)
    q = B.load_backbone(B.save_backbone(wan, tmp_path/'bb'))
    assert q.vae is not None and not q.strict_tokens
    np.testing.assert_array_equal(q([PROMPT], **kw), wan([PROMPT], **kw))


# ---------------------------------------------------------------- a backbone on an image autoencoder's latents

@pytest.fixture(scope='module')
def latent_pipe():
    "A 1-layer backbone on the latents of a tiny random `AutoencoderKL` (16×16 frames → 4×8×8 latents, patch 1×2×2)."
    from magicid.autoencoder import AutoencoderConfig, build_autoencoder
    vae = build_autoencoder(AutoencoderConfig(size=16, block_channels=(8, 8), latent_channels=4, norm_groups=4))
    vae.register_to_config(latents_mean=LAT_MEAN, latents_std=LAT_STD)
    return B.build_tiny(B.BackboneConfig.small(latent=True, size=16, patch=(1, 2, 2)), seed=3, vae=vae)


def test_latent_backbone_encodes_every_frame_with_the_autoencoder(latent_pipe):
    from magicid.autoencoder import encode_videos, decode_latents
    v = _videos(2, 3, 16)
    z = latent_pipe.encode_videos(v)
    assert z.shape == (2, 4, 3, 8, 8) == latent_pipe.latent_shape(2, 3, 16, 16)   # one latent frame per frame, ×2 smaller
    torch.testing.assert_close(z, encode_videos(latent_pipe.vae, v))               # the autoencoder module's own encoding
    np.testing.assert_array_equal(latent_pipe.decode(z), decode_latents(latent_pipe.vae, z))
    assert B.vae_factors(latent_pipe.vae) == (1, 2)
    assert torch.isfinite(latent_pipe.training_loss(v, [PROMPT, '']))


def test_latent_backbone_save_load_round_trip(latent_pipe, tmp_path):
    q = B.load_backbone(B.save_backbone(latent_pipe, tmp_path/'bb'))
    assert type(q.vae).__name__ == 'AutoencoderKL' and q.config.latent and q.default_size == 16 and q.strict_tokens
    kw = dict(num_frames=3, steps=2, seed=4, progress=False)
    np.testing.assert_array_equal(q([PROMPT], **kw), latent_pipe([PROMPT], **kw))


def test_latent_config_and_vae_must_agree(latent_pipe):
    with pytest.raises(ValueError, match='latent=True needs an image autoencoder'):
        B.build_tiny(B.BackboneConfig.small(latent=True, size=16, patch=(1, 2, 2)))
    with pytest.raises(ValueError, match='needs no vae'):
        B.build_tiny(B.BackboneConfig.small(), vae=latent_pipe.vae)
    with pytest.raises(ValueError, match="must be divisible by the autoencoder's factor 2"):
        B.build_tiny(B.BackboneConfig.small(latent=True, size=14, patch=(1, 2, 2)), vae=latent_pipe.vae)


def test_unknown_vae_class_is_named(latent_pipe, tmp_path):
    d = B.save_backbone(latent_pipe, tmp_path/'bb')
    cfg = json.loads((d/'vae'/'config.json').read_text()); cfg['_class_name'] = 'AutoencoderTiny'
    (d/'vae'/'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="class 'AutoencoderTiny' is not supported"):
        B.load_backbone(d)


# ---------------------------------------------------------------- SDEdit: sampling from a noised video

@pytest.mark.parametrize('prediction', ['flow', 'eps'])
def test_init_videos_are_kept_at_low_strength(small_pipe, prediction):
    p = small_pipe(seed=2, prediction=prediction)
    v = np.stack([np.asarray(_videos(1, 8, 32, seed=9)[0])])
    kw = dict(steps=10, seed=3, progress=False)
    low, high = p([PROMPT], init=v, strength=0.1, **kw), p([PROMPT], init=v, strength=0.9, **kw)
    err = lambda x: np.abs(x.astype(int) - v).mean()
    assert err(low) < err(high)                                        # less noise added: closer to the init video
    np.testing.assert_array_equal(low, p([PROMPT], init=v, strength=0.1, **kw))   # seeded


def test_init_at_full_strength_is_plain_sampling(small_pipe):
    p = small_pipe(seed=2)                                             # flow: x_1 = ε whatever the init video
    kw = dict(steps=4, seed=3, progress=False)
    np.testing.assert_array_equal(p([PROMPT], init=_videos(1, 8, 32), strength=1.0, **kw), p([PROMPT], **kw))


@pytest.mark.parametrize('kw,msg', [(dict(init=_videos(1, 4, 32)), r'init: expected uint8 videos \(1, 8, 32, 32, 3\)'),
                                    (dict(init=_videos(1, 8, 32), strength=0.0), 'strength=0.0 must be in'),
                                    (dict(init=_videos(1, 8, 32), strength=1.5), 'strength=1.5 must be in')])
def test_bad_init_is_named(small_pipe, kw, msg):
    with pytest.raises(ValueError, match=msg):
        small_pipe()([PROMPT], steps=2, progress=False, **kw)


# ---------------------------------------------------------------- the shipped tiny backbone

def test_shipped_backbone_verifies_and_samples():
    ship = repo_root()/'data'/'backbone'
    if not (ship/'transformer').is_dir():
        pytest.skip('data/backbone/ not shipped yet (train it: .venv/bin/magicid-run --scale tiny --only 10_backbone -p retrain=True)')
    verify_weights(ship)
    p = B.load_backbone(ship)
    assert p.config == B.BackboneConfig(**json.loads((ship/'magicid_backbone.json').read_text())['config'])
    v = p([PROMPT, 'a person waves'], num_frames=8, steps=5, progress=False)
    assert v.shape == (2, 8, p.default_size, p.default_size, 3) and v.dtype == np.uint8 and v.std() > 0
    assert p.vae is not None and p.default_size == 64 and p.guidance_interval == (0.5, 1.0)   # issue 27: latents, CFG at σ >= 0.5
