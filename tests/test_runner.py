"""The papermill runner: bad scales and parameters, a failing notebook mid-chain, and the smoke chain end to end."""
import json, os, subprocess, sys
from pathlib import Path
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from magicid import core
from magicid.run import ChainError, run_chain

ROOT = Path(__file__).resolve().parent.parent
RUN = str(Path(sys.executable).parent/'magicid-run')

def _cli(*args, env=None):
    return subprocess.run([RUN, *args], capture_output=True, text=True, env={**os.environ, **(env or {})})

@pytest.mark.parametrize('args, message', [
    (['--scale', 'huge'], "scale='huge' is not valid; choose one of: smoke, tiny, h100, paper"),
    (['--scale', 'smoke', '-p', 'toy_stepz=3'], "no notebook of the chain has a parameter 'toy_stepz'; valid: "),
    (['--scale', 'smoke', '-p', '01_dpo.nope=3'], "01_dpo: unknown parameter 'nope'; valid parameters: seed, beta"),
    (['--scale', 'smoke', '--set', 'lr=fast'], "lr='fast' must be a number"),
    (['--scale', 'smoke', '--set', 'gpus=8'], "--set setting='gpus' is not valid; choose one of: device"),
    (['--scale', 'smoke', '--only', '99_nothing'], "--only notebook='99_nothing' is not valid; choose one of: 01_dpo"),
    (['--scale', 'smoke', '-p', '19_paperindex.index_dir=x'], "19_paperindex: 'index_dir' is set by the runner, not by a scale file or -p"),
])
def test_cli_rejects_bad_names(args, message, run_cli):
    r = run_cli(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and 'Traceback' not in r.stderr

def test_cli_list(run_cli):
    r = run_cli('--scale', 'tiny', '--list')
    assert r.returncode == 0 and 'toy_dpo_steps=600' in r.stdout, r.stderr

def _notebook(path, *sources):
    cells = [new_code_cell("scale = 'smoke'\nreports_dir = None", metadata={'tags': ['parameters']}),
             new_code_cell("from magicid import core\nout = core.reports_dir(scale, reports_dir)")]
    cells += [new_code_cell(s) for s in sources]
    nbformat.write(new_notebook(cells=cells, metadata={'kernelspec': {'name': 'python3', 'language': 'python', 'display_name': 'python3'}}), path)

def test_failing_notebook_stops_chain_and_keeps_reports(tmp_path, monkeypatch):
    nbs, params, reports = tmp_path/'nbs', tmp_path/'params', tmp_path/'reports'
    nbs.mkdir(); params.mkdir()
    monkeypatch.setenv('MAGICID_REPORTS_DIR', str(reports))
    _notebook(nbs/'a_good.ipynb', "core.save_table([dict(x=1)], out/'good.md')")
    _notebook(nbs/'b_bad.ipynb', "core.save_table([dict(x='new')], out/'shared.md')", "y = 1\nz = y/0")
    _notebook(nbs/'c_after.ipynb', "core.save_table([dict(x=3)], out/'after.md')")
    (params/'chain.yaml').write_text('chain: [a_good, b_bad, c_after]\n')
    (params/'smoke.yaml').write_text('settings: {}\nnotebooks: {}\n')
    core.save_table([dict(x='old')], reports/'smoke'/'shared.md')               # a table from an earlier run
    with pytest.raises(ChainError) as e:
        run_chain('smoke', nbs=nbs, params=params, progress=False, log=lambda *a, **k: None)
    err = e.value
    assert (err.notebook, err.cell, err.line, err.ename) == ('b_bad', 3, 'y = 1', 'ZeroDivisionError')
    assert 'b_bad.ipynb failed in cell 3' in str(err)
    assert (reports/'smoke'/'good.md').exists()                                # notebooks before it landed
    assert 'old' in (reports/'smoke'/'shared.md').read_text()                  # its half-done output did not
    assert not (reports/'smoke'/'after.md').exists()                           # the chain stopped
    assert not list((reports/'.staging').rglob('*.md'))                        # nothing left in staging
    assert (reports/'runs'/'smoke'/'b_bad.ipynb').exists()                     # the executed notebook, for the traceback

def test_a_run_reads_settings_no_other_run_can_change(tmp_path, monkeypatch):
    "The notebooks read this run's own copy of the effective settings; runs/<scale>/params/ is only the record."
    nbs, params, reports = tmp_path/'nbs', tmp_path/'params', tmp_path/'reports'
    nbs.mkdir(); params.mkdir()
    monkeypatch.setenv('MAGICID_REPORTS_DIR', str(reports))
    _notebook(nbs/'a.ipynb', "import os\nfrom pathlib import Path\nd = Path(os.environ['MAGICID_PARAMS_DIR'])",
              "assert d.name.startswith('.params-') and d != core.reports_root()/'runs'/'smoke'/'params', d",
              "(core.reports_root()/'runs'/'smoke'/'params'/'smoke.yaml').write_text('settings: {seed: oops}')   # another run's record",
              "assert core.load_scale('smoke').seed == 0")
    (params/'chain.yaml').write_text('chain: [a]\n')
    (params/'smoke.yaml').write_text('settings: {}\nnotebooks: {}\n')
    run_chain('smoke', nbs=nbs, params=params, progress=False, log=lambda *a, **k: None)
    assert not list((reports/'runs'/'smoke').glob('.params-*'))                # removed at the end

def test_smoke_chain_end_to_end(tmp_path):
    "`magicid-run --scale smoke` runs the whole chain and writes its figures and tables."
    r = _cli('--scale', 'smoke', '--no-progress', env={'MAGICID_REPORTS_DIR': str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path/'smoke'
    for name in ('world_actions.png', 'world_flow_check.md', 'dpo_optimal_policy.png', 'dpo_bradley_terry.png', 'dpo_jensen_gap.png', 'dpo_kl_is_eps_error.png',
                 'dpo_sign_conventions.png', 'dpo_toy_experiment.png', 'dpo_checks.md', 'dpo_toy_experiment.md',
                 'backbone_acceptance.md', 'backbone_grid_actions.png', 'fig2b_dreambooth_dynamics.png', 'selection_frontiers.png',
                 'hpo_sanity.png', 'magicid_vs_dreambooth.md', 'magicid_samples.png', 'table2_pair_selection.md', 'fig2_both_methods.png',
                 'fig8_user_study_TEST_VOTES.png', 'user_study_status.md', 'README.md'):
        assert (out/name).stat().st_size > 0, name
    summary = json.loads((tmp_path/'runs'/'smoke'/'summary.json').read_text())
    assert [n['notebook'] for n in summary['notebooks']] == core.load_chain()
    assert 'False' not in (out/'dpo_checks.md').read_text()
