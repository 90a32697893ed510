"""Integration tests of magicid.textalign: the shipped tiny CLIP, bad input, the real-CLIP and VLM paths with tiny random
weights saved to a temporary folder and loaded by the same classes, and training with checkpoint/resume."""
import json, math
from dataclasses import replace
from pathlib import Path
import numpy as np
import pytest
import torch
from magicid import world as W
import magicid.textalign_train
from magicid.rehearse import save_tiny_random_vlm
from magicid.textalign import (ClipScorer, VLMRater, build_tokenizer, grammar_words, load_tiny_clip, parse_rating,
                               semantic_score, tiny_clip_dir, to_pixels, verify_folder, windows)
from magicid.textalign_train import ClipTrainConfig, train_tiny_clip


@pytest.fixture(scope='module')
def tiny():
    return load_tiny_clip()


@pytest.fixture(scope='module')
def video():
    return W.render_prompt('a person walks to the left wearing a red jacket on a beach', W.sample_identities('eval', 1, 5)[0], seed=3).video


def test_shipped_folder_loads_like_a_checkpoint():
    from transformers import CLIPModel, AutoTokenizer
    d = tiny_clip_dir()
    assert verify_folder(d) == [], 'data/clip/ differs from the sha256 in its README.md'
    m, tok = CLIPModel.from_pretrained(d), AutoTokenizer.from_pretrained(d)
    assert m.config.vision_config.num_channels == 24 and m.config.text_config.eos_token_id == tok.eos_token_id
    assert sum(f.stat().st_size for f in d.iterdir()) < 8e6                      # a few MB
    assert 'magicid-run --scale tiny --only 05a_clip_training -p retrain=True' in (d/'README.md').read_text()


def test_shapes_and_norms(tiny, video):
    D = tiny.model.config.projection_dim
    assert tiny.embed_text(['a person nods', 'a sks person']).shape == (2, D)
    e = tiny.embed_images(video[:3]); assert e.shape == (3, D)
    np.testing.assert_allclose(np.linalg.norm(e, axis=-1), 1, atol=1e-5)
    assert tiny.embed_video(video).shape == (D,)
    assert -100 <= tiny.clip_t(video, 'a person') <= 100
    assert math.isclose(tiny.clip_t(video, 'a person nods'), 100*semantic_score(video, 'a person nods'), rel_tol=1e-5)


def test_mirrored_walk_swaps_direction(tiny):
    "Motion is seen: the caption's direction follows the video, and mirroring the video flips it."
    ok = 0
    for i, ident in enumerate(W.sample_identities('eval', 6, 11)):
        v = W.render_prompt('a person walks to the left wearing a blue t-shirt in a forest', ident, seed=i).video
        L, R = 'a person walks to the left wearing a blue t-shirt in a forest', 'a person walks to the right wearing a blue t-shirt in a forest'
        ok += (tiny.clip_t(v, L) > tiny.clip_t(v, R)) + (tiny.clip_t(v[:, :, ::-1].copy(), R) > tiny.clip_t(v[:, :, ::-1].copy(), L))
    assert ok >= 10, f'{ok}/12 direction decisions right'


def test_still_video_is_most_consistent(tiny):
    ident = W.sample_identities('eval', 1, 2)[0]
    still = W.render_prompt('a person stands still in a forest wearing a red t-shirt', ident).video
    pan = W.render_prompt('a person stands as the camera pans across in a forest wearing a red t-shirt', ident).video
    assert tiny.temporal_consistency(still) > 0.999 > tiny.temporal_consistency(pan)


@pytest.mark.parametrize('call, msg', [
    (lambda s, v: s.clip_t(v.astype(np.float32), 'a person'), 'video: expected uint8 array (F, H, W, 3), got float32'),
    (lambda s, v: s.clip_t(v[..., :2].copy(), 'a person'), 'video: expected uint8 array (F, H, W, 3), got uint8 (8, 32, 32, 2)'),
    (lambda s, v: s.clip_t(torch.from_numpy(v), 'a person'), 'video: expected a numpy uint8 array'),
    (lambda s, v: s.clip_t(v, ''), 'prompt: empty'),
    (lambda s, v: s.clip_t(v, None), 'prompt: expected a str'),
    (lambda s, v: s.clip_i(v, v[:0]), 'ref_images: empty, need at least one image'),
    (lambda s, v: s.clip_i(v, v[0]), 'ref_images: expected uint8 array (N, H, W, 3)'),
    (lambda s, v: s.embed_text([]), 'texts: empty list'),
    (lambda s, v: s.embed_text(['a person', ' ']), 'texts[1]: empty'),
    (lambda s, v: s.embed_videos([]), 'videos: empty'),
    (lambda s, v: s.temporal_consistency(v[:1]), 'needs at least 2 frames'),
])
def test_bad_input(tiny, video, call, msg):
    with pytest.raises((ValueError, TypeError), match=None) as e: call(tiny, video)
    assert msg in str(e.value), str(e.value)


