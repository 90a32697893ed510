"""What one paper-scale HPO step costs: the real Wan2.1-T2V-1.3B and HunyuanVideo (13B) transformers, random weights.

Prints JSON lines as it goes: one line per section (`{"bench": "real_step", "section": ...}`: setup, then per model
`<model>` with its parameter counts and the analytical estimate, and on a GPU `<model>_measured`), flushed, then a summary
line (`"section": "summary"`) with every section in one object. An interrupt (Ctrl-C, SIGTERM) prints the summary of what
was done so far (`"partial": true`).

The models are diffusers' `WanTransformer3DModel` and `HunyuanVideoTransformer3DModel` with the released configs (WAN_1_3B,
HUNYUAN_13B below), random weights, nothing downloaded: no text encoder and no VAE (random text-encoder states of the
right width, random latents of the right shape). The LoRA adapter is `magicid.lora.add_lora` (peft; to_q, to_k, to_v,
to_out.0; rank --rank); the parameters diffusers keeps in float32 when loading (`_keep_in_fp32_modules`) stay float32,
the rest is bf16; peft keeps the adapter in float32.

One HPO step (as `magicid.hpo.train_hpo`): one preference pair = 2 latents (winner, loser) sharing noise and t; the
reference forward on both with the adapters disabled (no grad), the policy forward + backward on both (gradient
checkpointing on), `magicid.hpo.hpo_loss`, gradient clipping, AdamW on the adapter.

GPU mode (`torch.cuda.is_available()`, unless --estimate-only): builds each model in bf16 on the GPU and measures the
step: median seconds over --steps after --warmup (and its parts: reference forward, policy forward+backward+update), and
`torch.cuda.max_memory_allocated()` over those steps (the weights included). The estimate is printed too, to compare.

CPU mode (no GPU, or --estimate-only): builds on the meta device (no memory, no weights) and prints an ANALYTICAL
ESTIMATE (`"estimate": true`, with a `"method"` string), per HPO step at batch 2 (one pair):
  memory, counted: weights (each parameter at its dtype's size: bf16 = 2 B, the few fp32-kept ones 4 B); the adapter at
    16 B/parameter (fp32 parameter, fp32 gradient, AdamW's two fp32 moments); the activations gradient checkpointing
    keeps: every block's input hidden states (batch 2 × tokens × width × 2 B × blocks; for HunyuanVideo the text tokens
    too), plus ONE block's full activations, i.e. the tensors autograd saves for backward in the costliest block,
    counted by running that block on the meta device at the real shape (the attention counted as a flash kernel saves
    it: q, k, v, output, logsumexp; never the tokens² matrix; HunyuanVideo's forward always passes an attention mask,
    which rules out torch's flash kernel there, and the memory-efficient one saves the same). With the base weights
    frozen, a linear layer saves no input for backward unless a LoRA factor reads it; the count sees that.
  memory, not counted: activation gradients and temporaries alive during a block's backward, the reference forward's
    working set (no grad, one block at a time), the conditioning tensors shared by all blocks (timestep embedding,
    rotary tables, attention mask, text states: MBs), attention and cuBLAS workspaces, the CUDA context and the
    allocator's fragmentation, the text encoder and the VAE (not in the step).
  FLOPs: 6 × params × tokens for the policy forward + backward (forward 2PT; backward 4PT, or, with frozen base weights,
    2PT for input gradients + 2PT for the checkpointed forward's recomputation: 6PT either way), 2 × params × tokens for
    the reference forward, and attention 4 × tokens² × width × layers per forward (QKᵀ and AV), counted 4× for the
    policy (forward, recomputation, backward ≈ 2 forwards) and 1× for the reference; Wan's cross-attention to the text
    adds 4 × tokens × text tokens × width × layers likewise. Tokens = latent frames × (h/2) × (w/2) per video (+ the
    text tokens for HunyuanVideo's joint attention), × 2 videos. Seconds = FLOPs / (--tflops × --mfu).

Scales (latents: VAE ×8 spatial, ×4 temporal, 4k+1 frames, 16 channels; patch 1×2×2):
  h100   480×832, 33 frames → latents 16 × 9 × 60 × 104 (the default for wan)
  paper  720×1280, 61 frames → latents 16 × 16 × 90 × 160 (the default for hunyuan)

Usage (from the repository root; in a git worktree with PYTHONPATH=$PWD, so that `magicid` is this checkout's):
       .venv/bin/python bench/real_step.py [--model wan|hunyuan|both] [--scale h100|paper] [--frames F] [--height H]
           [--width W] [--text-len L] [--rank 64] [--steps 3] [--warmup 1] [--tflops 989] [--mfu 0.4] [--estimate-only]
  --model      default both
  --scale      the shape for every chosen model (default: each model's own: wan h100, hunyuan paper);
               --frames/--height/--width override it (frames 4k+1, height and width multiples of 16)
  --text-len   text-encoder tokens (default: 226 for wan, 256 for hunyuan)
  --tflops     the GPU's dense bf16 rate in TFLOP/s for the estimate (989: H100 SXM and H200, the same tensor cores)
  --mfu        the fraction of --tflops a step reaches (model FLOPs utilisation) for the estimate
"""
import argparse, gc, json, os, platform, signal, statistics, sys, time, types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Wan2.1-T2V-1.3B: Wan-AI/Wan2.1-T2V-1.3B-Diffusers, transformer/config.json (diffusers' WanTransformer3DModel), the same
# as the Wan2.1 repository's wan/configs/wan_t2v_1_3B.py (dim 1536 = 12 heads × 128, ffn 8960, 30 layers, freq_dim 256).
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm='rms_norm_across_heads', eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024)
# HunyuanVideo (13B): hunyuanvideo-community/HunyuanVideo, transformer/config.json (diffusers' HunyuanVideoTransformer3DModel;
# the diffusers conversion of tencent/HunyuanVideo), the HunyuanVideo report's architecture: hidden 3072 = 24 heads × 128,
# 20 dual-stream + 40 single-stream blocks, MLP ratio 4, LLaVA-Llama-3 text states 4096 wide, CLIP-L pooled 768.
HUNYUAN_13B = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                   num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                   qk_norm='rms_norm', guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
                   rope_theta=256.0, rope_axes_dim=(16, 56, 56), image_condition_type=None)

