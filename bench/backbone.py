"""Speed of the tiny text-to-video backbone on this CPU: pretraining and LoRA train steps, sampling.

Prints JSON lines as it goes: one line per section as soon as it is measured (`{"bench": "backbone", "section": ...}`:
setup, sample, autoencoder (a latent backbone), pretrain, pretrain_compiled, lora), flushed, then a summary line (`"section": "summary"`) with every
section in one object. An interrupted run keeps the lines already printed, and an interrupt (Ctrl-C, SIGTERM) prints
the summary of what was measured so far (`"partial": true`).

Train steps are forward + backward + gradient clipping + AdamW step with the parameters `pretrain` trains (transformer
and text encoder), or with only a LoRA adapter (rank 32 as the tiny initial recipe, `add_lora`; latents encoded once, as `train_lora`); the median of --steps steps after --warmup steps.
Sampling is one call of the pipeline (classifier-free guidance, so two transformer passes per step) per frame count.

Usage: .venv/bin/python bench/backbone.py [--weights data/backbone] [--random] [--steps 10] [--warmup 2]
           [--batches 8,2] [--compile] [--lora-batch 4] [--lora-rank 32] [--videos 4] [--frames 8,16,24] [--sample-steps 25] [--cfg 4.5] [--threads 0]
  --random   build_tiny() with the default BackboneConfig (random weights) instead of loading --weights
  --compile  also time the pretraining steps with the transformer under torch.compile, as `pretrain(compile=True)`
             (the first --warmup steps include the compilation)
  threads 0: torch's default
"""
import argparse, json, os, platform, re, resource, signal, statistics, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ints(s): return [int(x) for x in s.split(',') if x.strip()]


def step_time(pipe, params, videos, captions, batch, steps, warmup, seed=0):
    "Median seconds of one training step (forward, backward, clip, AdamW) at `batch`."
    import numpy as np, torch
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    times = []
    for i in range(warmup + steps):
        g = np.random.default_rng([seed, i])
        idx = g.choice(len(videos), batch, replace=len(videos) < batch)
        t0 = time.perf_counter()
        loss = pipe.training_loss(videos[idx], [captions[j] for j in idx], generator=torch.Generator().manual_seed(i))
        opt.zero_grad(set_to_none=True); loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
        if i >= warmup: times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 4)


