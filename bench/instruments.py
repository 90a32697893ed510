"""Videos per second of every reward and metric on this CPU, at 8×32×32. Prints JSON (one object).

Usage: .venv/bin/python bench/instruments.py [--n 64] [--threads 0]   (threads 0: torch's default)
"""
import argparse, json, os, platform, time
import numpy as np

def rate(fn, items):
    "Items per second of fn over items (after one warm-up call)."
    fn(items[0])
    t0 = time.perf_counter()
    for x in items: fn(x)
    return round(len(items)/(time.perf_counter() - t0), 1)

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--n', type=int, default=64); ap.add_argument('--threads', type=int, default=0)
    a = ap.parse_args()
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    from magicid import world, rewards, metrics, motion
    rng = np.random.default_rng(0)
    ident = world.sample_identities('eval', 1, 0)[0]
    refs = world.reference_images(ident, 4, 0)
    specs = [world.sample_spec(ident, rng) for _ in range(a.n)]
    vids = [world.render(s, ground_truth=False).video for s in specs]
    caps = [world.caption(s) for s in specs]
    items = list(zip(vids, caps))
    rw = rewards.tiny_rewarder(refs)
    inst = metrics.tiny_instruments()
    out = dict(bench='instruments', videos=a.n, frames=8, size=32, torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
               machine=platform.machine())
    out['world_render_videos_per_s'] = rate(lambda s: world.render(s, ground_truth=False), specs)
    out['R_id_videos_per_s'] = rate(lambda vc: rw.id_encoder.embed(vc[0], kind='frame'), items)
    out['R_dy_videos_per_s'] = rate(lambda vc: motion.dynamic_degree(vc[0], unit='px256'), items)
    out['R_sem_videos_per_s'] = rate(lambda vc: rw.semantic.semantic_score(vc[0], vc[1]), items)
    out['rewards_all_videos_per_s'] = rate(lambda vc: rw(vc[0], vc[1]), items)
    out['face_sim_videos_per_s'] = rate(lambda vc: metrics.face_similarity(vc[0], refs, inst.id_encoder), items)
    out['clip_t_videos_per_s'] = rate(lambda vc: inst.clip.clip_t(vc[0], vc[1]), items)
    out['clip_i_videos_per_s'] = rate(lambda vc: inst.clip.clip_i(vc[0], refs), items)
    out['temporal_consistency_videos_per_s'] = rate(lambda vc: inst.clip.temporal_consistency(vc[0]), items)
    out['metrics_all_videos_per_s'] = rate(lambda vc: metrics.video_metrics(vc[0], vc[1], refs, inst), items)
    stack = np.stack(vids)
    t0 = time.perf_counter(); inst.video_features.features(stack); out['fvd_features_videos_per_s'] = round(len(vids)/(time.perf_counter() - t0), 1)
    print(json.dumps(out))

if __name__ == '__main__': main()
