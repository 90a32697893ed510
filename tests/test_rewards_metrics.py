"""Rewards and metrics on rendered videos, and their errors for bad input."""
import numpy as np
import pytest
from magicid import world, rewards, metrics

@pytest.fixture(scope='module')
def setup():
    ident, other = world.sample_identities('eval', 2, 3)
    rng = np.random.default_rng(0)
    sp = world.sample_spec(ident, rng, action='walk left')
    return dict(refs=world.reference_images(ident, 3, 0), video=world.render(sp, ground_truth=False).video, prompt=world.caption(sp),
                other_refs=world.reference_images(other, 3, 0))

def test_reward_ranges_and_identity(setup):
    rw = rewards.tiny_rewarder(setup['refs'])
    r = rw(setup['video'], setup['prompt'])
    assert all(1 <= r[k] <= 10 for k in ('R_id', 'R_dy', 'R_sem'))
    assert r['R_id'] > rewards.tiny_rewarder(setup['other_refs'])(setup['video'], setup['prompt'])['R_id'] + 2
    assert rewards.dynamic_degree(setup['video'])[0] > rewards.dynamic_degree(world.inflate(setup['refs'][:1], 8)[0])[0]

def test_mapping_is_batch_independent(setup):
    rw = rewards.tiny_rewarder(setup['refs'])
    one = rw(setup['video'], setup['prompt'])
    many = rw.batch([setup['video'], world.inflate(setup['refs'][:1], 8)[0]], [setup['prompt']]*2, progress=False)
    assert many[0] == pytest.approx(one)

def test_bad_inputs(setup, tmp_path):
    inst = metrics.tiny_instruments()
    with pytest.raises(ValueError, match='refs: the set is empty'):
        rewards.tiny_rewarder(np.zeros((0, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r'video: expected a uint8 array \(F, H, W, 3\)'):
        rewards.tiny_rewarder(setup['refs'])(setup['video'].astype(np.float32), setup['prompt'])
    (tmp_path/'notes.txt').write_text('not a video')
    with pytest.raises(ValueError, match='notes.txt: not a video file'):
        metrics.video_metrics(tmp_path/'notes.txt', setup['prompt'], setup['refs'], inst)
    with pytest.raises(ValueError, match=r'refs: no reference images for identities \[\'b\'\]'):
        metrics.evaluate([setup['video']], [setup['prompt']], ['b'], {'a': setup['refs']}, inst, progress=False)
    with pytest.raises(ValueError, match='must have the same length'):
        metrics.evaluate([setup['video']], [], ['a'], {'a': setup['refs']}, inst, progress=False)

def test_video_file_input(setup, tmp_path):
    from magicid.media import save_video
    inst = metrics.tiny_instruments()
    a = metrics.video_metrics(setup['video'], setup['prompt'], setup['refs'], inst)
    b = metrics.video_metrics(save_video(setup['video'], tmp_path/'v.npy'), setup['prompt'], setup['refs'], inst)
    assert a == pytest.approx(b)
