"""Wall time of `make reproduce` on this machine: runs the chain of one scale through the runner (`magicid.run`, the
code path of `magicid-run --scale S`) a notebook at a time and prints JSON — one line per notebook as it finishes
(seconds, files written), then one line with the whole (total, machine, peak RSS of the kernels).

At `tiny` this is hours on a 2-core CPU: `15_magicid`, `15c_fig2` and `16_study` customize people. They keep their
runs in `reports/runs/<scale>/work/` and resume, so a notebook timed over a folder that already holds runs measures only
the work left: the output says `"resumed": true` then, and such a total is not the wall time of a fresh
`make reproduce` (move the folder aside first for that).

Usage: .venv/bin/python bench/reproduce.py [--scale tiny] [--only NOTEBOOK ...] [-p NOTEBOOK.NAME=VALUE ...]
"""
import argparse, json, os, platform, resource, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--scale', default='tiny')
    ap.add_argument('--only', action='append', default=None, metavar='NOTEBOOK')
    ap.add_argument('-p', dest='overrides', action='append', default=[], metavar='[NOTEBOOK.]NAME=VALUE')
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from magicid import core, run
    _, steps = run.plan(a.scale, (), a.overrides, a.only)           # a bad scale, notebook or parameter fails here
    work = core.reports_root()/'runs'/a.scale/'work'
    resumed = work.is_dir() and any(work.iterdir())
    rows, t_all = [], time.time()
    for s in steps:
        t0 = time.time()
        rec = run.run_chain(a.scale, (), a.overrides, [s.notebook], progress=False, log=lambda *x, **k: None)[0]
        rows.append(dict(notebook=s.notebook, seconds=round(time.time() - t0, 1), files=len(rec['files'])))
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps(dict(scale=a.scale, notebooks=len(rows), total_s=round(time.time() - t_all, 1), resumed=resumed,
                          per_notebook={r['notebook']: r['seconds'] for r in rows}, cpus=os.cpu_count(), machine=platform.machine(),
                          peak_rss_children_mb=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024))), flush=True)


if __name__ == '__main__':
    main()
