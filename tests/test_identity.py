"""Integration tests of magicid.identity: shipped tiny encoders, the insightface pack path with random-weight models,
dlib on real photos, bad inputs, and the training → ONNX → insightface round trip."""
from dataclasses import replace
from pathlib import Path
import numpy as np
import pytest
import torch
from magicid import world
import magicid.identity_train
from magicid.identity import (InsightFaceEncoder, NoFaceError, OnnxArcFace, DlibEncoder, check_images, face_similarity,
                              identity_similarity, load_tiny_id_encoder, pairwise_similarity, per_frame_similarity,
                              reference_embeddings, tiny_encoder_path, verification_metrics, write_random_insightface_pack,
                              roc_auc)
from magicid.identity_train import (TINY_ENCODERS, IDNetSpec, IDTrainConfig, export_id_encoder, render_id_dataset,
                                    to_model_input, train_id_encoder)


@pytest.fixture(scope='module')
def frames():
    "Three renders (random frame) of each of three unseen identities, and their labels."
    rng = np.random.default_rng(123)
    X, Y = [], []
    for j, ident in enumerate(world.sample_identities('eval', 3, seed=99)):
        for _ in range(3):
            v = world.render(world.sample_spec(ident, rng), ground_truth=False).video
            X.append(v[rng.integers(8)]); Y.append(j)
    return np.stack(X), np.array(Y)


@pytest.fixture(scope='module')
def pack(tmp_path_factory):
    return write_random_insightface_pack(tmp_path_factory.mktemp('pack'), seed=0)


def _bright_face(h=96, w=96):
    img = np.zeros((h, w, 3), np.uint8); img[20:70, 25:75] = 255
    return img


# --- the shipped tiny encoders -------------------------------------------------------------------------------------

@pytest.mark.parametrize('which', ['reward', 'eval'])
def test_tiny_encoder_loads_offline_and_normalises(which, frames):
    X, Y = frames
    enc = load_tiny_id_encoder(which)
    assert isinstance(enc, OnnxArcFace) and enc.dim == TINY_ENCODERS[which].net.dim
    e = enc.embed(X)
    assert e.shape == (len(X), enc.dim) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
    S = enc.similarity(e, e)
    same = Y[:, None] == Y[None]
    off = ~np.eye(len(Y), dtype=bool)
    assert S[same & off].mean() > S[~same].mean() + 0.3


@pytest.mark.parametrize('which', ['reward', 'eval'])
def test_tiny_encoder_is_an_insightface_arcface(which, frames):
    import cv2
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    m = get_model(str(tiny_encoder_path(which)), providers=['CPUExecutionProvider'])
    assert isinstance(m, ArcFaceONNX)
    assert (m.input_mean, m.input_std, m.input_size, m.input_name) == (127.5, 127.5, (112, 112), 'input.1')
    X = frames[0]
    bgr = [cv2.resize(x, (112, 112), interpolation=cv2.INTER_LINEAR)[..., ::-1].copy() for x in X]
    raw = m.get_feat(bgr)                                   # dynamic batch: all at once
    assert raw.shape[0] == len(X)
    ours = load_tiny_id_encoder(which).embed(X)
    np.testing.assert_allclose(raw/np.linalg.norm(raw, axis=1, keepdims=True), ours, atol=1e-5)


def test_reward_and_eval_encoders_are_different_models():
    a, b = (tiny_encoder_path(w).read_bytes() for w in ('reward', 'eval'))
    assert a != b
    assert TINY_ENCODERS['reward'].split == 'instrument' and TINY_ENCODERS['eval'].split == 'pretrain'


def test_missing_tiny_weights_name_the_parameter(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"which='reward'.*set weights_dir.*retrain=True"):
        load_tiny_id_encoder('reward', weights_dir=tmp_path)
    with pytest.raises(ValueError, match=r"which='face' is not valid; choose one of: reward, eval"):
        load_tiny_id_encoder('face')


def test_onnx_arcface_rejects_missing_file_and_detectors(tmp_path, pack):
    with pytest.raises(FileNotFoundError, match=r"path='.*nope.onnx': no such ONNX file"):
        OnnxArcFace(tmp_path/'nope.onnx')
    with pytest.raises(ValueError, match='not route it to a recognition model'):
        OnnxArcFace(pack/'det_tiny.onnx')


# --- bad inputs ----------------------------------------------------------------------------------------------------