def test_missing_folders_name_the_parameter(tmp_path):
    with pytest.raises(FileNotFoundError, match='set `clip_dir`'): ClipScorer(tmp_path/'nope')
    with pytest.raises(FileNotFoundError, match='set `clip_path`'): load_tiny_clip(tmp_path)
    with pytest.raises(FileNotFoundError, match='set `vlm_dir`'): VLMRater(tmp_path/'nope')


def test_unknown_words_reported_not_fatal(tiny, video):
    assert tiny.unknown_words('A ZQX person dances') == ['ZQX', 'dances']
    assert np.isfinite(tiny.clip_t(video, 'a zqx person dances'))


def test_sizes_and_lengths(tiny):
    ident = W.sample_identities('eval', 1, 4)[0]
    v64 = W.render_prompt('a person nods in a forest wearing a red t-shirt', ident, frames=20, size=64).video
    assert len(windows(v64, 8)) == 4 and np.isfinite(tiny.clip_t(v64, 'a person nods'))
    refs = W.reference_images(ident, 3, 0, 48)                  # other size than the video: embedded separately
    assert np.isfinite(tiny.clip_i(v64[:8], refs)) and np.isfinite(tiny.clip_t(v64[:3], 'a person'))   # short video: padded


# --- the real-CLIP path: a tiny random CLIP with a real CLIP tokenizer class and CLIP's image processor config (conftest: random_clip)


def test_real_clip_path(random_clip, video):
    from transformers import AutoTokenizer, CLIPTokenizer
    s = ClipScorer(random_clip)
    assert isinstance(AutoTokenizer.from_pretrained(random_clip), CLIPTokenizer)
    assert s.frames_per_window == 1 and (s.resize, s.crop) == (40, 36)
    e = s.embed_images(video)
    ref = e.mean(0); ref /= np.linalg.norm(ref)
    np.testing.assert_allclose(s.embed_video(video), ref, atol=1e-5)      # K = 1: mean of frame embeddings, renormalised
    assert np.isfinite(s.clip_t(video, 'a person waves')) and np.isfinite(s.clip_i(video, video[:2]))
    assert 0 < s.temporal_consistency(video) <= 1 + 1e-6
    assert s.unknown_words('any text at all') == []                     # byte-level BPE: nothing is unknown


def test_preprocessing_matches_clip_image_processor(random_clip):
    "Our resize/crop/normalise gives what the folder's own CLIPImageProcessor gives (PIL bicubic vs torch bicubic)."
    from transformers import AutoImageProcessor
    proc = AutoImageProcessor.from_pretrained(random_clip)
    s = ClipScorer(random_clip)
    img = W.reference_images(W.sample_identities('eval', 1, 0)[0], 2, 0, 64)[:, 8:56]      # 48×64, not square
    ours = to_pixels(img[:, None], s.mean, s.std, s.resize, s.crop).numpy()
    theirs = proc(images=list(img), return_tensors='np')['pixel_values']
    assert ours.shape == theirs.shape == (2, 3, 36, 36)
    assert np.abs(ours - theirs).mean() < 0.05 and np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.995


# --- the VLM rater with a tiny random Qwen2-VL


@pytest.fixture(scope='module')
def random_vlm(tmp_path_factory):
    return save_tiny_random_vlm(tmp_path_factory.mktemp('random-qwen2-vl'))


def test_vlm_plumbing(random_vlm, video):
    r = VLMRater(random_vlm, max_frames=4)
    inp = r.inputs(video, 'a person walks to the left')
    assert len(inp['image_grid_thw']) == 4
    n_img = int((inp['input_ids'] == r.image_token_id).sum())
    assert n_img == int(inp['image_grid_thw'].prod(-1).sum())//r.image_processor.merge_size**2
    assert inp['mm_token_type_ids'].sum() == n_img
    x = r.rate(video, 'a person walks to the left')
    assert (1 <= x <= 10) or math.isnan(x), x
    assert isinstance(r.last_answer, str)


