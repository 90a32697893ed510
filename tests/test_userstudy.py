"""The user-study app (`magicid.userstudy`, nbs/17_userstudy.ipynb) end to end: a real headless browser votes on three
sets and the votes are in SQLite; the server refuses bad votes with a 4xx and stores nothing; a server killed with
SIGKILL mid-study loses no vote and the rater resumes at the next set; `make_study` names bad inputs."""
import json, os, shutil, signal, socket, sqlite3, subprocess, sys, time, urllib.error, urllib.request
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from magicid.userstudy import CRITERIA, add_raters, make_study, serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
METHODS = ['m_one', 'm_two', 'm_three']
SET_IDS = ['s0', 's1', 's2']
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # 127.0.0.1 never through a proxy of the environment
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']


def _gif(path: Path, seed: int) -> Path:
    "A 4-frame 16×16 animated GIF of noise (every seed a different file)."
    rng = np.random.default_rng(seed)
    frames = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(4)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=120, loop=0)
    return path


def _sets(src: Path) -> list[dict]:
    src.mkdir(parents=True, exist_ok=True)
    out = []
    for i, sid in enumerate(SET_IDS):
        ref = src/f'ref{i}.png'
        Image.fromarray(np.random.default_rng(100 + i).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(ref)
        out.append(dict(set_id=sid, prompt=f'a person waves, set {i}', refs=[ref],
                        videos={m: _gif(src/f'v{i}{j}.gif', 10*i + j) for j, m in enumerate(METHODS)}))
    return out


@pytest.fixture
def study(tmp_path) -> Path:
    make_study(tmp_path/'study', _sets(tmp_path/'src'))
    return tmp_path/'study'


def _http(base: str, path: str, token: str | None = None, body: str | None = None):
    "(status, answer) of one request; a JSON answer is parsed."
    req = urllib.request.Request(base + path, data=None if body is None else body.encode(),
                                 headers={'X-Token': token} if token else {})
    try: r = NO_PROXY.open(req, timeout=30); status = r.status
    except urllib.error.HTTPError as e: r, status = e, e.code
    data = r.read()
    return status, json.loads(data) if r.headers.get('Content-Type') == 'application/json' else data


def _counts(study: Path) -> tuple:
    con = sqlite3.connect(study/'votes.sqlite')
    try: return tuple(con.execute(f'SELECT COUNT(*) FROM {t}').fetchone()[0] for t in ('raters', 'shown', 'votes'))
    finally: con.close()


def _votes(study: Path) -> list[tuple]:
    con = sqlite3.connect(study/'votes.sqlite')
    try: return con.execute('SELECT rater, set_id, criterion, method, slot, method_order FROM votes ORDER BY rater, set_id, criterion').fetchall()
    finally: con.close()


def _browser():
    "(sync_playwright, chromium path), or (None, why not)."
    try: from playwright.sync_api import sync_playwright
    except ImportError: return None, 'the Python package playwright is not installed (pip install playwright)'
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    if exe is None: return None, 'no chromium browser on this machine (Debian: apt-get install chromium)'
    return (sync_playwright, exe), ''


def test_a_browser_votes_on_three_sets_and_sqlite_has_them(study):
    found, why = _browser()
    if found is None: pytest.skip(why)
    sync_playwright, exe = found
    (rid, token), (other, _) = add_raters(study, 2)          # the second rater must get none of these votes
    sj = json.loads((study/'study.json').read_text())
    method_of = {'/media/' + f: m for s in sj['sets'] for m, f in s['videos'].items()}   # the test's own key to the blind slots
    srv, base = serve_in_thread(study)
    expected = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(f'{base}/r/{token}')
                for k in range(3):
                    page.wait_for_selector(f'body[data-progress="{k}"] #study', state='visible', timeout=20_000)
                    assert page.inner_text('#progress') == f'Set {k + 1} of 3'
                    html = page.content()
                    assert not any(m in html for m in METHODS), 'the page names a method: not blind'
                    sid = page.get_attribute('#study', 'data-set-id')
                    urls = {f.get_attribute('data-slot'): f.query_selector('img').get_attribute('src')
                            for f in page.query_selector_all('#videos figure')}
                    assert sorted(urls) == ['A', 'B', 'C'] and len(page.query_selector_all('#refs img')) == 1
                    assert not page.is_enabled('#submit')            # not before every criterion has an answer
                    for i, c in enumerate(CRITERIA):
                        slot = 'ABC'[(i + k) % 3]
                        page.check(f'input[name="{c}"][value="{slot}"]')
                        expected[sid, c] = (slot, method_of[urls[slot]])
                    page.click('#submit')
                page.wait_for_selector('body[data-done="1"]', timeout=20_000)
                assert page.inner_text('#progress') == 'All 3 sets done. Thank you!'
                assert page.inner_text('#msg') == ''
            finally:
                browser.close()
    finally:
        srv.shutdown(); srv.server_close()
    rows = _votes(study)
    assert len(rows) == 3*len(CRITERIA) and {r[0] for r in rows} == {rid}
    assert {(s, c): (slot, m) for _, s, c, m, slot, _ in rows} == expected          # set, criterion, slot → method
    assert all(json.loads(order)['ABC'.index(slot)] == m for *_, m, slot, order in rows)   # the stored order agrees
    assert _counts(study) == (2, 3, 12)


def test_bad_votes_are_refused_and_store_nothing(study):
    (r1, t1), (r2, t2) = add_raters(study, 2)
    srv, base = serve_in_thread(study)
    try:
        status, nx = _http(base, '/api/next', t1)
        assert status == 200 and not any(m in json.dumps(nx) for m in METHODS)        # blind
        shown_to_2 = _http(base, '/api/next', t2)[1]['set_id']
        never = [s for s in SET_IDS if s not in (nx['set_id'], shown_to_2)] or ['no-such-set']
        good = dict(rater=r1, set_id=nx['set_id'], choices=dict.fromkeys(CRITERIA, 'A'))
        vote = lambda **kw: json.dumps({**good, **kw})
        cases = [('malformed JSON', t1, '{"rater": 1, "set_id"', 400),
                 ('not the vote object', t1, '[1, 2, 3]', 400),
                 ('missing criterion', t1, vote(choices={'id_consistency': 'A'}), 400),
                 ('unknown criterion', t1, vote(choices={**good['choices'], 'beauty': 'A'}), 400),
                 ('unknown slot', t1, vote(choices={**good['choices'], 'dynamic_degree': 'D'}), 400),
                 ('missing token', None, vote(), 401),
                 ('wrong token', 'x' * 24, vote(), 401),
                 ("another rater's id", t1, vote(rater=r2), 403),
                 ('a set never shown', t1, vote(set_id=never[0]), 403)]
        if shown_to_2 != nx['set_id']: cases.append(('a set shown only to another rater', t1, vote(set_id=shown_to_2), 403))
        for name, token, body, want in cases:
            before = _counts(study)
            status, answer = _http(base, '/api/vote', token, body)
            assert (status, _counts(study)) == (want, before), name
            assert isinstance(answer, dict) and answer['error'], name
        assert _http(base, '/api/vote', t1, vote()) == (200, dict(ok=True, progress=dict(done=1, total=3)))
        before = _counts(study)
        status, answer = _http(base, '/api/vote', t1, vote(choices=dict.fromkeys(CRITERIA, 'B')))
        assert status == 409 and 'already voted' in answer['error'] and _counts(study) == before
        assert {r[3] for r in _votes(study)} == {json.loads(_votes(study)[0][5])[0]}    # the first vote, slot A, untouched
        for path in ('/media/study.json', '/media/votes.sqlite', '/media/../study.json', '/r/' + 'x' * 24):
            assert _http(base, path)[0] in (401, 404), path
    finally:
        srv.shutdown(); srv.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _start(study: Path, port: int, log: Path, token: str) -> subprocess.Popen:
    "`python -m magicid.userstudy serve` in its own process, once it answers."
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.Popen([sys.executable, '-m', 'magicid.userstudy', 'serve', str(study), '--port', str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log, 'ab'))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None: pytest.fail(f'the server exited ({proc.returncode}): {log.read_text()}')
        try:
            if _http(f'http://127.0.0.1:{port}', '/api/next', token)[0] == 200: return proc
        except (urllib.error.URLError, ConnectionError): time.sleep(0.1)
    proc.kill(); pytest.fail(f'the server did not answer within 60 s: {log.read_text()}')


def test_a_killed_server_loses_no_vote_and_the_rater_resumes(study, tmp_path):
    port, log = _free_port(), tmp_path/'server.log'
    cli = subprocess.run([sys.executable, '-m', 'magicid.userstudy', 'raters', str(study), '-n', '1', '--port', str(port)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    link, = cli.stdout.split()
    assert link.startswith(f'http://127.0.0.1:{port}/r/') and '1 rater(s) added' in cli.stderr
    token, base = link.rsplit('/', 1)[1], f'http://127.0.0.1:{port}'
    proc = _start(study, port, log, token)
    try:
        for k in range(2):
            nx = _http(base, '/api/next', token)[1]
            body = json.dumps(dict(rater=nx['rater'], set_id=nx['set_id'], choices=dict.fromkeys(CRITERIA, 'ABC'[k])))
            assert _http(base, '/api/vote', token, body)[0] == 200
        third = _http(base, '/api/next', token)[1]                      # shown, not voted on
        votes = _votes(study)
        proc.send_signal(signal.SIGKILL); proc.wait(timeout=30)
        assert len(votes) == 2*len(CRITERIA)
        proc = _start(study, port, log, token)
        assert _votes(study) == votes                                   # every vote is still there
        again = _http(base, '/api/next', token)[1]
        assert again == third and again['progress'] == dict(done=2, total=3)   # the same set, the same slot order
        body = json.dumps(dict(rater=again['rater'], set_id=again['set_id'], choices=dict.fromkeys(CRITERIA, 'C')))
        assert _http(base, '/api/vote', token, body)[1]['progress'] == dict(done=3, total=3)
        assert _http(base, '/api/next', token)[1]['done'] is True
    finally:
        proc.kill(); proc.wait(timeout=30)
    assert 'serving' in log.read_text() and token not in log.read_text()   # tokens stay out of the log


def test_make_study_names_bad_inputs(tmp_path):
    sets = _sets(tmp_path/'src')
    bad = lambda **kw: [sets[0], {**sets[1], **kw}]
    v1 = sets[1]['videos']
    cases = [(bad(refs=[tmp_path/'gone.png']), FileNotFoundError, f"set 's1' (sets[1]) refs[0]: {tmp_path/'gone.png'} does not exist"),
             (bad(videos={**v1, 'm_two': tmp_path/'gone.gif'}), FileNotFoundError, f"set 's1' (sets[1]) videos['m_two']: {tmp_path/'gone.gif'} does not exist"),
             (bad(videos={'m_one': v1['m_one']}), ValueError, "set 's1' (sets[1]): videos must map at least 2 methods"),
             (bad(videos={**v1, 'm_four': v1['m_one']}), ValueError, "set 's1' (sets[1]): methods ['m_four', 'm_one', 'm_three', 'm_two'] differ from those of set 's0' (sets[0])"),
             (bad(set_id='s0'), ValueError, "set 's0' (sets[1]): duplicate set_id, already used by sets[0]"),
             (bad(videos={**v1, 'm_one': sets[1]['refs'][0]}), ValueError, f"set 's1' (sets[1]) videos['m_one']: {sets[1]['refs'][0]} is a .png file; use .gif, .mp4, .webm"),
             (bad(prompt=''), ValueError, "set 's1' (sets[1]): prompt='' must be a non-empty str"),
             ([], ValueError, 'sets: expected a non-empty list')]
    for sets_, exc, msg in cases:
        with pytest.raises(exc) as e: make_study(tmp_path/'study', sets_)
        assert msg in str(e.value), (msg, str(e.value))
        assert not (tmp_path/'study').exists()                         # checked before anything is written
    make_study(tmp_path/'study', sets)
    with pytest.raises(FileExistsError, match='study.json exists'): make_study(tmp_path/'study', sets)
