"""Each notebook's own checks, run with nbdev's test runner (cells flagged with settings.ini's tst_flags are skipped)."""
from configparser import ConfigParser
from pathlib import Path
import pytest
from nbdev import test as nbdev_test

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))
cfg = ConfigParser(); cfg.read(ROOT/'settings.ini')
SKIP_FLAGS = cfg['DEFAULT'].get('tst_flags', '').split('|')

def test_there_are_notebooks(): assert len(NOTEBOOKS) >= 3

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook(nb):
    ok, secs = nbdev_test.test_nb(nb, skip_flags=SKIP_FLAGS, basepath=ROOT)
    assert ok, f"{nb.name} failed (traceback above, in the captured stderr)"
