"""Integration tests of magicid.fvd: the Fréchet distance, bad inputs, the real-I3D path with a random TorchScript
stand-in, FVD-mini's shipped weights and its training loop's resume."""
import json
import numpy as np
import pytest
import torch
import torch.nn as nn
from magicid import fvd as M
from magicid import world
from magicid.rehearse import write_random_i3d

# ---------------------------------------------------------------- the Fréchet distance

def _gauss(rng, n, d, shift=0.0):
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))*0.5 + shift
    return M.stats(x)

def test_frechet_identical_is_zero_and_symmetric():
    rng = np.random.default_rng(0)
    g1, g2 = _gauss(rng, 300, 32), _gauss(rng, 200, 32, 0.3)
    assert M.frechet_distance(*g1, *g1) == pytest.approx(0.0, abs=1e-9)
    assert M.frechet_distance(*g1, *g2) == pytest.approx(M.frechet_distance(*g2, *g1), rel=1e-12)
    assert M.frechet_distance(*g1, *g2) > 0

def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(1)
    v1, v2, m1, m2 = rng.uniform(.1, 2, 10), rng.uniform(.1, 2, 10), rng.standard_normal(10), rng.standard_normal(10)
    exact = ((m1 - m2)**2).sum() + ((np.sqrt(v1) - np.sqrt(v2))**2).sum()
    assert M.frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(exact, rel=1e-12)

def test_frechet_mean_shift_and_scaling():
    rng = np.random.default_rng(2)
    mu, sig = _gauss(rng, 100, 16)
    shift = rng.standard_normal(16)
    assert M.frechet_distance(mu, sig, mu + shift, sig) == pytest.approx((shift**2).sum(), rel=1e-9)
    g2 = _gauss(rng, 100, 16, 1.0)
    assert M.frechet_distance(3*mu, 9*sig, 3*g2[0], 9*g2[1]) == pytest.approx(9*M.frechet_distance(mu, sig, *g2), rel=1e-9)

@pytest.mark.parametrize('n,d', [(5, 40), (30, 128), (129, 128)])
def test_frechet_rank_deficient_matches_nuclear_norm(n, d):
    "Σ1 = AᵀA, Σ2 = BᵀB: Tr(Σ1Σ2)^½ = ‖ABᵀ‖_* — exact even when n < d (singular covariances)."
    rng = np.random.default_rng(n)
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d))*1.5 + 0.2
    ac, bc = (a - a.mean(0))/np.sqrt(n - 1), (b - b.mean(0))/np.sqrt(n - 1)
    exact = ((a.mean(0) - b.mean(0))**2).sum() + (ac**2).sum() + (bc**2).sum() - 2*np.linalg.svd(ac @ bc.T, compute_uv=False).sum()
    got = M.frechet_distance(*M.stats(a), *M.stats(b))
    assert np.isfinite(got) and got == pytest.approx(exact, rel=1e-10)

def test_frechet_bad_inputs():
    with pytest.raises(ValueError, match='feature dimensions differ: 3 vs 5'):
        M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(5), np.eye(5))
    with pytest.raises(ValueError, match=r'covariance must be \(3, 3\)'):
        M.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match='mean must be a vector'):
        M.frechet_distance(np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match='not finite'):
        M.frechet_distance(np.zeros(3), np.full((3, 3), np.nan), np.zeros(3), np.eye(3))

def test_stats_needs_two_videos():
    with pytest.raises(ValueError, match='at least 2 videos, got 1'): M.stats(np.zeros((1, 8)))
    with pytest.raises(ValueError, match=r'expected an array \(N, D\)'): M.stats(np.zeros(8))
    mu, sig = M.stats(np.arange(12.).reshape(4, 3))
    assert mu.dtype == np.float64 and sig.shape == (3, 3)

# ---------------------------------------------------------------- video checks

@pytest.mark.parametrize('bad,msg', [
    (np.zeros((2, 8, 32, 32, 3), np.float32), r'expected uint8 array \(N, F, H, W, 3\), got float32 \(2, 8, 32, 32, 3\)'),
    (np.zeros((8, 32, 32, 3), np.uint8), r'got uint8 \(8, 32, 32, 3\)'),
    (np.zeros((2, 8, 32, 32, 4), np.uint8), r'got uint8 \(2, 8, 32, 32, 4\)'),
    (np.zeros((0, 8, 32, 32, 3), np.uint8), 'no videos'),
])
def test_check_videos_rejects(bad, msg):
    with pytest.raises(ValueError, match=msg): M.check_videos(bad)

