"""Shared test set-up: reports go to a temporary folder, never into the checked-in reports/."""
import os, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# set at import time, before any notebook or subprocess reads it
os.environ['MAGICID_REPORTS_DIR'] = tempfile.mkdtemp(prefix='magicid-reports-')
os.environ.setdefault('MPLBACKEND', 'Agg')

def pytest_collection_modifyitems(config, items):
    """The smoke chain (`tests/test_runner.py::test_smoke_chain_end_to_end`) executes every cell of every notebook of
    the chain, checks included; when it is collected, the same notebooks are not run a second time by
    `tests/test_notebooks.py` (which still runs them when selected on their own, e.g. `-k 03_identity`)."""
    if not any(i.name == 'test_smoke_chain_end_to_end' for i in items): return
    from magicid.core import load_chain
    chain = set(load_chain())
    covered = [i for i in items if i.originalname == 'test_notebook' and i.callspec.id in chain]
    if covered:
        config.hook.pytest_deselected(items=covered)
        items[:] = [i for i in items if i not in covered]
