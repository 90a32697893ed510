"""Shared test set-up: reports go to a temporary folder, never into the checked-in reports/."""
import os, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# set at import time, before any notebook or subprocess reads it
os.environ['MAGICID_REPORTS_DIR'] = tempfile.mkdtemp(prefix='magicid-reports-')
os.environ.setdefault('MPLBACKEND', 'Agg')
