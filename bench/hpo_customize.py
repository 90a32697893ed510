"""Speed of MagicID on this CPU: HPO step ÷ DreamBooth step on the same number of videos (one run, interleaved), the wall
time of `customize` for one identity, and peak RSS. Prints JSON: one line after the step timings, one more (all of it)
at the end, so an interrupted run keeps what it measured.

An HPO step with B pairs sees 2B videos (policy forward + backward on winners and losers, one reference forward with the
adapters disabled); the DreamBooth step it is compared with sees 2B videos too. Both are timed through the library's own
trainers (`dreambooth.train_lora`, `hpo.train_hpo`) with a per-step callback, in rounds that alternate the two, so load
on a shared machine hits both alike. The customize run uses the `tiny` rung's settings on one held-out (`eval`) identity.

Usage: .venv/bin/python bench/hpo_customize.py [--pairs 2] [--steps 10] [--rounds 3] [--customize] [--scale tiny] [--threads 0]
"""
import argparse, json, os, platform, resource, statistics, sys, tempfile, time
from pathlib import Path


def timed(fn):
    "Run `fn(callback)` and return the seconds between successive callback calls (per-step times)."
    stamps = [time.perf_counter()]
    fn(lambda *a: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--pairs', type=int, default=2); ap.add_argument('--steps', type=int, default=10)
    ap.add_argument('--rounds', type=int, default=3); ap.add_argument('--customize', action='store_true')
    ap.add_argument('--scale', default='tiny'); ap.add_argument('--threads', type=int, default=0)
    a = ap.parse_args()
    import numpy as np, torch
    if a.threads: torch.set_num_threads(a.threads)
    from magicid import world, dreambooth, hpo, customize, core
    from magicid.backbone import load_scale_backbone
    from magicid.lora import save_lora
    from magicid.pretrain import render_dataset
    ident = world.sample_identities('eval', 1, 0)[0]
    refs = world.reference_images(ident, 4, 0)
    vids, _, caps = render_dataset(2*a.pairs, seed=1, progress=False)
    pairs = [dict(prompt=caps[i].replace('a person', 'a sks person', 1), win=vids[i], lose=world.inflate(refs[i % 4:i % 4 + 1], 8)[0])
             for i in range(a.pairs)]
    tmp = Path(tempfile.mkdtemp())
    db = load_scale_backbone(a.scale)
    dcfg = dreambooth.DreamBoothConfig(steps=1, batch_size=2*a.pairs, lr=1e-4)
    dreambooth.train_lora(db, refs, dcfg, progress=False)                  # adds the adapter (and warms up)
    save_lora(db, tmp/'init')
    pol = load_scale_backbone(a.scale); hpo.prepare_policy(pol, tmp/'init')
    t_db, t_hpo = [], []
    for r in range(a.rounds):
        t_db += timed(lambda cb: dreambooth.train_lora(db, refs, dreambooth.DreamBoothConfig(steps=a.steps + 1, batch_size=2*a.pairs, lr=1e-4, seed=r),
                                                       progress=False, callback=cb))[1:]
        t_hpo += timed(lambda cb: hpo.train_hpo(pol, pairs, hpo.HPOConfig(steps=a.steps + 1, batch_size=a.pairs, lr=1e-4, seed=r),
                                                progress=False, callback=cb))[1:]
    res = dict(bench='magicid', scale=a.scale, pairs_per_step=a.pairs, videos_per_step=2*a.pairs, steps=len(t_db),
               dreambooth_step_s=round(statistics.median(t_db), 4), hpo_step_s=round(statistics.median(t_hpo), 4))
    res['hpo_over_dreambooth'] = round(res['hpo_step_s']/res['dreambooth_step_s'], 3)
    print(json.dumps(res), flush=True)                                   # the step times, before the (long) customize run
    if a.customize:
        cfg = customize.CustomizeConfig.from_scale(a.scale)
        t0 = time.perf_counter()
        rec = customize.customize(refs, tmp/'run', cfg, progress=False, log=lambda *x: None)
        res['customize_wall_s'] = round(time.perf_counter() - t0, 1)
        res['customize_stage_s'] = rec['seconds']
        res['customize_settings'] = dict(init_steps=cfg.initial.steps, hpo_steps=cfg.hpo.steps, n_t=cfg.repository.n_t,
                                        n_s=cfg.repository.n_s, n_prompts=cfg.repository.n_prompts)
    res.update(peak_rss_MiB=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, 1), torch_threads=torch.get_num_threads(),
               cpu_count=os.cpu_count(), load_avg_1min=round(os.getloadavg()[0], 2), machine=platform.machine())
    print(json.dumps(res))


if __name__ == '__main__': main()
