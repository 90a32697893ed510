"""The repository's own rules: notebooks and magicid/ in sync and clean, no torchvision on a CPU machine."""
import importlib.util, os, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

def _tracked(root):
    out = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=root, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split('\0') if p]

@pytest.mark.skipif(not (ROOT/'.git').exists(), reason='needs a git checkout')
def test_export_and_clean_change_nothing(tmp_path):
    "nbdev_export and nbdev_clean, run on a copy, must rewrite no file: magicid/ is exported and the notebooks are clean."
    for rel in _tracked(ROOT):
        if (ROOT/rel).is_file():
            (tmp_path/rel).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT/rel, tmp_path/rel)
    for cmd in ('nbdev_export', 'nbdev_clean'):
        subprocess.run([str(BIN/cmd)], cwd=tmp_path, check=True, capture_output=True)
    changed = [str(p.relative_to(tmp_path)) for p in sorted(tmp_path.rglob('*'))
               if p.is_file() and p.suffix in ('.py', '.ipynb') and p.relative_to(tmp_path).parts[0] in ('magicid', 'nbs')
               and (not (ROOT/p.relative_to(tmp_path)).exists() or p.read_bytes() != (ROOT/p.relative_to(tmp_path)).read_bytes())]
    assert not changed, f"run `make sync` (nbdev_export + nbdev_clean) and commit; these would change: {changed}"

def test_no_torchvision_on_cpu():
    "torchvision's only wheel is CUDA-linked; on a CPU machine it breaks peft, diffusers' Wan model and transformers' CLIP."
    import torch
    if torch.cuda.is_available(): pytest.skip('GPU machine: torchvision belongs to the gpu extra')
    assert importlib.util.find_spec('torchvision') is None, "uninstall torchvision: it is only for `pip install -e .[gpu]` on a GPU machine"

def test_import_without_gpu():
    r = subprocess.run([sys.executable, '-c', 'import magicid.dpo, magicid.run, magicid.core; print("ok")'],
                       capture_output=True, text=True, env={**os.environ, 'CUDA_VISIBLE_DEVICES': ''})
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr

def test_parameters_tag_survives_clean():
    "papermill needs the `parameters` tag; nbdev_clean keeps it only through settings.ini's allowed_cell_metadata_keys."
    import nbformat
    nb = nbformat.read(ROOT/'nbs'/'01_dpo.ipynb', as_version=4)
    assert any('parameters' in c.metadata.get('tags', []) for c in nb.cells)