def test_vlm_rating_policy(random_vlm, video, monkeypatch):
    r = VLMRater(random_vlm, max_frames=2, fallback=float('nan'), mode='answer')   # the parsed-answer reading
    for ans, want in [('8', 8.0), ('I would say 7/10.', 7.0), ('11', 10.0), ('nine', 9.0)]:
        monkeypatch.setattr(r, 'answer', lambda v, p, a=ans: a)
        assert r.rate(video, 'a person nods') == want
    monkeypatch.setattr(r, 'answer', lambda v, p: 'The video is nice.')
    assert math.isnan(r.rate(video, 'a person nods'))
    r.fallback = 5.0
    assert r.rate(video, 'a person nods') == 5.0
    with pytest.raises(ValueError, match='video: expected uint8'): VLMRater(random_vlm).inputs(video.astype(float), 'a person')
    with pytest.raises(ValueError, match="dtype='float16' is not valid"): VLMRater(random_vlm, dtype='float16')


def test_parse_rating():
    assert [parse_rating(t) for t in ('10', '0', '-4', '3.4', 'score: 6 out of 10', 'Ten!', '')] == [10, 1, 1, 3, 6, 10, None]
    with pytest.raises(TypeError, match='text: expected a str'): parse_rating(None)


# --- training: config checks, a few steps, checkpoint and resume


def test_train_config_validation():
    with pytest.raises(ValueError, match='patch_size=5 must divide size=32'): ClipTrainConfig(patch_size=5)
    with pytest.raises(ValueError, match='batch_size=64 > n_videos=10'): ClipTrainConfig(n_videos=10, batch_size=64)
    with pytest.raises(ValueError, match='steps=0 must be an int > 0'): ClipTrainConfig(steps=0)


def test_train_resume(tmp_path):
    cfg = ClipTrainConfig(n_videos=24, steps=3, batch_size=8, hidden=32, vision_layers=1, text_layers=1, projection_dim=16)
    logs = []
    r = train_tiny_clip(cfg, tmp_path, log=logs.append, save_every=2)
    assert len(r['history']) == 3 and all(np.isfinite(h['loss']) for h in r['history'])
    assert [h['step'] for h in r['history']] == [1, 2, 3]                      # optimizer steps done
    cfg2 = replace(cfg, steps=4)                                   # another config: refused, naming the difference
    with pytest.raises(ValueError, match=r"holds a tiny CLIP run with other settings \(steps: 3 → 4\)"):
        train_tiny_clip(cfg2, tmp_path, log=logs.append, save_every=2)
    logs.clear()
    r3 = train_tiny_clip(replace(cfg, time_budget_s=60.0), tmp_path, log=logs.append)   # the time budget is no setting
    assert logs == [f"tiny CLIP: resuming from step 3 of {tmp_path/'state.pt'}"] and len(r3['history']) == 3
    assert len(list(tmp_path.glob('videos_*.npy'))) == 1                  # rendered once, cached


def test_train_resumes_after_a_stop(tmp_path, monkeypatch):
    "Killed right after its checkpoint at step 2 of 4, the re-run ends with the weights of an uninterrupted run."
    cfg = ClipTrainConfig(n_videos=24, steps=4, batch_size=8, hidden=32, vision_layers=1, text_layers=1, projection_dim=16)
    full = train_tiny_clip(cfg, tmp_path/'full', log=lambda s: None, save_every=2)
    real = magicid.textalign_train.save_checkpoint
    def save_then_die(ckpt_dir, step, *a, **k):
        real(ckpt_dir, step, *a, **k)
        if step == 2: raise KeyboardInterrupt
    monkeypatch.setattr(magicid.textalign_train, 'save_checkpoint', save_then_die)
    with pytest.raises(KeyboardInterrupt): train_tiny_clip(cfg, tmp_path/'cut', log=lambda s: None, save_every=2)
    monkeypatch.setattr(magicid.textalign_train, 'save_checkpoint', real)
    logs = []
    resumed = train_tiny_clip(cfg, tmp_path/'cut', log=logs.append, save_every=2)
    assert logs[0] == f"tiny CLIP: resuming from step 2 of {tmp_path/'cut'/'state.pt'}"
    for (k, a), b in zip(full['model'].state_dict().items(), resumed['model'].state_dict().values()): assert torch.equal(a, b), k
    assert [h['loss'] for h in resumed['history']] == [h['loss'] for h in full['history']]


def test_tokenizer_roundtrip(tmp_path):
    from transformers import AutoTokenizer
    tok = build_tokenizer(grammar_words()); tok.save_pretrained(tmp_path)
    t2 = AutoTokenizer.from_pretrained(tmp_path)
    ids = t2('In a forest, a sks person nods')['input_ids']
    assert ids[0] == t2.bos_token_id and ids[-1] == t2.eos_token_id and t2.unk_token_id not in ids
