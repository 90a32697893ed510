"""Videos per second of every reward and metric on this CPU, at 8×32×32. Prints JSON lines: one per section as soon as
it is measured (flushed, so an interrupted run keeps what it measured), then a summary line holding every figure
(`"complete": false` when interrupted).

Usage: .venv/bin/python bench/instruments.py [--n 64] [--threads 0]   (threads 0: torch's default)
"""
import argparse, json, os, platform, time
import numpy as np

class Sections:
    "One JSON line per measured section (flushed), then a summary line of all of them (`complete` false on an interrupt)."
    def __init__(self, bench: str, **context):
        self.head, self.done = dict(bench=bench, **context), {}

    def __call__(self, section: str, **values):
        self.done[section] = values
        print(json.dumps(dict(self.head, section=section, **values)), flush=True)

    def summary(self, complete: bool = True):
        flat = {f'{s}_{k}': v for s, vals in self.done.items() for k, v in vals.items()}
        print(json.dumps(dict(self.head, section='summary', complete=complete, **flat)), flush=True)

    def run(self, measure):
        "Call `measure(self)`; print the summary after it, or after an interrupt (then exit 130)."
        try: measure(self)
        except KeyboardInterrupt:
            self.summary(complete=False); raise SystemExit(130)
        self.summary()

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
    from magicid import world, world_render, rewards, metrics, motion
    rng = np.random.default_rng(0)
    ident = world.sample_identities('eval', 1, 0)[0]
    refs = world_render.reference_images(ident, 4, 0)
    specs = [world.sample_spec(ident, rng) for _ in range(a.n)]
    vids = [world_render.render(s, ground_truth=False).video for s in specs]
    caps = [world.caption(s) for s in specs]
    items = list(zip(vids, caps))
    rw = rewards.tiny_rewarder(refs)
    inst = metrics.tiny_instruments()
    rep = Sections('instruments', videos=a.n, frames=8, size=32, torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                   machine=platform.machine())
    def measure(rep):
        rep('world_render', videos_per_s=rate(lambda s: world_render.render(s, ground_truth=False), specs))
        rep('R_id', videos_per_s=rate(lambda vc: rw.id_encoder.embed(vc[0], kind='frame'), items))
        rep('R_dy', videos_per_s=rate(lambda vc: motion.dynamic_degree(vc[0], unit='px256'), items))
        rep('R_sem', videos_per_s=rate(lambda vc: rw.semantic.semantic_score(vc[0], vc[1]), items))
        rep('rewards_all', videos_per_s=rate(lambda vc: rw(vc[0], vc[1]), items))
        rep('face_sim', videos_per_s=rate(lambda vc: metrics.face_similarity(vc[0], refs, inst.id_encoder), items))
        rep('clip_t', videos_per_s=rate(lambda vc: inst.clip.clip_t(vc[0], vc[1]), items))
        rep('clip_i', videos_per_s=rate(lambda vc: inst.clip.clip_i(vc[0], refs), items))
        rep('temporal_consistency', videos_per_s=rate(lambda vc: inst.clip.temporal_consistency(vc[0]), items))
        rep('metrics_all', videos_per_s=rate(lambda vc: metrics.video_metrics(vc[0], vc[1], refs, inst), items))
        stack = np.stack(vids)
        t0 = time.perf_counter(); inst.video_features.features(stack)
        rep('fvd_features', videos_per_s=round(len(vids)/(time.perf_counter() - t0), 1))
    rep.run(measure)

if __name__ == '__main__': main()
