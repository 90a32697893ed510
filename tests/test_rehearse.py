"""The real scales' chains rehearsed end to end on tiny random models of the real classes (issue 28, items 1 and 3):
`magicid-run --scale h100|paper --rehearse` exits 0 and writes every table and figure the tiny chain writes, under the
same names; and no notebook of the chain falls back to a smoke default at h100 or paper."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
from magicid import core
from magicid.rehearse import load_rehearsal, rehearsal_params, write_inputs
from magicid.run import preflight

ROOT = Path(__file__).resolve().parent.parent
RUN = str(Path(sys.executable).parent/'magicid-run')

@pytest.mark.parametrize('scale', core.REAL_SCALES)
def test_every_notebook_has_its_real_scale_parameters(scale):
    "What tiny sets for a notebook (its sizes), each real scale sets too: none runs with a smoke default there."
    tiny, real = core.load_scale('tiny'), core.load_scale(scale)
    missing = {nb: sorted(set(tiny.notebooks.get(nb) or {}) - set(real.notebooks.get(nb) or {})) for nb in core.load_chain()}
    assert not {nb: m for nb, m in missing.items() if m}, f"{scale}.yaml lacks parameters that tiny.yaml sets: {missing}"
    assert set(core.load_chain()) <= set(real.notebooks), f"{scale}.yaml: no entry for {sorted(set(core.load_chain()) - set(real.notebooks))}"

@pytest.mark.parametrize('scale', core.REAL_SCALES)
def test_the_stand_ins_pass_the_preflight(scale, tmp_path):
    "Every real input's stand-in is where and what the preflight expects (the rehearsal goes through it as a real run)."
    inputs = write_inputs(tmp_path/'inputs', core.load_scale(scale))
    # optional inputs have defaults; ConsisID's folder is read only when a baseline names it, and its face models need torchvision
    assert set(inputs) == {k for k in core.REAL_INPUTS if k not in ('raft_weights', 'eval_prompts', 'consisid_dir')}
    cfg = core.load_scale(scale, rehearsal_params(scale, inputs, tmp_path/'params'))
    assert preflight(cfg) == [], preflight(cfg)
    assert cfg.device == 'cpu' and cfg.num_frames % 4 == 1 and cfg.num_frames == load_rehearsal()['settings']['num_frames']

def _tiny_chain_files() -> set[str]:
    """The table and figure names the chain writes at tiny (as committed in reports/tiny/), less the per-method mp4s of
    `magicid/`: which methods run is the scale's (the ID adapter is tiny's, Magic-Me is not built for HunyuanVideo)."""
    out = subprocess.run(['git', 'ls-files', 'reports/tiny'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {Path(p).name for p in out.split() if not p.startswith('reports/tiny/magicid/')}

# the models each rehearsal runs (nbs/params/rehearse.yaml: one ablation; h100 adds Magic-Me), as 15_magicid names their mp4s
REHEARSED_MODELS = {'h100': ('dreambooth', 'magicme', 'magicid', 'r_id'), 'paper': ('dreambooth', 'magicid', 'r_id')}

def test_rehearsals_end_to_end(tmp_path):
    """`magicid-run --scale SCALE --rehearse` exits 0 for both real scales, lists what it wrote, and writes every file of
    the tiny chain. The two run side by side, one torch thread each: their tiny models leave a core mostly idle while
    kernels start and libraries import, so together they take little more than one alone on this 2-core machine."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    procs = {s: subprocess.Popen([RUN, '--scale', s, '--rehearse', '--no-progress'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env={**env, 'MAGICID_REPORTS_DIR': str(tmp_path/s)}) for s in core.REAL_SCALES}
    outs = {s: p.communicate() for s, p in procs.items()}
    tiny = _tiny_chain_files()
    for scale, p in procs.items():
        stdout, stderr = outs[scale]
        assert p.returncode == 0, f"{scale}: " + stdout[-3000:] + stderr[-3000:]
        root = tmp_path/scale
        out = root/f'rehearse-{scale}'
        written = {q.name for q in out.rglob('*') if q.is_file()}
        listed = {Path(l.strip()).name for l in stdout.splitlines() if l.startswith('  rehearse-')}
        assert listed == written, scale
        summary = json.loads((root/'runs'/f'rehearse-{scale}'/'summary.json').read_text())
        assert [n['notebook'] for n in summary['notebooks']] == core.load_chain()
        assert not (root/scale).exists()                      # the rehearsal never writes the real scale's reports
        missing = sorted(tiny - written)
        assert not missing, f"the rehearsal of {scale} did not write: {missing}"
        videos = {q.name for q in (out/'magicid').glob('*.mp4')}
        assert videos == {f'{m}_{i}.mp4' for m in REHEARSED_MODELS[scale] for i in (0, 1)}, (scale, sorted(videos))