MODELS = {
    'wan': dict(cls='WanTransformer3DModel', config=WAN_1_3B, scale='h100', text_len=226, nominal='Wan2.1-T2V-1.3B',
                blocks=('blocks',), grad_args=(0,)),
    'hunyuan': dict(cls='HunyuanVideoTransformer3DModel', config=HUNYUAN_13B, scale='paper', text_len=256,
                    nominal='HunyuanVideo 13B', blocks=('transformer_blocks', 'single_transformer_blocks'), grad_args=(0, 1)),
}
SCALES = {'h100': dict(frames=33, height=480, width=832), 'paper': dict(frames=61, height=720, width=1280)}
VAE_T, VAE_S, LATENT_CH, PATCH = 4, 8, 16, 2
GUIDANCE = 6.0                                   # HunyuanVideo's embedded guidance scale (the pipeline passes it × 1000)
GiB = 2**30


def emit(section: str, data: dict):
    "One JSON line for `section`, flushed at once, so an interrupted run keeps what it printed."
    print(json.dumps({'bench': 'real_step', 'section': section} | {k: v for k, v in data.items() if k != 'bench'}), flush=True)


def shape_for(a, name: str) -> dict:
    "Frames, size, latent shape and token counts of `name` under the command line's scale and overrides."
    s = dict(SCALES[a.scale or MODELS[name]['scale']])
    for k in ('frames', 'height', 'width'):
        if getattr(a, k) is not None: s[k] = getattr(a, k)
    f, h, w = s['frames'], s['height'], s['width']
    lat = (LATENT_CH, (f - 1)//VAE_T + 1, h//VAE_S, w//VAE_S)
    text = a.text_len or MODELS[name]['text_len']
    video = lat[1]*(lat[2]//PATCH)*(lat[3]//PATCH)
    joint = name == 'hunyuan'                    # HunyuanVideo attends over video + text tokens; Wan cross-attends to text
    return dict(scale=a.scale or MODELS[name]['scale'], frames=f, height=h, width=w, latent=list(lat), text_tokens=text,
                video_tokens=video, attention_tokens=video + text if joint else video, joint_text=joint)


def build(name: str, device, dtype):
    "The model `name` with random weights on `device`; parameters in `dtype` except those diffusers keeps in float32."
    import torch, diffusers
    cls = getattr(diffusers, MODELS[name]['cls'])
    with torch.device(device): m = cls(**MODELS[name]['config'])
    keep = cls._keep_in_fp32_modules or []
    with torch.no_grad():                        # diffusers' rule when loading: a parameter whose dotted name has a kept part
        for n, p in m.named_parameters():
            p.data = p.data.to(torch.float32 if any(k in n.split('.') for k in keep) else dtype)
    return m


def shim(model):
    "What `magicid.lora` needs of a pipeline: the transformer (and a text encoder without parameters)."
    import torch
    return types.SimpleNamespace(transformer=model, text_encoder=torch.nn.Module())


def make_inputs(name: str, shp: dict, device, dtype, batch: int = 2) -> dict:
    """The conditioning kwargs of one forward at `batch`: random text states of the right width (and, for HunyuanVideo, mask,
    pooled projection and guidance)."""
    import torch
    cfg = MODELS[name]['config']
    width = cfg['text_dim'] if name == 'wan' else cfg['text_embed_dim']
    kw = dict(encoder_hidden_states=torch.randn(batch, shp['text_tokens'], width, device=device, dtype=dtype))
    if name == 'hunyuan':
        kw |= dict(encoder_attention_mask=torch.ones(batch, shp['text_tokens'], device=device, dtype=torch.int64),
                   pooled_projections=torch.randn(batch, cfg['pooled_projection_dim'], device=device, dtype=dtype),
                   guidance=torch.full((batch,), GUIDANCE*1000.0, device=device, dtype=dtype))
    return kw


def param_counts(model, lora) -> dict:
    lora_ids = {id(p) for p in lora}
    base = [p for p in model.parameters() if id(p) not in lora_ids]
    return dict(params=sum(p.numel() for p in base), lora_params=sum(p.numel() for p in lora),
                weights_bytes=sum(p.numel()*p.element_size() for p in base),
                fp32_params=sum(p.numel() for p in base if p.element_size() == 4))


# ------------------------------------------------------------------ one block's saved activations, on the meta device

def _flash_like_sdpa():
    "A stand-in for F.scaled_dot_product_attention that saves for backward what a flash kernel saves (q, k, v, out, lse)."
    import torch

    class Flash(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = torch.empty_like(q)
            ctx.save_for_backward(q, k, v, out, torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device))
            return out

        @staticmethod
        def backward(ctx, g):
            q, k, v = ctx.saved_tensors[:3]
            return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return Flash.apply(query, key, value)
    return sdpa


def block_saved_bytes(model, block, args, kwargs, grad_args) -> int:
    """Bytes of the tensors autograd saves for backward when `block` runs on `args` (meta tensors): each storage once, not
    the parameters, buffers or the block's own inputs (the checkpoint keeps those; counted separately)."""
    import torch, torch.nn.functional as F
    args = tuple(x.detach().requires_grad_(i in grad_args) if torch.is_tensor(x) and x.is_floating_point() else x
                 for i, x in enumerate(args))
    flat = lambda xs: [y for x in xs for y in (flat(x) if isinstance(x, (tuple, list)) else [x])]
    inputs = [x for x in flat(list(args) + list(kwargs.values())) if torch.is_tensor(x)]   # rotary tables are a tuple
    skip = {t.untyped_storage()._cdata for t in list(model.parameters()) + list(model.buffers()) + inputs}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st._cdata not in skip: seen[st._cdata] = st.nbytes()
        return t
    orig, F.scaled_dot_product_attention = F.scaled_dot_product_attention, _flash_like_sdpa()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t): block(*args, **kwargs)
    finally: F.scaled_dot_product_attention = orig
    return sum(seen.values())


# ------------------------------------------------------------------ the estimate (meta device)

def estimate(name: str, shp: dict, a) -> dict:
    "Parameter counts and the analytical memory / FLOPs / seconds estimate of one HPO step (see the module docstring)."
    import torch
    from magicid.lora import add_lora
    t0 = time.perf_counter()
    meta = torch.device('meta')
    model = build(name, meta, torch.bfloat16)
    lora = add_lora(shim(model), rank=a.rank)
    counts = param_counts(model, lora)
    cfg = MODELS[name]['config']
    width = cfg['num_attention_heads']*cfg['attention_head_dim']
    blocks = [getattr(model, b) for b in MODELS[name]['blocks']]
    layers = sum(len(b) for b in blocks)

    # the forward on meta: checks the inputs and records each block type's inputs for the one-block count
    captured, hooks = {}, []
    for seq in blocks:
        hooks.append(seq[0].register_forward_pre_hook(lambda m, args, kw: captured.setdefault(id(m), (args, kw)) and None,
                                                      with_kwargs=True))
    B = 2
    x = torch.randn(B, *shp['latent'], device=meta, dtype=torch.bfloat16)
    t = torch.full((B,), 500.0, device=meta)
    with torch.no_grad(): out = model(x, t, **make_inputs(name, shp, meta, torch.bfloat16, B), return_dict=False)[0]
    for h in hooks: h.remove()
    if tuple(out.shape) != tuple(x.shape): raise RuntimeError(f'{name}: output {tuple(out.shape)} for latents {tuple(x.shape)}')
    per_block = {}
    for bname, seq in zip(MODELS[name]['blocks'], blocks):
        args, kw = captured[id(seq[0])]
        per_block[bname] = block_saved_bytes(model, seq[0], args, kw, MODELS[name]['grad_args'])

    tokens = shp['attention_tokens']              # what each block carries per video (hidden states, + text for joint)
    mem = dict(weights=counts['weights_bytes'], lora_and_adamw=16*counts['lora_params'],
               checkpointed_block_inputs=B*tokens*width*2*layers, one_block_activations=max(per_block.values()))
    mem_gib = {k: round(v/GiB, 3) for k, v in mem.items()} | {'total': round(sum(mem.values())/GiB, 2)}

    P, T = counts['params'], B*tokens
    attn_fwd = B*4*shp['attention_tokens']**2*width*layers
    if not shp['joint_text']: attn_fwd += B*4*shp['video_tokens']*shp['text_tokens']*width*layers   # Wan's cross-attention
    flops = dict(policy_linear=6*P*T, reference_linear=2*P*T, policy_attention=4*attn_fwd, reference_attention=attn_fwd)
    total = sum(flops.values())
    rate = a.tflops*1e12*a.mfu
    res = dict(model=name, nominal=MODELS[name]['nominal'], diffusers_class=MODELS[name]['cls'], config=cfg,
               width=width, blocks=layers, shape=shp, batch_videos=B, rank=a.rank, lora_targets=['to_q', 'to_k', 'to_v', 'to_out.0'],
               **counts, params_B=round(counts['params']/1e9, 4), lora_params_M=round(counts['lora_params']/1e6, 3),
               estimate=True,
               method=('analytical, meta device (no weights): memory = weights at their dtypes + LoRA 16 B/param (fp32 param, '
                       'grad, 2 AdamW moments) + checkpointed block inputs (2 videos x tokens x width x 2 B x blocks) + one '
                       "block's tensors saved for backward (run on meta at the real shape, attention as flash saves it); "
                       'FLOPs = 6PT policy + 2PT reference + attention 4 N^2 D L per forward (x4 policy, x1 reference); '
                       'seconds = FLOPs / (tflops x mfu); not counted: activation gradients, workspaces, CUDA context, '
                       'fragmentation, text encoder, VAE'),
               memory_GiB=mem_gib, one_block_activations_GiB={k: round(v/GiB, 3) for k, v in per_block.items()},
               flops={k: float(f'{v:.4g}') for k, v in flops.items()} | {'total': float(f'{total:.4g}')},
               tflops=a.tflops, mfu=a.mfu, step_s=round(total/rate, 2),
               estimate_wall_s=round(time.perf_counter() - t0, 2))
    return res


# ------------------------------------------------------------------ the measurement (GPU)

def measure(name: str, shp: dict, a, device: str = 'cuda') -> dict:
    """Build `name` in bf16 on `device` with a LoRA adapter and time one HPO step; on a GPU also the peak memory over the
    timed steps (`torch.cuda.max_memory_allocated`, weights included). (`device='cpu'` runs the same code for the tests.)"""
    import math, torch
    from magicid.lora import add_lora, lora_disabled
    from magicid.hpo import HPOConfig, hpo_loss
    dev, bf = torch.device(device), torch.bfloat16
    cuda = dev.type == 'cuda'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build(name, dev, bf)
    pipe = shim(model)
    lora = add_lora(pipe, rank=a.rank)
    model.enable_gradient_checkpointing(); model.train()
    sync(); build_s = time.perf_counter() - t0
    hcfg = HPOConfig()
    opt = torch.optim.AdamW(lora, lr=hcfg.lr, weight_decay=hcfg.weight_decay)
    gc.collect()
    if cuda: torch.cuda.empty_cache(); weights = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
    cond = make_inputs(name, shp, dev, bf)
    times, ref_t, pol_t, losses = [], [], [], []
    for i in range(a.warmup + a.steps):
        g = torch.Generator(dev).manual_seed(i)
        x0 = torch.randn(2, *shp['latent'], device=dev, generator=g)                               # winner, loser
        noise = torch.randn(1, *shp['latent'], device=dev, generator=g).expand(2, -1, -1, -1, -1)  # one ε per pair
        sigma = torch.rand(1, device=dev, generator=g).expand(2)                                   # one t per pair
        s = sigma.view(-1, 1, 1, 1, 1)
        xt, target = ((1 - s)*x0 + s*noise).to(bf), noise - x0                                       # flow matching
        t = sigma*1000
        sync(); a0 = time.perf_counter()
        with torch.no_grad(), lora_disabled(pipe):                                                 # π_ref
            ref = model(xt, t, **cond, return_dict=False)[0]
        sync(); a1 = time.perf_counter()
        pred = model(xt, t, **cond, return_dict=False)[0]                                          # π_θ, with gradient
        loss, _ = hpo_loss(pred[:1], pred[1:], ref[:1], ref[1:], target[:1], target[1:], beta=hcfg.beta)
        opt.zero_grad(set_to_none=True); loss.backward()
        torch.nn.utils.clip_grad_norm_(lora, hcfg.max_grad_norm); opt.step()
        sync(); a2 = time.perf_counter()
        losses.append(loss.item())
        del ref, pred, loss
        if i >= a.warmup: times.append(a2 - a0); ref_t.append(a1 - a0); pol_t.append(a2 - a1)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    moved = any(bool(p.detach().abs().max() > 0) for n, p in model.named_parameters() if 'lora_B' in n)   # B starts at 0
    del model, lora, opt, pipe, cond
    gc.collect()
    if cuda: torch.cuda.empty_cache()
    med = lambda v: round(statistics.median(v), 3)
    return dict(model=name, shape=shp, rank=a.rank, estimate=False, device=torch.cuda.get_device_name(dev) if cuda else device,
                build_s=round(build_s, 1), step_s=med(times), reference_forward_s=med(ref_t), policy_fwd_bwd_update_s=med(pol_t),
                step_s_all=[round(x, 3) for x in times], steps=a.steps, warmup=a.warmup,
                weights_allocated_GiB=round(weights/GiB, 3) if cuda else None,
                max_memory_allocated_GiB=round(peak/GiB, 3) if cuda else None,
                loss_finite=all(math.isfinite(x) for x in losses), adapter_updated=moved)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', choices=['wan', 'hunyuan', 'both'], default='both')
    ap.add_argument('--scale', choices=sorted(SCALES), default=None)
    ap.add_argument('--frames', type=int); ap.add_argument('--height', type=int); ap.add_argument('--width', type=int)
    ap.add_argument('--text-len', type=int, default=None); ap.add_argument('--rank', type=int, default=64)
    ap.add_argument('--steps', type=int, default=3); ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--tflops', type=float, default=989.0); ap.add_argument('--mfu', type=float, default=0.4)
    ap.add_argument('--estimate-only', action='store_true', help='the meta-device estimate only, even with a GPU')
    a = ap.parse_args()
    if a.steps < 1 or a.warmup < 0: ap.error(f'--steps={a.steps} must be >= 1 and --warmup={a.warmup} >= 0')
    if a.frames is not None and (a.frames < 1 or (a.frames - 1) % VAE_T): ap.error(f'--frames={a.frames}: must be 4k+1 (1, 5, 9, …)')
    for k in ('height', 'width'):
        v = getattr(a, k)
        if v is not None and (v < 16 or v % 16): ap.error(f'--{k}={v}: must be a positive multiple of 16 (VAE ×8, patch ×2)')
    if a.text_len is not None and a.text_len < 1: ap.error(f'--text-len={a.text_len} must be >= 1')
    if a.rank < 1: ap.error(f'--rank={a.rank} must be >= 1')
    if not (a.tflops > 0 and 0 < a.mfu <= 1): ap.error(f'--tflops={a.tflops} must be > 0 and --mfu={a.mfu} in (0, 1]')
    import torch, diffusers, peft
    gpu = torch.cuda.is_available() and not a.estimate_only
    names = ['wan', 'hunyuan'] if a.model == 'both' else [a.model]
    out = dict(mode='gpu' if gpu else 'cpu-estimate', models=names, torch=torch.__version__, diffusers=diffusers.__version__,
               peft=peft.__version__, machine=platform.machine(), cpu_count=os.cpu_count(),
               device=torch.cuda.get_device_name() if gpu else None, rank=a.rank, tflops=a.tflops, mfu=a.mfu)
    emit('setup', out)
    for sig in (signal.SIGINT, signal.SIGTERM): signal.signal(sig, signal.default_int_handler)   # both raise KeyboardInterrupt
    try:
        for name in names:
            shp = shape_for(a, name)
            out[name] = estimate(name, shp, a)
            emit(name, out[name])
            if gpu:
                try:
                    m = measure(name, shp, a)
                    est = out[name]
                    m['over_estimate'] = dict(memory=round(m['max_memory_allocated_GiB']/est['memory_GiB']['total'], 3),
                                              seconds=round(m['step_s']/est['step_s'], 3))
                except torch.cuda.OutOfMemoryError as e:
                    m = dict(model=name, shape=shp, estimate=False, oom=True, error=str(e).splitlines()[0])
                gc.collect(); torch.cuda.empty_cache()       # after the except clause: its traceback held the model
                out[f'{name}_measured'] = m
                emit(f'{name}_measured', m)
    except KeyboardInterrupt:
        emit('summary', out | {'partial': True}); sys.exit(130)
    emit('summary', out)


if __name__ == '__main__': main()
