"""Integration tests of magicid.facedetect: the shipped tiny detector against the renderer's ground truth, faceless
files named by `check_faces`, the insightface path on random packs, and corrupted weights."""
import shutil
import numpy as np
import pytest
from PIL import Image
from magicid import world
from magicid.facedetect import (DETECTOR_FILES, background_images, box_iou, check_faces, default_weights_dir,
                                faceless, load_face_detector, reference_images_with_boxes)
from magicid.identity import NoFaceError, write_random_insightface_pack
from magicid.media import load_images


@pytest.fixture(scope='module')
def det():
    return load_face_detector('tiny')


def _png(folder, name, img):
    Image.fromarray(img).save(folder/name)
    return folder/name


def test_smoke_and_tiny_share_the_shipped_detector(det):
    assert load_face_detector('smoke').threshold == det.threshold and 0 < det.threshold < 1


def test_grey_png_noise_and_empty_scene_are_faceless(det, tmp_path):
    grey = load_images(_png(tmp_path, 'grey.png', np.full((32, 32, 3), 128, np.uint8)))
    noise = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    scenes = background_images(6, np.random.default_rng(1))
    assert faceless(np.concatenate([grey, noise, scenes]), det) == list(range(10))
    assert det.detect(grey) == [None]


def test_held_out_references_are_faces_with_the_right_box(det):
    for k, ident in enumerate(world.sample_identities('eval', 5, seed=7)):
        refs, boxes = reference_images_with_boxes(ident, 4, seed=k)
        found = det.detect(refs)
        assert all(d is not None for d in found), [d and d[0] for d in found]
        assert (box_iou(np.stack([d[1] for d in found]), boxes) > 0.5).all()
        assert all(0 <= d[0] <= 1 for d in found)


def test_other_sizes_are_resized_and_boxes_scaled(det):
    refs, boxes = reference_images_with_boxes(world.sample_identities('eval', 1, seed=8)[0], 2, seed=0)
    big = [np.asarray(Image.fromarray(im).resize((96, 96), Image.BILINEAR)) for im in refs]
    found = det.detect(big)
    assert all(d is not None for d in found)
    assert (box_iou(np.stack([d[1] for d in found]), boxes*3) > 0.5).all()


def test_check_faces_names_every_faceless_file(det, tmp_path):
    refs, _ = reference_images_with_boxes(world.sample_identities('eval', 1, seed=9)[0], 3, seed=0)
    for i, im in enumerate(refs): _png(tmp_path, f'me{i}.png', im)
    _png(tmp_path, 'grey.png', np.full((32, 32, 3), 128, np.uint8))
    names = sorted(p.name for p in tmp_path.iterdir())
    images = load_images(tmp_path)
    with pytest.raises(ValueError, match=r"^no face found in 1 of 4 reference images: grey\.png; give photos with one clearly visible face$"):
        check_faces(images, names, det)
    with pytest.raises(NoFaceError, match='2 of 2 reference images: a.png, b.png;'):
        check_faces(np.zeros((2, 32, 32, 3), np.uint8), ['a.png', 'b.png'], det)
    assert len(check_faces(refs, ['a', 'b', 'c'], det)) == 3
    with pytest.raises(ValueError, match='3 images but 2 names'):
        check_faces(refs, ['a', 'b'], det)


@pytest.mark.parametrize('fires', [True, False])
def test_insightface_path_on_random_packs(tmp_path, fires):
    det = load_face_detector('h100', pack_dir=write_random_insightface_pack(tmp_path/'pack', detector_fires=fires))
    bright, grey = np.full((64, 64, 3), 250, np.uint8), np.full((64, 64, 3), 128, np.uint8)
    found = det.detect(np.stack([bright, grey]))
    assert found[1] is None
    if fires:
        assert found[0] is not None and found[0][1].shape == (4,) and found[0][0] >= 0.5
        assert faceless([bright, grey], det) == [1]
    else:
        assert found[0] is None
        with pytest.raises(NoFaceError, match='no face found in 2 of 2 reference images: a.jpg, b.jpg'):
            check_faces([bright, grey], ['a.jpg', 'b.jpg'], det)


def test_h100_needs_a_pack_and_scales_are_checked():
    with pytest.raises(FileNotFoundError, match='pack_dir=None'):
        load_face_detector('paper')
    with pytest.raises(ValueError, match="scale='large' is not valid"):
        load_face_detector('large')


def test_corrupted_weights_are_refused(tmp_path):
    shutil.copytree(default_weights_dir(), tmp_path/'w')
    p = tmp_path/'w'/DETECTOR_FILES[0]
    raw = bytearray(p.read_bytes()); raw[len(raw)//2] ^= 0xFF; p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match='sha256 differs from README.md.*re-train it with'):
        load_face_detector('tiny', weights_dir=tmp_path/'w')
    p.unlink()
    with pytest.raises(FileNotFoundError, match='missing face_detector.safetensors'):
        load_face_detector('smoke', weights_dir=tmp_path/'w')
