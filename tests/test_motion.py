"""magicid.motion: DIS flow against the world's exact flow, VBench's dynamic degree, bad inputs, the RAFT loader."""
import importlib.util, sys
import numpy as np
import pytest
from magicid import world as W
from magicid.motion import (DISConfig, DIS_ACCURATE, DISFlow, dis_flow, video_flow, endpoint_error, load_raft,
                            flow_function, dynamic_degree, dynamic_degrees, dynamic_degree_from_flow, vbench_params,
                            top_motion, RAFT_INSTALL_HINT)

HAS_TORCHVISION = importlib.util.find_spec('torchvision') is not None

def _render(action, k=0, size=32, seed=7):
    ident = W.sample_identities('eval', k + 1, seed)[k]
    return W.render(W.sample_spec(ident, np.random.default_rng([seed, k]), action=action, size=size))

@pytest.mark.parametrize('action', ['walk right', 'jump', 'pan', 'zoom in'])
def test_dis_epe_on_rendered_videos(action):
    "At 32 px on eval identities: EPE over valid pixels < 0.5 px on average (< 0.8 each); camera motion tracked closely."
    epes = []
    for k in range(2):
        r = _render(action, k)
        fl = video_flow(r.video)
        assert fl.shape == r.flow.shape and fl.dtype == np.float32
        epes.append(endpoint_error(fl, r.flow, r.valid))
        assert endpoint_error(video_flow(r.video, DIS_ACCURATE), r.flow, r.valid) < 0.8
        if action in ('pan', 'zoom in'):                    # the whole textured background moves
            moving = r.valid & (np.linalg.norm(r.flow, axis=-1) > 0.5)
            rel = endpoint_error(fl, r.flow, moving)/np.linalg.norm(r.flow, axis=-1)[moving].mean()
            assert rel < 0.35, f'{action}: EPE on moving pixels is {rel:.0%} of the motion'
    assert max(epes) < 0.8 and np.mean(epes) < 0.5, f'{action}: EPE {epes} px at 32 px'

def test_stand_still_ranks_lowest():
    acts = ['walk left', 'jump', 'wave', 'zoom in', 'pan', 'turn head', 'nod', 'stand still']
    vids = [_render(a, k).video for a in acts for k in range(2)]
    vals, flags = dynamic_degrees(vids, progress=False)
    means = dict(zip(acts, vals.reshape(len(acts), 2).mean(1)))
    assert min(means, key=means.get) == 'stand still', means
    assert means['stand still'] < 0.05 and not flags[-2:].any()
    assert flags[:2].all() and means['walk left'] > vbench_params(32, 32, 8)[0]   # walking is dynamic for VBench

def test_dynamic_degree_units_and_custom_flow():
    r = _render('walk right')
    v, d = dynamic_degree(r.video)
    v256, d256 = dynamic_degree(r.video, unit='px256')
    assert d == d256 and v256 == pytest.approx(v*8)
    assert dynamic_degree(r.video, flow=lambda a, b: np.zeros(a.shape[:2] + (2,), np.float32)) == (0.0, False)
    vt, dt = dynamic_degree_from_flow(r.flow)
    assert abs(v - vt) < 0.5 and d == dt
    arr = np.stack([r.video, r.video[::-1]])
    vals, flags = dynamic_degrees(arr, progress=False)
    assert vals.shape == (2,) and flags.dtype == bool
    assert top_motion(r.flow).shape == (7,)

def test_bad_inputs():
    good = _render('pan').video
    with pytest.raises(ValueError, match=r'video: expected a uint8 array \(F, H, W, 3\) \(RGB, 0..255\), got float64 \(8, 32, 32, 3\)'):
        dynamic_degree(good.astype(np.float64))
    with pytest.raises(ValueError, match=r'got uint8 \(32, 32, 3\)'):
        dynamic_degree(good[0])
    with pytest.raises(ValueError, match=r'has 1 frame\(s\); at least 2 needed'):
        dynamic_degree(good[:1])
    with pytest.raises(ValueError, match=r'video \(sampled at 8 fps\): has 1 frame'):
        dynamic_degree(good[:2], fps=24)                    # 24 fps keeps every 3rd frame: one frame left
    with pytest.raises(TypeError, match="got the path 'clip.mp4'"):
        dynamic_degree('clip.mp4')
    with pytest.raises(ValueError, match="unit='m' is not valid"):
        dynamic_degree(good, unit='m')
    with pytest.raises(ValueError, match="flow='tvl1' is not valid; choose one of: dis, raft"):
        video_flow(good, 'tvl1')
    with pytest.raises(TypeError, match='flow: expected one of'):
        flow_function(3)
    with pytest.raises(ValueError, match=r'videos\[1\]: video: expected a uint8'):
        dynamic_degrees([good, good.astype(np.int16)], progress=False)
    with pytest.raises(ValueError, match='fps=0 must be > 0'):
        dynamic_degree(good, fps=0)
    with pytest.raises(ValueError, match='frame_b: expected uint8 array'):
        dis_flow(good[0], good[1].astype(np.float32))
    with pytest.raises(ValueError, match='too small for DIS'):
        DISFlow().video(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="DISConfig.interp='nearest' is not valid"):
        DISConfig(interp='nearest')
    with pytest.raises(ValueError, match=r'flow <lambda>|returned shape'):
        video_flow(good, lambda a, b: np.zeros((4, 4, 2), np.float32))

def test_raft_loader_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match='raft_weights: not set'):
        dynamic_degree(_render('pan').video, flow='raft')
    with pytest.raises(FileNotFoundError, match='raft_weights: no such file'):
        load_raft(tmp_path/'raft_large.pth')
    with pytest.raises(FileNotFoundError, match='raft_weights: no such file'):
        dynamic_degree(_render('pan').video, flow='raft', raft_weights=tmp_path/'raft_large.pth')
    (tmp_path/'raft.ckpt').write_bytes(b'x')
    with pytest.raises(ValueError, match="raft_weights suffix='.ckpt' is not valid"):
        load_raft(tmp_path/'raft.ckpt')
    # torchvision missing (as on every CPU machine here; forced off where it is installed): the error says what to do
    (tmp_path/'raft_large.pth').write_bytes(b'x')
    monkeypatch.setitem(sys.modules, 'torchvision', None)
    with pytest.raises(ImportError, match=r'pip install -e \.\[gpu\]'):
        load_raft(tmp_path/'raft_large.pth')
    assert 'flow=' in RAFT_INSTALL_HINT

@pytest.mark.skipif(not HAS_TORCHVISION, reason='torchvision (the gpu extra) is not installed')
def test_raft_with_random_weights(tmp_path):
    "The real RAFT path, loaded from a local file by the same loader as real weights (random weights: shapes only)."
    import torch
    from safetensors.torch import save_file
    from torchvision.models.optical_flow import raft_small
    net = raft_small(weights=None, progress=False)
    torch.save(net.state_dict(), tmp_path/'raft_small.pth')
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path/'raft_small.safetensors'))
    video = _render('walk left').video
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    for name in ('raft_small.pth', 'raft_small.safetensors'):
        fn = load_raft(tmp_path/name, model='small', device=dev, min_size=64, num_flow_updates=2)
        fl = video_flow(video, fn)
        assert fl.shape == (7, 32, 32, 2) and np.isfinite(fl).all()
        v, d = dynamic_degree(video, fn)
        assert np.isfinite(v) and isinstance(d, bool)
    with pytest.raises(ValueError, match='is not a torchvision raft_large state dict'):
        load_raft(tmp_path/'raft_small.pth', model='large')