def test_bad_inputs_give_clear_errors(frames):
    enc = load_tiny_id_encoder('reward')
    X = frames[0]
    with pytest.raises(ValueError, match=r'images: expected uint8 array \(N, H, W, 3\) RGB, got float32'):
        enc.embed(X.astype(np.float32))
    with pytest.raises(ValueError, match=r'got uint8 \(32, 32, 3\)'):
        enc.embed(X[0])                                     # one image without the batch axis
    with pytest.raises(ValueError, match=r'got uint8 \(9, 32, 32, 1\)'):
        enc.embed(X[..., :1])
    with pytest.raises(ValueError, match='empty batch'):
        enc.embed(X[:0])
    with pytest.raises(ValueError, match=r'images\[1\]: expected uint8 array \(H, W, 3\)'):
        enc.embed([X[0], X[1].astype(np.int64)])
    with pytest.raises(TypeError, match='expected a uint8 array'):
        enc.embed('frame.png')
    with pytest.raises(ValueError, match='refs: empty reference set'):
        reference_embeddings(enc, [])
    with pytest.raises(ValueError, match='refs: empty reference set'):
        face_similarity(enc, X[:4], np.zeros((0, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r'video: expected uint8 array'):
        face_similarity(enc, X[:4].astype(float), X[:2])


# --- R_id ---------------------------------------------------------------------------------------------------------

def test_identity_similarity_is_mean_over_frames_and_references():
    rng = np.random.default_rng(0)
    f, r = rng.standard_normal((5, 16)), rng.standard_normal((3, 16))
    fn, rn = f/np.linalg.norm(f, axis=1, keepdims=True), r/np.linalg.norm(r, axis=1, keepdims=True)
    assert np.isclose(identity_similarity(fn, rn), (fn @ rn.T).mean(), atol=1e-6)
    assert np.isclose(identity_similarity(fn, rn, ref_mode='centroid'), (fn @ (rn.mean(0)/np.linalg.norm(rn.mean(0)))).mean(), atol=1e-6)
    assert per_frame_similarity(fn, rn).shape == (5,)
    d = pairwise_similarity(f, r, 'l2')
    assert np.allclose(d, 1 - np.linalg.norm(f[:, None] - r[None], axis=-1), atol=1e-4)
    with pytest.raises(ValueError, match="ref_mode='centroid' needs metric='cosine'"):
        identity_similarity(f, r, 'l2', 'centroid')
    assert np.isnan(identity_similarity(np.full((2, 16), np.nan), rn))


def test_face_similarity_ranks_the_right_identity(frames):
    enc = load_tiny_id_encoder('eval')
    ident, other = world.sample_identities('eval', 2, seed=7)
    video = world.render(world.sample_spec(ident, np.random.default_rng(1), action='walk left'), ground_truth=False).video
    own, foreign = world.reference_images(ident, 3, seed=1), world.reference_images(other, 3, seed=1)
    assert face_similarity(enc, video, own) > face_similarity(enc, video, foreign) + 0.2


def test_verification_metrics_perfect_and_chance():
    labels = np.repeat(np.arange(4), 3)
    sim = (labels[:, None] == labels[None]).astype(float)
    m = verification_metrics(sim + np.random.default_rng(0).uniform(0, .01, sim.shape), labels)
    assert m['roc_auc'] == 1.0 and m['tar_at_far'] == 1.0
    assert roc_auc(np.zeros(4), np.array([1, 0, 1, 0])) == 0.5


# --- the real insightface pack path, with tiny random-weight models ------------------------------------------------

def test_pack_loads_through_face_analysis(pack):
    from insightface.model_zoo.scrfd import SCRFD
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    enc = InsightFaceEncoder(pack)
    assert isinstance(enc.app.models['detection'], SCRFD) and isinstance(enc.app.models['recognition'], ArcFaceONNX)
    assert enc.app.models['detection'].use_kps and enc.dim == 512
    e = enc.embed([_bright_face(), _bright_face(128, 160)], names=['a', 'b'])
    assert e.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
    faces = enc.faces(_bright_face())
    assert len(faces) >= 1 and faces[0].kps.shape == (5, 2)

def test_largest_face_is_the_largest_of_all_faces(pack):
    "`largest_face` embeds only the largest detection: the same box and embedding as the largest of `faces` (all embedded)."
    enc = InsightFaceEncoder(pack)
    im = np.zeros((96, 192, 3), np.uint8); im[30:50, 20:40] = 255; im[10:90, 100:180] = 255   # a small and a large bright region
    fs = enc.faces(im)
    big = max(fs, key=lambda f: (f.bbox[2] - f.bbox[0])*(f.bbox[3] - f.bbox[1]))
    f = enc.largest_face(im)
    assert len(fs) > 1
    np.testing.assert_array_equal(f.bbox, big.bbox)
    np.testing.assert_allclose(f.normed_embedding, big.normed_embedding, rtol=1e-6)
    assert enc.largest_face(im, embed=False).embedding is None
    assert enc.largest_face(np.zeros((64, 64, 3), np.uint8)) is None


def test_pack_no_face_errors_name_the_image(pack):
    enc = InsightFaceEncoder(pack)
    black = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(NoFaceError, match='no face detected in reference image black.png'):
        reference_embeddings(enc, [_bright_face(), black], names=['ok.png', 'black.png'])
    e = enc.embed([_bright_face(), black], on_missing='nan')
    assert np.isfinite(e[0]).all() and np.isnan(e[1]).all()
    # a video whose frames have no face scores NaN; faceless frames are skipped
    assert np.isnan(face_similarity(enc, np.stack([black]*3), [_bright_face(64, 64)]))
    v = np.stack([_bright_face(64, 64), black])
    assert np.isfinite(face_similarity(enc, v, [_bright_face(64, 64)]))


def test_pack_whose_detector_never_fires(tmp_path):
    enc = InsightFaceEncoder(write_random_insightface_pack(tmp_path/'blind', seed=1, detector_fires=False))
    with pytest.raises(NoFaceError, match='no face detected in image #0'):
        enc.embed([_bright_face()])


def test_pack_dir_errors_name_the_parameter(tmp_path, pack):
    with pytest.raises(FileNotFoundError, match=r"pack_dir='.*missing': no such folder; set pack_dir"):
        InsightFaceEncoder(tmp_path/'missing')
    with pytest.raises(FileNotFoundError, match=r"pack_dir=None"):
        InsightFaceEncoder(None)
    (tmp_path/'empty').mkdir()
    with pytest.raises(FileNotFoundError, match=r"pack_dir=.*no \.onnx files"):
        InsightFaceEncoder(tmp_path/'empty')
    (tmp_path/'rec_only').mkdir()
    (tmp_path/'rec_only'/'w600k_tiny.onnx').write_bytes((pack/'w600k_tiny.onnx').read_bytes())
    with pytest.raises(ValueError, match=r"pack_dir=.*no face detector"):
        InsightFaceEncoder(tmp_path/'rec_only')


def test_random_recognizer_runs_as_onnx_arcface(pack):
    enc = OnnxArcFace(pack/'w600k_tiny.onnx')                 # the path a real w600k_r50.onnx takes
    e = enc.embed([_bright_face(112, 112), _bright_face(200, 200)])
    assert e.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)


# --- dlib on real photos -------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def photos():
    import cv2, skimage.data, matplotlib.cbook
    from PIL import Image
    astro = skimage.data.astronaut()
    with matplotlib.cbook.get_sample_data('grace_hopper.jpg') as fh:
        hopper = np.array(Image.open(fh).convert('RGB'))
    return dict(astro=astro, flipped=astro[:, ::-1].copy(), rescaled=cv2.resize(astro, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA),
                hopper=hopper, coffee=skimage.data.coffee())


def test_dlib_real_photos(photos):
    pytest.importorskip('dlib')
    enc = DlibEncoder()
    E = enc.embed([photos[k] for k in ('astro', 'flipped', 'rescaled', 'hopper')])
    assert E.shape == (4, 128) and enc.metric == 'l2'
    s = enc.similarity(E[:1], E)[0]
    assert s[1] > s[3] and s[2] > s[3]
    assert 1 - s[1] < 0.6 and 1 - s[2] < 0.6 and 1 - s[3] > 0.6      # dlib's same-person threshold on the distance
    assert np.isclose(s[3], 1 - np.linalg.norm(E[0] - E[3]), atol=1e-5)


def test_dlib_no_face_names_the_reference(photos):
    pytest.importorskip('dlib')
    enc = DlibEncoder()
    with pytest.raises(NoFaceError, match='no face detected in reference image coffee.jpg'):
        reference_embeddings(enc, [photos['astro'], photos['coffee']], names=['astronaut.png', 'coffee.jpg'])
    with pytest.raises(NoFaceError, match='no face detected in reference image flat'):
        reference_embeddings(enc, [np.full((100, 100, 3), 128, np.uint8)], names=['flat'])


def test_dlib_missing_model_dir_names_it(tmp_path):
    pytest.importorskip('dlib')
    with pytest.raises(FileNotFoundError, match=r"model_dir='.*': missing shape_predictor_5_face_landmarks.dat"):
        DlibEncoder(model_dir=tmp_path)


# --- training → ONNX → insightface round trip ----------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_run():
    "16 training images of 4 identities and a config of 4 optimizer steps (batch 8, 2 epochs) of a very small net."
    X, Y, FAC = render_id_dataset('instrument', 4, 2, 2, seed=3)
    cfg = IDTrainConfig('t', 'instrument', seed=0, net=IDNetSpec((4, 8, 8), 32, 'att'), n_ids=4, videos_per_id=2,
                        frames_per_video=2, epochs=2.0, batch_size=8)
    return X, Y, FAC, cfg


def test_training_export_round_trip(tmp_path, tiny_run):
    X, Y, FAC, cfg = tiny_run
    ck = tmp_path/'ck'
    model, log = train_id_encoder(cfg, X, Y, FAC, ckpt_dir=ck, save_every=1, log_every=1)
    assert (ck/'state.pt').is_file() and len(log) == 4 and {'arcface_loss', 'factor_loss', 'margin'} <= set(log[0])
    assert [r['step'] for r in log] == [1, 2, 3, 4]                      # optimizer steps done
    # resuming a finished run does not train further and returns the same weights
    model2, log2 = train_id_encoder(cfg, X, Y, FAC, ckpt_dir=ck)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()): assert torch.equal(a, b)
    p = export_id_encoder(model, tmp_path/'t.onnx')
    enc = OnnxArcFace(p)
    with torch.no_grad(): ref = torch.nn.functional.normalize(model(to_model_input(X))).numpy()
    np.testing.assert_allclose(enc.embed(X), ref, atol=1e-4)
    assert enc.dim == 32