def pretrain_wall(folder: Path):
    "Pretraining wall time from the shipped README's notes ('… X min on N CPU cores …'), if log and README exist."
    if not ((folder/'train_log.csv').is_file() and (folder/'README.md').is_file()): return None
    text = (folder/'README.md').read_text()
    m = re.search(r'([\d.]+)\s*min on ([^.]*)', text)
    n = re.search(r'(\d+) steps', text)                  # '… 16000 steps, batch 4 …': the steps trained
    rows = (folder/'train_log.csv').read_text().strip().splitlines()
    last = rows[-1].split(',')[0] if len(rows) > 1 else None
    return dict(minutes=float(m.group(1)) if m else None, on=m.group(2).strip() if m else None,
                steps=int(n.group(1)) if n else None, last_logged_step=int(last) if last and last.isdigit() else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--weights', default=str(ROOT/'data'/'backbone'))
    ap.add_argument('--random', action='store_true')
    ap.add_argument('--steps', type=int, default=10); ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--batches', type=_ints, default=[8, 2])
    ap.add_argument('--compile', action='store_true'); ap.add_argument('--lora-batch', type=int, default=4)
    ap.add_argument('--lora-rank', type=int, default=32)   # tiny.yaml init_rank
    ap.add_argument('--videos', type=int, default=4); ap.add_argument('--frames', type=_ints, default=[8, 16, 24])
    ap.add_argument('--sample-steps', type=int, default=25); ap.add_argument('--cfg', type=float, default=4.5)
    ap.add_argument('--threads', type=int, default=0)
    a = ap.parse_args()
    if a.steps < 1 or a.warmup < 0: ap.error(f'--steps={a.steps} must be >= 1 and --warmup={a.warmup} >= 0')
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    from magicid import backbone as B
    from magicid.core import verify_weights
    from magicid.pretrain import render_dataset
    weights = Path(a.weights)
    t0 = time.perf_counter()
    if a.random:
        pipe, source = B.build_tiny(B.BackboneConfig()), 'random (build_tiny, default BackboneConfig)'
    elif (weights/'transformer').is_dir():
        verify_weights(weights)
        pipe, source = B.load_backbone(weights), str(weights)
    else:
        sys.exit(f"bench/backbone.py: {weights}: no shipped backbone (no transformer/); pass --random to time a randomly "
                 f"initialized one, or train it: .venv/bin/magicid-run --scale tiny --only 10_backbone -p retrain=True")
    load_s = time.perf_counter() - t0
    cfg = getattr(pipe, 'config', None) or B.BackboneConfig()
    n_data = max(a.batches + [a.lora_batch, a.videos])
    videos, _, captions = render_dataset(n_data, seed=0, frames=cfg.frames, size=cfg.size, progress=False)
    out = dict(bench='backbone', source=source, frames=cfg.frames, size=cfg.size, space='latents' if pipe.vae is not None else 'pixels',
               transformer_params_M=round(sum(p.numel() for p in pipe.transformer.parameters())/1e6, 3),
               text_encoder_params_M=round(sum(p.numel() for p in pipe.text_encoder.parameters())/1e6, 3),
               load_s=round(load_s, 3), torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
               machine=platform.machine(), torch=torch.__version__, steps=a.steps, warmup=a.warmup)
    emit('setup', out)
    for sig in (signal.SIGINT, signal.SIGTERM): signal.signal(sig, signal.default_int_handler)   # both raise KeyboardInterrupt
    try: measure(a, pipe, cfg, videos, captions, out)
    except KeyboardInterrupt:
        emit('summary', out | {'partial': True}); sys.exit(130)
    out['peak_rss_MiB'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, 1)   # Linux: KiB
    out['pretraining_wall'] = None if a.random else pretrain_wall(weights)
    emit('summary', out)


def emit(section: str, data: dict):
    "One JSON line for `section`, flushed at once, so an interrupted run keeps what it measured."
    print(json.dumps({'bench': 'backbone', 'section': section} | {k: v for k, v in data.items() if k != 'bench'}), flush=True)


def measure(a, pipe, cfg, videos, captions, out: dict):
    "Time sampling, pretraining steps (eager, and compiled with --compile) and LoRA steps; each section into `out` and printed."
    from magicid.lora import add_lora                     # lazy, as in main: torch loads after --threads is read
    from magicid.pretrain import compiled
    # sampling (the base model, before any adapter is added)
    pipe.transformer.eval(); pipe.text_encoder.eval()
    prompts = list(captions[:a.videos])
    pipe(prompts, num_frames=min(a.frames), steps=1, cfg_scale=a.cfg, progress=False)            # warm-up
    out['sample'] = dict(videos=a.videos, steps=a.sample_steps, cfg_scale=a.cfg, seconds={})
    for f in a.frames:
        t0 = time.perf_counter()
        v = pipe(prompts, num_frames=f, steps=a.sample_steps, cfg_scale=a.cfg, progress=False)
        out['sample']['seconds'][f'{f}f'] = round(time.perf_counter() - t0, 3)
        assert v.shape == (a.videos, f, cfg.size, cfg.size, 3)
    emit('sample', {'sample': out['sample']})

    if pipe.vae is not None:                              # the autoencoder: videos → latents → videos, per 8-frame video
        t0 = time.perf_counter(); z = pipe.encode_videos(videos[:a.videos]); enc = time.perf_counter() - t0
        t0 = time.perf_counter(); pipe.decode(z); dec = time.perf_counter() - t0
        out['autoencoder'] = dict(encode_s_per_video=round(enc/a.videos, 4), decode_s_per_video=round(dec/a.videos, 4))
        emit('autoencoder', {'autoencoder': out['autoencoder']})
        videos = pipe.encode_videos(videos)               # `pretrain` trains on latents encoded once (10_backbone)

    # pretraining steps: transformer + text encoder, as `pretrain`
    params = [p for m in (pipe.transformer, pipe.text_encoder) for p in m.parameters()]
    for p in params: p.requires_grad_(True)
    pipe.transformer.train(); pipe.text_encoder.train()
    out['pretrain_step_s'] = {f'batch{b}': step_time(pipe, params, videos, captions, b, a.steps, a.warmup) for b in a.batches}
    out['pretrain_params_M'] = round(sum(p.numel() for p in params)/1e6, 3)
    emit('pretrain', {k: out[k] for k in ('pretrain_step_s', 'pretrain_params_M')})
    if a.compile:
        with compiled(pipe):
            out['pretrain_step_compiled_s'] = {f'batch{b}': step_time(pipe, params, videos, captions, b, a.steps, a.warmup) for b in a.batches}
        emit('pretrain_compiled', {'pretrain_step_compiled_s': out['pretrain_step_compiled_s']})

    # LoRA steps: only the adapter trains (customization; as `train_lora`, the references are encoded once, so a step
    # sees latents)
    lora = add_lora(pipe, rank=a.lora_rank)
    out['lora'] = dict(rank=a.lora_rank, params_M=round(sum(p.numel() for p in lora)/1e6, 4))
    out['lora']['step_s'] = {f'batch{a.lora_batch}': step_time(pipe, lora, videos, captions, a.lora_batch, a.steps, a.warmup)}
    emit('lora', {'lora': out['lora']})


if __name__ == '__main__': main()