def test_check_videos_rejects_non_arrays():
    with pytest.raises(TypeError, match='got list'): M.check_videos([[0]])

# ---------------------------------------------------------------- the real-I3D path, with a random stand-in

class _BadShape(nn.Module):
    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        return x.mean(1)

@pytest.fixture(scope='module')
def videos10():
    ids = world.sample_identities('eval', 6, 123)
    prompts = world.world_prompts(6, 5)
    return np.stack([world.render_prompt(p, i, seed=k, frames=10).video for k, (p, i) in enumerate(zip(prompts, ids))])

def test_i3d_random_torchscript(tmp_path, videos10):
    write_random_i3d(tmp_path/'i3d_torchscript.pt')
    ex = M.I3DFeatures(tmp_path/'i3d_torchscript.pt', batch_size=4)
    assert isinstance(ex, M.VideoFeatures)
    f = ex.features(videos10)
    assert f.shape == (6, 400) and f.dtype == np.float64 and np.isfinite(f).all()
    assert M.fvd(videos10, videos10, ex) == pytest.approx(0.0, abs=1e-8)
    static = world.inflate(videos10[:, 0], 10)
    assert M.fvd(videos10, static, ex) > 1e-6
    with pytest.raises(ValueError, match='at least 10 frames, got 8'): ex.features(videos10[:, :8])

def test_i3d_input_convention(videos10):
    x = M.i3d_input(videos10[:2])
    assert tuple(x.shape) == (2, 3, 10, 224, 224) and x.dtype == torch.float32
    assert -1 <= float(x.min()) and float(x.max()) <= 1
    # a constant grey frame maps to (v/255)*2 − 1 exactly
    g = np.full((1, 10, 32, 32, 3), 51, np.uint8)
    torch.testing.assert_close(M.i3d_input(g), torch.full((1, 3, 10, 224, 224), 51/255*2 - 1))
    assert tuple(M.i3d_input(np.zeros((1, 10, 40, 30, 3), np.uint8)).shape) == (1, 3, 10, 224, 224)   # shorter side + crop

def test_i3d_missing_file_names_the_parameter(tmp_path):
    with pytest.raises(FileNotFoundError, match='set i3d_path to a local copy'): M.I3DFeatures(tmp_path/'nope.pt')
    with pytest.raises(FileNotFoundError, match='i3d_path=None'): M.I3DFeatures(None)

def test_i3d_wrong_output_shape(tmp_path, videos10):
    torch.jit.script(_BadShape()).save(str(tmp_path/'bad.pt'))
    with pytest.raises(ValueError, match=r'expected features \(N, D\)'): M.I3DFeatures(tmp_path/'bad.pt').features(videos10[:2])

# ---------------------------------------------------------------- FVD-mini

def test_shipped_weights_match_readme():
    folder = M.default_weights_dir()
    readme = (folder/'README.md').read_text()
    for f in M.FVD_MINI_FILES:
        assert M.sha256_file(folder/f) in readme, f'{f}: sha256 differs from data/video_features/README.md'
    assert M.RETRAIN_COMMAND in readme

def test_shipped_fvd_mini_features():
    ex = M.load_tiny_video_features()
    assert isinstance(ex, M.VideoFeatures) and ex.name == 'FVD-mini' and ex.dim == 128
    ids = world.sample_identities('eval', 4, 9)
    v = np.stack([world.render_prompt(p, i, seed=k).video for k, (p, i) in enumerate(zip(world.world_prompts(4, 1), ids))])
    f1, f2 = ex.features(v), ex.features(v)
    assert f1.shape == (4, 128) and f1.dtype == np.float64
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_allclose(ex.features(v[:1]), f1[:1], rtol=1e-5, atol=1e-6)   # batch composition does not matter
    with pytest.raises(ValueError, match='takes 8-frame clips, got 4 frames'): ex.features(v[:, :4])
    with pytest.raises(ValueError, match='feature dimensions differ: 128 vs 400'):
        M.fvd(M.video_stats(v, ex), (np.zeros(400), np.eye(400)), ex)