def test_training_refuses_other_settings(tmp_path, tiny_run):
    X, Y, FAC, cfg = tiny_run
    train_id_encoder(cfg, X, Y, FAC, ckpt_dir=tmp_path, save_every=2)
    with pytest.raises(ValueError, match=r"holds a tiny ID encoder \(t\) run with other settings \(lr: 0.003 → 0.001\)"):
        train_id_encoder(replace(cfg, lr=1e-3), X, Y, FAC, ckpt_dir=tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(data: '[0-9a-f]{16}' → '[0-9a-f]{16}'\)"):   # other images
        train_id_encoder(cfg, X[::-1].copy(), Y, FAC, ckpt_dir=tmp_path)


def test_training_resumes_after_a_stop(tmp_path, tiny_run, monkeypatch, capsys):
    "Killed right after its checkpoint at step 2 of 4, the re-run ends with the weights of an uninterrupted run."
    X, Y, FAC, cfg = tiny_run
    full, log = train_id_encoder(cfg, X, Y, FAC, ckpt_dir=tmp_path/'full', save_every=2, log_every=1)
    real = magicid.identity_train.save_checkpoint
    def save_then_die(ckpt_dir, step, *a, **k):
        real(ckpt_dir, step, *a, **k)
        if step == 2: raise KeyboardInterrupt
    monkeypatch.setattr(magicid.identity_train, 'save_checkpoint', save_then_die)
    with pytest.raises(KeyboardInterrupt): train_id_encoder(cfg, X, Y, FAC, ckpt_dir=tmp_path/'cut', save_every=2, log_every=1)
    monkeypatch.setattr(magicid.identity_train, 'save_checkpoint', real)
    resumed, log2 = train_id_encoder(cfg, X, Y, FAC, ckpt_dir=tmp_path/'cut', save_every=2, log_every=1)
    assert f"resuming from step 2 of {tmp_path/'cut'/'state.pt'}" in capsys.readouterr().out
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()): assert torch.equal(a, b), k
    assert [r['step'] for r in log2] == [1, 2, 3, 4] and [r['arcface_loss'] for r in log2] == [r['arcface_loss'] for r in log]


def test_train_config_validation():
    with pytest.raises(ValueError, match="split='eval' is not valid"):
        IDTrainConfig(split='eval')
    with pytest.raises(ValueError, match='needs >= 2 images per identity'):
        IDTrainConfig(videos_per_id=1, frames_per_video=1)
    with pytest.raises(ValueError, match="pool='max' is not valid"):
        IDNetSpec(pool='max')
    assert replace(TINY_ENCODERS['reward'], n_ids=10).net == TINY_ENCODERS['reward'].net
