"""Renders per second of the world at 8×32×32 (and with ground truth), on this CPU. Prints JSON lines: one per section
as soon as it is measured (flushed, so an interrupted run keeps what it measured), then a summary line.

Usage: .venv/bin/python bench/world.py [--n 200] [--frames 8] [--size 32]
"""
import argparse, os, platform, time
import numpy as np
from instruments import Sections          # bench/ is on the path when a script of it runs
from magicid import world, world_render

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--n', type=int, default=200); ap.add_argument('--frames', type=int, default=8); ap.add_argument('--size', type=int, default=32)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    specs = [world.sample_spec(i, rng, frames=a.frames, size=a.size) for i in world.sample_identities('pretrain', a.n, 0)]
    world_render.render(specs[0])                              # warm-up
    rep = Sections('world.render', videos=a.n, frames=a.frames, size=a.size, processes=1, cpu_count=os.cpu_count(),
                   machine=platform.machine())
    def measure(rep):
        for section, gt in (('plain', False), ('with_ground_truth', True)):
            t0 = time.perf_counter(); [world_render.render(s, ground_truth=gt) for s in specs]
            rep(section, videos_per_s=round(a.n/(time.perf_counter() - t0), 1))
    rep.run(measure)

if __name__ == '__main__': main()
