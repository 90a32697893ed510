"""Renders per second of the world at 8×32×32 (and with ground truth), on this CPU. Prints JSON.

Usage: .venv/bin/python bench/world.py [--n 200] [--frames 8] [--size 32]
"""
import argparse, json, os, platform, time
import numpy as np
from magicid import world

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--n', type=int, default=200); ap.add_argument('--frames', type=int, default=8); ap.add_argument('--size', type=int, default=32)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    specs = [world.sample_spec(i, rng, frames=a.frames, size=a.size) for i in world.sample_identities('pretrain', a.n, 0)]
    world.render(specs[0])                                     # warm-up
    t0 = time.perf_counter(); [world.render(s, ground_truth=False) for s in specs]; plain = time.perf_counter() - t0
    t0 = time.perf_counter(); [world.render(s) for s in specs]; gt = time.perf_counter() - t0
    print(json.dumps(dict(bench='world.render', videos=a.n, frames=a.frames, size=a.size, processes=1,
                          videos_per_s=round(a.n/plain, 1), videos_per_s_with_ground_truth=round(a.n/gt, 1),
                          cpu_count=os.cpu_count(), machine=platform.machine())))

if __name__ == '__main__': main()
