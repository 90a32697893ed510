"""Speed of the shipped tiny autoencoder (data/autoencoder/) on this CPU: encode, decode and both for one 8-frame video,
videos per second in batches, one training step of the shipped recipe, and peak RSS. Prints JSON lines: one per
section as soon as it is measured (flushed, so an interrupted run keeps what it measured), then a summary line.

Usage: .venv/bin/python bench/autoencoder.py [--n 16] [--threads 1] [--weights-dir DIR]
"""
import argparse, os, platform, resource, sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parent))
from instruments import Sections   # the JSON-lines reporter of the other benches


def seconds(fn, repeats: int) -> float:
    "Median wall seconds of fn() over `repeats` calls, after one warm-up call."
    fn(); ts = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return round(float(np.median(ts)), 4)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--n', type=int, default=16); ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--weights-dir', default=None)
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    from magicid import world
    from magicid.autoencoder import (AutoencoderConfig, autoencoder_info, autoencoder_loss, batch_at, decode_latents,
                                     encode_videos, face_weights, load_autoencoder, to_tensor)
    vae, info = load_autoencoder(a.weights_dir), autoencoder_info(a.weights_dir)
    cfg = AutoencoderConfig(**info['config'])
    rng = np.random.default_rng(0)
    ident = world.sample_identities('eval', 1, 0)[0]
    vids = np.stack([world.render(world.sample_spec(ident, rng, frames=8, size=cfg.size), ground_truth=False).video for _ in range(a.n)])
    rep = Sections('autoencoder', size=cfg.size, frames=8, videos=a.n, torch_threads=torch.get_num_threads(),
                   cpu_count=os.cpu_count(), machine=platform.machine(), n_params=info['n_params'])
    def measure(rep):
        z = encode_videos(vae, vids[:1])
        rep('encode_1', seconds=seconds(lambda: encode_videos(vae, vids[:1]), 5))
        rep('decode_1', seconds=seconds(lambda: decode_latents(vae, z), 5))
        rep('encode_decode_1', seconds=seconds(lambda: decode_latents(vae, encode_videos(vae, vids[:1])), 5))
        t = seconds(lambda: decode_latents(vae, encode_videos(vae, vids)), 2)
        rep('encode_decode_batch', videos_per_s=round(a.n/t, 1))
        frames = vids.reshape(-1, cfg.size, cfg.size, 3)
        boxes = np.tile(np.array([[0, 0, cfg.size, cfg.size]], np.float32), (len(frames), 1))
        train = load_autoencoder(a.weights_dir).train()
        opt = torch.optim.AdamW(train.parameters(), lr=cfg.lr)
        def step():
            x, b, s = batch_at(frames, boxes, cfg, 0)
            loss, _ = autoencoder_loss(train, to_tensor(x), face_weights(b, cfg.size, cfg.face_weight), cfg.kl_weight,
                                       torch.Generator().manual_seed(s))
            opt.zero_grad(); loss.backward(); opt.step()
        rep('train_step', seconds=seconds(step, 5), batch_size=cfg.batch_size)
        rep('memory', peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, 1))
    rep.run(measure)


if __name__ == '__main__':
    main()
