"""bench/real_step.py: the CPU-mode estimate of both real transformers (meta device, run as the command line), its bad
arguments, and the GPU mode's HPO step itself, run here on a CPU with tiny configs of the same two classes."""
import importlib.util, json, os, subprocess, sys, types
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT/'bench'/'real_step.py'
# The released transformers' parameter counts. Wan2.1-T2V-1.3B's transformer (dim 1536, ffn 8960, 30 layers) has 1.42e9,
# its bf16 weights 2.84 GB: "1.3B" is the name, 9 % under the count. HunyuanVideo's transformer is the report's "13B"
# (diffusers' conversion: 12.8e9).
REAL_PARAMS = {'wan': 1.42e9, 'hunyuan': 1.3e10}


def _run(*args):
    env = os.environ | {'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope='module')
def estimate_lines():
    r = _run('--model', 'both', '--estimate-only')       # the CPU mode even where a GPU is
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_estimate_both_models(estimate_lines):
    lines = estimate_lines
    assert [d['section'] for d in lines] == ['setup', 'wan', 'hunyuan', 'summary']
    assert all(d['bench'] == 'real_step' for d in lines)
    assert lines[0]['mode'] == 'cpu-estimate' and 'partial' not in lines[-1]
    for d in lines[1:3]:
        name = d['model']
        assert abs(d['params']/REAL_PARAMS[name] - 1) < 0.05, (name, d['params'])
        assert d['estimate'] is True and 'meta device' in d['method']
        assert 0 < d['lora_params'] < 0.1*d['params']
        assert all(v > 0 for v in d['memory_GiB'].values()) and all(v > 0 for v in d['flops'].values())
        assert d['step_s'] > 0 and d['memory_GiB']['total'] > d['memory_GiB']['weights'] > 0
        assert lines[-1][name] == {k: v for k, v in d.items() if k not in ('bench', 'section')}   # the summary holds it
    wan, hun = lines[1], lines[2]
    assert wan['shape']['latent'] == [16, 9, 60, 104] and wan['shape']['video_tokens'] == 9*30*52
    assert hun['shape']['latent'] == [16, 16, 90, 160] and hun['shape']['attention_tokens'] == 16*45*80 + 256
    # LoRA rank 64 on to_q/to_k/to_v/to_out.0: Wan, 30 blocks × (self + cross attention) × 4 square 1536-wide layers
    assert wan['lora_params'] == 30*2*4*64*(1536 + 1536)


def test_bad_model_exits_2_naming_choices():
    r = _run('--model', 'sora')
    assert r.returncode == 2
    assert 'sora' in r.stderr and all(c in r.stderr for c in ("'wan'", "'hunyuan'", "'both'"))


def test_bad_frames_exits_2():
    r = _run('--frames', '32', '--estimate-only')
    assert r.returncode == 2 and '4k+1' in r.stderr


# ---------------------------------------------------------------- the GPU mode's step, on a CPU with tiny configs

def _load_script():
    spec = importlib.util.spec_from_file_location('real_step', SCRIPT)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


TINY = {'wan': dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=16, out_channels=16,
                    text_dim=12, freq_dim=8, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm='rms_norm_across_heads',
                    eps=1e-6, rope_max_seq_len=32),
        'hunyuan': dict(in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                        num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
                        text_embed_dim=12, pooled_projection_dim=6, rope_axes_dim=(2, 2, 4), guidance_embeds=True)}


@pytest.mark.parametrize('name', ['wan', 'hunyuan'])
def test_measured_step_runs_on_tiny_configs(name, monkeypatch):
    R = _load_script()
    monkeypatch.setitem(R.MODELS[name], 'config', TINY[name])
    a = types.SimpleNamespace(scale=None, frames=5, height=32, width=32, text_len=7, rank=4, steps=2, warmup=1,
                              tflops=989.0, mfu=0.4)
    shp = R.shape_for(a, name)
    assert shp['latent'] == [16, 2, 4, 4]
    res = R.measure(name, shp, a, device='cpu')
    assert res['estimate'] is False and res['loss_finite'] and res['adapter_updated'] and len(res['step_s_all']) == 2
    assert res['step_s'] > 0 and res['reference_forward_s'] > 0 and res['policy_fwd_bwd_update_s'] > 0
    est = R.estimate(name, shp, a)                                   # the same tiny config on the meta device
    assert est['shape'] == shp and est['lora_params'] > 0 and est['flops']['total'] > 0 and est['step_s'] >= 0
