"""The package's structure rules (bench/structure.py): module sizes, no import cycle, the backbone apart from the
instruments, imports inside functions only with a reason. Run on the package, and on a broken one to show it can fail."""
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT/'bench'/'structure.py'

def _run(*args):
    r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
    return r.returncode, {d['fact']: d for d in map(json.loads, r.stdout.splitlines())}, r.stderr

def test_the_package_keeps_the_rules():
    rc, facts, err = _run()
    assert rc == 0, json.dumps({k: v for k, v in facts.items() if not v['ok']}, indent=1) + err

def test_a_broken_package_is_caught(tmp_path):
    pkg = tmp_path/'pkg'; pkg.mkdir()
    (pkg/'backbone.py').write_text('from . import identity\n')
    (pkg/'identity.py').write_text('from .backbone import x\n' + 'y = 1\n'*500)
    (pkg/'motion.py').write_text('def f():\n    from . import identity\n    from . import backbone  # lazy: a reason\n')
    rc, facts, _ = _run('--package', str(pkg))
    assert rc == 1
    assert facts['module_lines']['over'] == {'identity': 501}
    assert facts['import_cycles']['cycles'] == [['backbone', 'identity']]
    assert facts['backbone_imports_instruments']['instruments'] == ['identity']
    assert facts['imports_inside_functions']['without_comment'] == ['motion.py:2 (identity)']
