"""Tests of magicid.autoencoder: round trips in the transformer's layout, a resumed training equal to an uninterrupted
one, refusal of another run's checkpoint, corrupt weights, bad settings named, and the shipped autoencoder."""
import shutil
from dataclasses import asdict
import numpy as np
import pytest
import torch
from magicid import world
from magicid.autoencoder import (AUTOENCODER_FILES, AutoencoderConfig, autoencoder_info, build_autoencoder, decode_latents,
                                 default_weights_dir, encode_videos, latent_stats, load_autoencoder, reconstruct,
                                 render_frames, save_autoencoder, set_latent_stats, train_autoencoder)
from magicid.identity import load_tiny_id_encoder, face_similarity

SMALL = dict(size=16, block_channels=(8, 8), latent_channels=4, norm_groups=4, n_videos=4, frames=2, steps=5, batch_size=4, warmup=2)


@pytest.fixture(scope='module')
def small():
    cfg = AutoencoderConfig(**SMALL)
    return cfg, render_frames(cfg, progress=False)


@pytest.fixture(scope='module')
def trained(small):
    cfg, data = small
    vae, _ = train_autoencoder(cfg, data, progress=False)
    return set_latent_stats(vae, latent_stats(vae, data[0]))


def test_round_trip_shapes_and_dtypes(trained, small):
    v = small[1][0].reshape(4, 2, 16, 16, 3)
    z = encode_videos(trained, v)
    assert z.shape == (4, 4, 2, 8, 8) and z.dtype == torch.float32        # (N, C, F, h, w): Wan's layout
    out = decode_latents(trained, z)
    assert out.shape == v.shape and out.dtype == np.uint8
    assert np.array_equal(out, reconstruct(trained, v))
    # frames are independent: a video's frames encode as the same frames alone
    assert torch.allclose(encode_videos(trained, v[:, :1]), z[:, :, :1], atol=1e-5)


def test_normalised_latents_have_unit_scale(trained, small):
    z = encode_videos(trained, small[1][0][None])
    assert torch.allclose(z.mean((0, 2, 3, 4)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(z.std((0, 2, 3, 4)), torch.ones(4), atol=1e-2)
    raw = encode_videos(trained, small[1][0][None], normalize=False)
    assert abs(raw.std().item() - 1/trained.config.scaling_factor) < 1e-3


def test_resumed_training_equals_uninterrupted(small, tmp_path):
    cfg, data = small
    a, log_a = train_autoencoder(cfg, data, progress=False, log_every=1)
    _, first = train_autoencoder(cfg, data, ckpt_dir=tmp_path, max_seconds=0, progress=False, log_every=1)
    assert first[-1]['step'] == 1
    b, log_b = train_autoencoder(cfg, data, ckpt_dir=tmp_path, progress=False, log_every=1)
    assert [r['loss'] for r in log_a] == [r['loss'] for r in log_b]
    for k, v in a.state_dict().items(): assert torch.equal(v, b.state_dict()[k]), k


def test_checkpoint_of_other_settings_refused(small, tmp_path):
    cfg, data = small
    train_autoencoder(cfg, data, ckpt_dir=tmp_path, max_seconds=0, progress=False)
    other = AutoencoderConfig(**(asdict(cfg) | dict(latent_channels=8)))
    with pytest.raises(ValueError, match='latent_channels: 4 → 8'): train_autoencoder(other, data, ckpt_dir=tmp_path, progress=False)
    frames, boxes = data
    with pytest.raises(ValueError, match='data: '): train_autoencoder(cfg, (frames[::-1].copy(), boxes), ckpt_dir=tmp_path, progress=False)


def test_save_load_and_corrupt_weights(trained, small, tmp_path):
    save_autoencoder(trained, tmp_path, dict(note='x'))
    assert all((tmp_path/f).is_file() for f in AUTOENCODER_FILES + ('README.md',))
    v = small[1][0][None]
    assert np.array_equal(reconstruct(load_autoencoder(tmp_path), v), reconstruct(trained, v))
    assert autoencoder_info(tmp_path) == dict(note='x')
    w = tmp_path/'diffusion_pytorch_model.safetensors'
    w.write_bytes(w.read_bytes()[:-4] + b'\xff'*4)
    with pytest.raises(ValueError, match='diffusion_pytorch_model.safetensors: sha256 differs.*re-train it with'): load_autoencoder(tmp_path)
    (tmp_path/'config.json').unlink()
    with pytest.raises(FileNotFoundError, match='missing config.json'): load_autoencoder(tmp_path)


@pytest.mark.parametrize('kw, msg', [
    (dict(size=30), 'AutoencoderConfig.size=30: must be a multiple of 4'),
    (dict(block_channels=(16, 0)), r'AutoencoderConfig.block_channels=\(16, 0\): must be a tuple of ints >= 1'),
    (dict(norm_groups=5), 'AutoencoderConfig.norm_groups=5: must be a divisor of every block channel'),
    (dict(latent_channels=0), 'AutoencoderConfig.latent_channels=0: must be an int >= 1'),
    (dict(kl_weight=-1e-6), 'AutoencoderConfig.kl_weight=-1e-06: must be a number >= 0'),
    (dict(face_weight=float('nan')), 'AutoencoderConfig.face_weight=nan: must be a number >= 0'),
    (dict(lr=0), 'AutoencoderConfig.lr=0: must be a number > 0'),
    (dict(attention='yes'), "AutoencoderConfig.attention='yes': must be True or False"),
    (dict(batch_size=2.5), 'AutoencoderConfig.batch_size=2.5: must be an int >= 1'),
])
def test_bad_settings_are_named(kw, msg):
    with pytest.raises(ValueError, match=msg): AutoencoderConfig(**kw)


def test_bad_inputs_are_named(trained):
    with pytest.raises(ValueError, match=r'videos: expected uint8 \(N, F, H, W, 3\)'): encode_videos(trained, np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r'latents: expected \(N, 4, F, h, w\)'): decode_latents(trained, torch.zeros(1, 3, 2, 8, 8))
    with pytest.raises(TypeError, match='expected an AutoencoderConfig'): build_autoencoder(dict(size=16))


@pytest.mark.skipif(not (default_weights_dir()/AUTOENCODER_FILES[1]).is_file(), reason='no shipped autoencoder')
def test_shipped_autoencoder_keeps_a_held_out_face():
    vae, info = load_autoencoder(), autoencoder_info()
    size = vae.config.sample_size
    assert len(vae.config.latents_mean) == vae.config.latent_channels and info['choice_split'] == 'dev'
    ident = world.sample_identities('eval', 1, seed=11)[0]
    video = world.render(world.sample_spec(ident, np.random.default_rng(3), frames=8, size=size), ground_truth=False).video
    refs = world.reference_images(ident, 4, seed=5, size=size)
    enc = load_tiny_id_encoder('eval')
    rec = reconstruct(vae, video[None])[0]
    assert face_similarity(enc, rec, refs) > face_similarity(enc, video, refs) - 0.25
