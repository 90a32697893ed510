"""Shared test set-up: reports go to a temporary folder, never into the checked-in reports/; torch's structured trace
stays out of test output; the tiny random backbone the tests build, in one place."""
import logging, os, tempfile
from pathlib import Path
from types import SimpleNamespace
import pytest
from magicid.core import load_chain

ROOT = Path(__file__).resolve().parent.parent
# set at import time, before any notebook or subprocess reads it
os.environ['MAGICID_REPORTS_DIR'] = tempfile.mkdtemp(prefix='magicid-reports-')
os.environ.setdefault('MPLBACKEND', 'Agg')
# torch.compile logs its structured trace (for TORCH_TRACE / tlparse files) at DEBUG to the logger 'torch.__trace';
# pytest captures every level and printed ~220 of those lines with a failing compile test. Off unless TORCH_TRACE asks.
if not os.environ.get('TORCH_TRACE'):
    logging.getLogger('torch.__trace').disabled = True


@pytest.fixture(scope='session')
def small_pipe():
    "A factory: `small_pipe(seed=0, **cfg_overrides)` builds a fresh `BackboneConfig.small` backbone (1 layer, random)."
    from magicid.backbone import BackboneConfig, build_tiny    # lazy: the backbone's imports (diffusers, transformers) only for tests that use it
    def make(seed: int = 0, **cfg_overrides):
        return build_tiny(BackboneConfig.small(**cfg_overrides), seed=seed)
    return make


@pytest.fixture(scope='session')
def small_backbone_dir(small_pipe, tmp_path_factory):
    "A saved `BackboneConfig.small` backbone (seed 1), to load with `load_backbone`; tests must not write into it."
    from magicid.backbone import save_backbone                 # lazy: as above
    return save_backbone(small_pipe(seed=1), tmp_path_factory.mktemp('small-backbone')/'backbone')

def pytest_collection_modifyitems(config, items):
    """The smoke chain (`tests/test_runner.py::test_smoke_chain_end_to_end`) executes every cell of every notebook of
    the chain, checks included; when it is collected, the same notebooks are not run a second time by
    `tests/test_notebooks.py` (which still runs them when selected on their own, e.g. `-k 03_identity`)."""
    if not any(i.name == 'test_smoke_chain_end_to_end' for i in items): return
    chain = set(load_chain())
    covered = [i for i in items if i.originalname == 'test_notebook' and i.callspec.id in chain]
    if covered:
        config.hook.pytest_deselected(items=covered)
        items[:] = [i for i in items if i not in covered]


@pytest.fixture(scope='session')
def random_clip(tmp_path_factory):
    "A tiny random CLIP folder of the real classes (`rehearse.write_random_clip`); tests must not write into it."
    from magicid.rehearse import write_random_clip             # lazy: transformers only for tests that use it
    return write_random_clip(tmp_path_factory.mktemp('random-clip'))


def _in_process(main, monkeypatch, capsys, args, reports=None):
    if reports is not None: monkeypatch.setenv('MAGICID_REPORTS_DIR', str(reports))
    capsys.readouterr()
    try: rc = main(list(args))
    except SystemExit as e: rc = e.code                       # argparse's own errors
    out = capsys.readouterr()
    return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)

@pytest.fixture
def run_cli(monkeypatch, capsys):
    """`magicid-run ARGS` in this process, without an interpreter's start-up (about 7 s each, most of it importing
    diffusers): a result with .returncode, .stdout, .stderr; `reports=` sets MAGICID_REPORTS_DIR for the call. The
    console script itself runs as a subprocess in the smoke chain and in the preflight's end-to-end test."""
    from magicid.run import main                               # lazy: as above
    return lambda *args, reports=None: _in_process(main, monkeypatch, capsys, args, reports)

@pytest.fixture
def customize_cli(monkeypatch, capsys):
    "`magicid ARGS` (magicid.customize.main) in this process, as `run_cli`; the kill/resume test runs the console script."
    from magicid.customize import main                         # lazy: as above
    return lambda *args: _in_process(main, monkeypatch, capsys, args)