def test_save_load_roundtrip_and_missing(tmp_path):
    torch.manual_seed(3)
    net = M.FvdMiniNet(M.FvdMiniConfig(widths=(8, 16, 16, 16)))
    M.save_fvd_mini(net, tmp_path, dict(note='random'))
    ex = M.load_tiny_video_features(tmp_path)
    assert ex.info['note'] == 'random' and ex.dim == 16
    v = np.random.default_rng(0).integers(0, 256, (3, 8, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad(): ref = net.embed(M.to_clip_tensor(v)).double().numpy()
    np.testing.assert_allclose(ex.features(v), ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(FileNotFoundError, match='set weights_dir= to the folder'):
        M.load_tiny_video_features(tmp_path/'empty')
    assert json.loads((tmp_path/'fvd_mini.json').read_text())['name'] == 'FVD-mini'

@pytest.fixture(scope='module')
def labelled():
    return M.render_labelled(12, 0, progress=False)

def test_training_resumes_exactly(tmp_path, labelled, monkeypatch):
    "An interrupted run (killed after its checkpoint at step 2 of 4) resumed gives the same weights as an uninterrupted one."
    v, a, s = labelled
    cfg = M.FvdMiniConfig(widths=(8, 8, 16, 16))
    full, log = M.train_fvd_mini(v, a, s, cfg, steps=4, batch_size=4, ckpt_dir=tmp_path/'full', save_every=2, log_every=1, progress=False)
    assert torch.load(tmp_path/'full'/'state.pt', weights_only=True)['step'] == 4 and len(log) == 4
    real = M.save_checkpoint
    def save_then_die(ckpt_dir, step, *args, **kw):
        real(ckpt_dir, step, *args, **kw)
        if step == 2: raise KeyboardInterrupt
    monkeypatch.setattr(M, 'save_checkpoint', save_then_die)
    with pytest.raises(KeyboardInterrupt):
        M.train_fvd_mini(v, a, s, cfg, steps=4, batch_size=4, ckpt_dir=tmp_path/'cut', save_every=2, log_every=1, progress=False)
    monkeypatch.setattr(M, 'save_checkpoint', real)
    assert torch.load(tmp_path/'cut'/'state.pt', weights_only=True)['step'] == 2
    resumed, log2 = M.train_fvd_mini(v, a, s, cfg, steps=4, batch_size=4, ckpt_dir=tmp_path/'cut', save_every=2, log_every=1, progress=False)
    for (k, p), (_, q) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(p, q, msg=k)
    assert [r['step'] for r in log2] == [1, 2, 3, 4]                     # optimizer steps done

def test_training_refuses_other_settings(tmp_path, labelled, capsys):
    v, a, s = labelled
    cfg = M.FvdMiniConfig(widths=(8, 8, 16, 16))
    M.train_fvd_mini(v, a, s, cfg, steps=2, batch_size=4, ckpt_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"holds a FVD-mini run with other settings \(lr: 0.002 → 0.001\)"):
        M.train_fvd_mini(v, a, s, cfg, steps=2, batch_size=4, lr=1e-3, ckpt_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(data: '[0-9a-f]{16}' → '[0-9a-f]{16}'\)"):
        M.train_fvd_mini(v[::-1].copy(), a[::-1].copy(), s[::-1].copy(), cfg, steps=2, batch_size=4, ckpt_dir=tmp_path, progress=False)
    capsys.readouterr()
    M.train_fvd_mini(v, a, s, cfg, steps=2, batch_size=4, ckpt_dir=tmp_path, progress=False)
    assert capsys.readouterr().out == f"FVD-mini: resuming from step 2 of {tmp_path/'state.pt'}\n"

def test_training_bad_inputs():
    v = np.zeros((3, 8, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match='same length'): M.train_fvd_mini(v, np.zeros(2, int), np.zeros(3, int), steps=1)
    with pytest.raises(ValueError, match='steps=0'): M.train_fvd_mini(v, np.zeros(3, int), np.zeros(3, int), steps=0)
    with pytest.raises(ValueError, match='n=0'): M.render_labelled(0, 0)

def test_fvd_requires_an_extractor():
    v = np.zeros((3, 8, 32, 32, 3), np.uint8)
    with pytest.raises(TypeError, match='extractor: expected a VideoFeatures'): M.fvd(v, v, lambda x: x)
