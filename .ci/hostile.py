#!/usr/bin/env python
"""Hostile-user harness (issue 24): run each bad or careless use of `codi-generate`, `codi-toyworld` and the loaders as a
user would (the console scripts, or a small `python -c` program), each in a fresh temporary folder, and classify it:

  traceback            stderr shows a Python traceback (or the API raised a bug-shaped error: IndexError, KeyError, ...)
  clear error          non-zero exit, one line naming the problem (the case's expected phrase is in the last stderr line)
  unclear error        non-zero exit without a traceback, but the last line does not name the problem
  fine                 exit 0 and the case's validator accepts the outputs
  silently wrong       exit 0 but the validator fails (or a required warning is missing)
  lost/corrupt output  earlier files damaged, partial files / lock / staging folder left, a link target overwritten
  code ran             a payload's marker file appeared

Usage: PYTHONPATH=$PWD python .ci/hostile.py [--json out.json] [--only ID,ID] [--jobs 2]
Exit status 1 if any case is traceback, unclear error, silently wrong, lost/corrupt output or code ran.
"""
from __future__ import annotations
import argparse, concurrent.futures as cf, hashlib, json, os, shutil, signal, struct, subprocess, sys, tempfile, time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BAD = ('traceback', 'unclear error', 'silently wrong', 'lost/corrupt output', 'code ran')
GEN = ['--steps', '2', '--sampler', 'dpm']                    # every run that must generate: fast
ENV = {**os.environ, 'PYTHONPATH': str(REPO), 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1',
       'PYTHONUNBUFFERED': '1', 'MPLBACKEND': 'Agg'}
MARKER = 'PWNED'


def script(name: str) -> list[str]:
    "The console script on PATH, else the same entry point through this interpreter."
    found = shutil.which(name)
    if found: return [found]
    fn = {'codi-generate': 'generate_cli', 'codi-toyworld': 'toyworld_cli'}[name]
    return [sys.executable, '-c', f'import sys; from codi_nb.cli import {fn}; sys.argv[0] = {name!r}; '
                                  f'raise SystemExit({fn}())']


GENERATE, TOYWORLD = script('codi-generate'), script('codi-toyworld')


def api(body: str) -> list[str]:
    """A `python -c` program: `body` runs with `tmp` (the case folder, a Path) defined; an exception prints one line
    `ERROR <type>: <message>` and exits 1, unless it is a bug-shaped type (then the traceback is shown)."""
    prog = ('import sys, os, json, warnings\nfrom pathlib import Path\nimport numpy as np\ntmp = Path.cwd()\n'
            'try:\n' + ''.join(f'    {line}\n' for line in body.strip().splitlines()) +
            'except (IndexError, KeyError, AttributeError, ZeroDivisionError, NameError, UnboundLocalError, '
            'AssertionError, RecursionError):\n    raise\n'
            'except Exception as e:\n    print(f"ERROR {type(e).__name__}: {e}".replace("\\n", " "), file=sys.stderr)'
            '\n    sys.exit(1)\n')
    return [sys.executable, '-c', prog]


# ---------------------------------------------------------------- fixtures (no codi_nb import: plain file formats)
def sha(path: Path) -> str: return hashlib.sha256(path.read_bytes()).hexdigest()

def png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    from PIL import Image
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path

def image32(path: Path) -> Path:
    rng = np.random.default_rng(0)
    return png(path, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))

def wav(path: Path, wave: np.ndarray, rate: int = 16000, subtype: str = 'FLOAT') -> Path:
    import soundfile as sf
    sf.write(str(path), wave, rate, subtype=subtype)
    return path

def tone(n: int = 32000) -> np.ndarray: return (0.3 * np.sin(np.arange(n) * 2 * np.pi * 440 / 16000)).astype(np.float32)

def mp4(path: Path, frames: int = 8, size: int = 32, audio: bool = False, video: bool = True) -> Path:
    import av
    from fractions import Fraction
    with av.open(str(path), mode='w', format='mp4') as c:
        if video:
            s = c.add_stream('libx264', rate=4); s.width = s.height = size; s.pix_fmt = 'yuv420p'
        if audio:
            a = c.add_stream('aac', rate=16000); a.layout = 'mono'
        if video:
            rng = np.random.default_rng(0)
            for _ in range(frames):
                for p in s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                                                             format='rgb24')): c.mux(p)
            for p in s.encode(): c.mux(p)
        if audio:
            f = av.AudioFrame.from_ndarray(tone()[None], format='flt', layout='mono')
            f.sample_rate, f.pts, f.time_base = 16000, 0, Fraction(1, 16000)
            for p in a.encode(f): c.mux(p)
            for p in a.encode(): c.mux(p)
    return path

def png_header_only(path: Path, width: int, height: int) -> Path:
    "A tiny png whose header claims width x height pixels (the data is a few bytes)."
    def chunk(kind, data): return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0' * 64))
                     + chunk(b'IEND', b''))
    return path

def copy_checkpoint(tmp: Path, name: str) -> Path:
    for suffix in ('.json', '.safetensors'): shutil.copy(REPO / 'codi_nb/weights' / (name + suffix), tmp / ('m' + suffix))
    return tmp / 'm'

def edit_json(path: Path, fn: Callable[[dict], None]):
    meta = json.loads(path.read_text()); fn(meta); path.write_text(json.dumps(meta))

def rehash(tmp: Path):
    edit_json(tmp / 'm.json', lambda m: m.__setitem__('weights_sha256', sha(tmp / 'm.safetensors')))

def flip_tensor_bytes(tmp: Path, rehash_it: bool, nan: bool = False):
    data = bytearray((tmp / 'm.safetensors').read_bytes())
    header = 8 + struct.unpack('<Q', data[:8])[0]
    info = json.loads(data[8:header])
    key = next(k for k, v in info.items() if k != '__metadata__' and v['dtype'] == 'F32')
    start = header + info[key]['data_offsets'][0]
    if nan: data[start:start + 4] = struct.pack('<f', float('nan'))
    else: data[start + 1] ^= 0xFF; data[start + 2] ^= 0x0F
    (tmp / 'm.safetensors').write_bytes(bytes(data))
    if rehash_it: rehash(tmp)


# ---------------------------------------------------------------- validators of outputs
def no_leftovers(out: Path) -> str | None:
    if not out.exists(): return None
    left = [p.name for p in out.iterdir() if p.name.startswith('.codi')]
    return f'left behind: {left}' if left else None

def check_file(path: Path) -> str | None:
    "None if `path` decodes as the output it claims to be, else why not."
    try:
        if path.suffix == '.png':
            from PIL import Image
            with Image.open(path) as im: im.load(); assert im.size == (32, 32), im.size
        elif path.suffix == '.wav':
            import soundfile as sf
            wave, rate = sf.read(str(path)); assert rate == 16000 and len(wave) == 32000, (rate, len(wave))
            assert np.isfinite(wave).all()
        elif path.suffix == '.mp4':
            import av
            with av.open(str(path)) as c: n = sum(1 for _ in c.decode(video=0))
            assert n == 8, f'{n} frames'
        elif path.suffix == '.npy':
            x = np.load(path); assert x.shape == (8, 32, 32, 3) and x.dtype == np.uint8, (x.shape, x.dtype)
        elif path.suffix == '.txt': assert path.read_text().strip()
        elif path.suffix == '.json': json.loads(path.read_text())
    except Exception as e: return f'{path.name}: {type(e).__name__} {e}'
    return None

def generated(out: Path, to: str, n: int) -> str | None:
    "The folder holds exactly one complete run: n samples of `to`, every file decoding, the settings JSON listing them."
    if (why := no_leftovers(out)): return why
    settings = out / f'{to.replace(",", "_")}_settings.json'
    if not settings.is_file(): return f'no {settings.name}'
    listed = set(json.loads(settings.read_text())['outputs'])
    present = {p.name for p in out.iterdir() if not p.name.startswith('.')} - {settings.name}
    if listed != present: return f'settings lists {sorted(listed ^ present)} differently from the folder'
    kinds = to.split(',')
    suffixes = {'image': ['.png'], 'audio': ['.wav'], 'text': ['.txt'], 'video': ['.mp4', '.npy']}
    expect = {f'{m}_{i:03d}{s}' for m in kinds for i in range(n) for s in suffixes[m]}
    if {'video', 'audio'} <= set(kinds): expect |= {f'video_audio_{i:03d}.mp4' for i in range(n)}
    if present != expect: return f'files {sorted(present ^ expect)[:4]} differ from the {n} expected samples'
    for p in sorted(out.iterdir()):
        if not p.name.startswith('.') and (why := check_file(p)): return why
    return None

def untouched(out: Path) -> str | None:
    "Nothing but the lock-free, staging-free folder (no outputs written)."
    if not out.exists(): return None
    left = [p.name for p in out.iterdir()]
    return f'the refused run left {left}' if left else None


# ---------------------------------------------------------------- cases
@dataclass
class Case:
    id: str
    what: str
    expect: str                                            # 'clear error' or 'fine'
    cmd: Callable[[Path], list[str]] | list[str] | None = None   # the command (or a function of the case folder)
    setup: Callable[[Path], None] = lambda tmp: None
    phrase: str | tuple = ''                               # clear error: in the last stderr line (any of a tuple)
    validate: Callable[[Path, 'Run'], str | None] = lambda tmp, run: None   # fine: None if the outputs are right
    integrity: Callable[[Path, 'Run'], str | None] = lambda tmp, run: None  # always: lost/corrupt output, else None
    runner: Callable[['Case', Path], 'Run'] | None = None  # a special way to run it (signals, concurrency)
    forbid: str = ''                                       # a phrase the message must not contain
    max_s: float | None = None                             # a refusal must come within this many seconds
    exit_codes: tuple = ()                                 # a refusal must exit with one of these (empty: any non-0)

@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    note: str = ''
    extra: dict = field(default_factory=dict)

def run(cmd: list[str], cwd: Path, timeout: float = 300) -> Run:
    t = time.time()
    p = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, errors='replace')
    return Run(p.returncode, p.stdout, p.stderr, time.time() - t)

def last_line(text: str) -> str:
    lines = [l for l in text.replace('\r', '\n').splitlines() if l.strip()]
    return lines[-1].strip() if lines else ''

def gen(*args, to='image', out='out') -> Callable[[Path], list[str]]:
    return lambda tmp: [*GENERATE, *GEN, *args, '--to', to, '--out', out]       # the case's own options win

def tw(*args) -> Callable[[Path], list[str]]:
    return lambda tmp: [*TOYWORLD, *args]

def wants(phrase: str) -> Callable[[Path, Run], str | None]:
    "A validator: the run succeeded and said `phrase` (a required warning) on stderr."
    return lambda tmp, r: None if phrase.lower() in r.stderr.lower() else f'no warning containing {phrase!r}'

def both(*checks) -> Callable[[Path, Run], str | None]:
    def check(tmp, r):
        for c in checks:
            if (why := c(tmp, r)): return why
    return check


def signal_runner(sig: int, delay: float, when: str = 'generating', n: int = 24) -> Callable[[Case, Path], Run]:
    """Start a run, wait until it reaches `when` ('generating': its first stderr line; 'writing': a file staged), wait
    `delay` s more, send `sig`."""
    def go(case: Case, tmp: Path) -> Run:
        cmd = [*GENERATE, '--text', 'a red circle', '--to', 'video,audio', '--n', str(n), '--batch-size', str(n),
               '--out', 'out', *GEN]
        t = time.time()
        err = open(tmp / 'stderr.txt', 'w+')
        p = subprocess.Popen(cmd, cwd=tmp, env=ENV, stdout=subprocess.PIPE, stderr=err, text=True)
        reached = False
        while p.poll() is None and time.time() - t < 240:
            if when == 'generating': reached = 'generating' in (tmp / 'stderr.txt').read_text(errors='replace')
            else: reached = any(any(s.iterdir()) for s in (tmp / 'out').glob('.codi-partial-*') if s.is_dir())
            if reached: break
            time.sleep(0.02)
        time.sleep(delay)
        sent = p.poll() is None
        if sent: p.send_signal(sig)
        out, _ = p.communicate(timeout=120)
        err.seek(0); stderr = err.read(); err.close()
        return Run(p.returncode, out, stderr, time.time() - t,
                   note='' if sent and reached else 'the run ended before the signal' if not sent else 'not reached')
    return go

def interrupted_clean(tmp: Path, r: Run) -> str | None:
    out = tmp / 'out'
    if r.rc == 0: return generated(out, 'video,audio', 24)
    return untouched(out)

def concurrent_runner(case: Case, tmp: Path) -> Run:
    cmd = [*GENERATE, '--text', 'a red circle', '--to', 'image', '--n', '2', '--out', 'out', *GEN]
    t = time.time()
    ps = [subprocess.Popen(cmd, cwd=tmp, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for _ in range(4)]
    res = [p.communicate(timeout=300) for p in ps]
    rcs = [p.returncode for p in ps]
    errs = [e for _, e in res]
    won = rcs.count(0)
    refused = [e for rc, e in zip(rcs, errs) if rc != 0]
    ok_refusals = all(('in use by another run' in last_line(e) or 'already holds outputs' in last_line(e))
                      and 'Traceback' not in e for e in refused)
    tb = next((e for e in errs if 'Traceback (most recent call last)' in e), '')
    stderr = tb or (refused[0] if refused else errs[0])
    r = Run(0 if won == 1 and ok_refusals else 1, '', stderr, time.time() - t, note=f'exit codes {rcs}')
    r.extra['won'] = won; r.extra['ok_refusals'] = ok_refusals
    return r

def concurrent_check(tmp: Path, r: Run) -> str | None:
    if r.extra.get('won') != 1: return f'{r.extra.get("won")} runs succeeded ({r.note})'
    if not r.extra.get('ok_refusals'): return f'a refused run did not say why ({r.note})'
    return generated(tmp / 'out', 'image', 2)

def kill9_runner(when: str) -> Callable[[Case, Path], Run]:
    def go(case: Case, tmp: Path) -> Run:
        first = signal_runner(signal.SIGKILL, 0.3 if when == 'generating' else 0.0, when)(case, tmp)
        left = sorted(p.name for p in (tmp / 'out').iterdir()) if (tmp / 'out').exists() else []
        r = run([*GENERATE, '--text', 'a red circle', '--to', 'image', '--n', '2', '--out', 'out', *GEN], tmp)
        r.note = f'killed run: exit {first.rc} ({first.note or "killed " + when}), left {left}'
        return r
    return go

def second_run_setup(tmp: Path):
    r = run([*GENERATE, '--text', 'a red circle', '--to', 'image', '--n', '3', '--out', 'out', *GEN], tmp)
    assert r.rc == 0, r.stderr
    (tmp / 'before.json').write_text(json.dumps({p.name: sha(p) for p in (tmp / 'out').iterdir()}))

def earlier_intact(tmp: Path, r: Run) -> str | None:
    before = json.loads((tmp / 'before.json').read_text())
    now = {p.name: sha(p) for p in (tmp / 'out').iterdir() if p.is_file() and not p.name.startswith('.')}
    if r.rc != 0 and now != before: return f'the refused run changed the earlier files: {sorted(set(now) ^ set(before))}'
    return no_leftovers(tmp / 'out')

def symlink_setup(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path):
        (tmp / 'out').mkdir(); (tmp / 'target.txt').write_text('precious\n')
        os.symlink(tmp / 'target.txt', tmp / 'out' / name)
    return setup

def target_untouched(tmp: Path, r: Run) -> str | None:
    t = tmp / 'target.txt'
    if not t.exists(): return 'the link target was deleted'
    if t.read_text() != 'precious\n': return 'the link target was overwritten'
    return no_leftovers(tmp / 'out')

def toyworld_check(n: int) -> Callable[[Path, Run], str | None]:
    def check(tmp: Path, r: Run) -> str | None:
        out = tmp / 'out'
        if (why := no_leftovers(out)): return why
        manifest = json.loads((out / 'manifest.json').read_text())
        samples = manifest['samples']
        if len(samples) != 4 * n: return f'manifest lists {len(samples)} samples, expected {4 * n}'
        files = {str(p.relative_to(out)) for p in out.rglob('*') if p.is_file()} - {'manifest.json'}
        jsons = {s for s in files if s.endswith('.json')}
        if jsons != set(samples): return f'sample JSONs {sorted(jsons ^ set(samples))[:3]} differ from the manifest'
        for s in samples:
            kind = s.split('/')[0]
            for f in json.loads((out / s).read_text())['files'].values():
                if not (out / kind / Path(f).name).is_file(): return f'{s} names a missing file {f}'
        return None
    return check

def npy(path: Path, array) -> Path: np.save(path, array); return path


def cases() -> list[Case]:
    C = []
    add = lambda *a, **k: C.append(Case(*a, **k))
    marker_cmd = f'touch {MARKER}'
    # ---- checkpoints: JSON naming classes
    for key in ('config_class', 'model_class'):
        def setup(tmp, key=key):
            copy_checkpoint(tmp, 'image_vae')
            edit_json(tmp / 'm.json', lambda m: (m.__setitem__(key, 'os.system'),
                                                 m.__setitem__('config', {'command': marker_cmd})))
        for fn in ('read_config', 'load_pretrained'):
            add(f'ckpt-{key}-{fn}', f'{fn} of a checkpoint JSON whose {key} is "os.system"', 'clear error',
                api(f'from codi_nb.checkpoint import {fn}\n{fn}(tmp / "m")'), setup, phrase='not a checkpoint class')
    for name in ('os.system', 'subprocess.check_call'):
        def setup(tmp, name=name):
            copy_checkpoint(tmp, 'image_ldm')
            cmd = {'command': marker_cmd} if name == 'os.system' else {'args': ['touch', MARKER]}
            edit_json(tmp / 'm.json', lambda m: (m['config'].__setitem__('denoiser_class', name),
                                                 m['config'].__setitem__('denoiser', cmd)))
        add(f'ckpt-denoiser-{name}', f'load_pretrained of a latent diffusion checkpoint whose denoiser_class is {name}',
            'clear error', api('from codi_nb.checkpoint import load_pretrained\nload_pretrained(tmp / "m")'), setup,
            phrase='not a checkpoint class')
    add('ckpt-config-class-function', 'config_class names a library function (codi_nb.checkpoint.load_pretrained)',
        'clear error', api('from codi_nb.checkpoint import read_config\nread_config(tmp / "m")'),
        lambda tmp: (copy_checkpoint(tmp, 'image_vae'), edit_json(tmp / 'm.json', lambda m: m.__setitem__(
            'config_class', 'codi_nb.checkpoint.load_pretrained'))), phrase='not a checkpoint class')
    load = api('from codi_nb.checkpoint import load_pretrained\nload_pretrained(tmp / "m")')
    add('ckpt-flipped-bytes', 'flipped bytes inside a safetensors tensor', 'clear error', load,
        lambda tmp: (copy_checkpoint(tmp, 'image_vae'), flip_tensor_bytes(tmp, rehash_it=False)), phrase='SHA-256')
    add('ckpt-nan-weights', 'a NaN weight (hash updated to match)', 'clear error', load,
        lambda tmp: (copy_checkpoint(tmp, 'image_vae'), flip_tensor_bytes(tmp, rehash_it=True, nan=True)),
        phrase='NaN')
    def corrupt_header(tmp, rehash_it):
        copy_checkpoint(tmp, 'image_vae')
        data = bytearray((tmp / 'm.safetensors').read_bytes()); data[8:20] = b'{"garbage": '
        (tmp / 'm.safetensors').write_bytes(bytes(data))
        if rehash_it: rehash(tmp)
    add('ckpt-corrupt-header', 'corrupt safetensors header (hash updated: reaches the parser)', 'clear error', load,
        lambda tmp: corrupt_header(tmp, True), phrase='m.safetensors')
    add('ckpt-corrupt-header-hash', 'corrupt safetensors header (stale hash)', 'clear error', load,
        lambda tmp: corrupt_header(tmp, False), phrase='m.safetensors')
    add('ckpt-truncated-weights', 'weights file cut in half, no hash (format 1)', 'clear error', load,
        lambda tmp: (copy_checkpoint(tmp, 'image_vae'), edit_json(tmp / 'm.json', lambda m: m.pop('weights_sha256')),
                     (tmp / 'm.safetensors').write_bytes((tmp / 'm.safetensors').read_bytes()[:5000])),
        phrase='m.safetensors')
    add('ckpt-json-garbage', 'checkpoint JSON is not JSON', 'clear error', load,
        lambda tmp: (copy_checkpoint(tmp, 'image_vae'), (tmp / 'm.json').write_text('{"format": "codi_nb", ')),
        phrase='m.json')
    add('ckpt-json-empty', 'checkpoint JSON is an empty file', 'clear error', load,
        lambda tmp: (copy_checkpoint(tmp, 'image_vae'), (tmp / 'm.json').write_text('')), phrase='m.json')
    add('ckpt-config-extra-key', 'config with a key the dataclass lacks', 'clear error', load,
        lambda tmp: (copy_checkpoint(tmp, 'image_vae'), edit_json(tmp / 'm.json',
                                                                  lambda m: m['config'].__setitem__('evil', 1))),
        phrase='evil')
    add('ckpt-config-wrong-type', 'config value of the wrong type (ch = "16")', 'clear error', load,
        lambda tmp: (copy_checkpoint(tmp, 'image_vae'), edit_json(tmp / 'm.json',
                                                                  lambda m: m['config'].__setitem__('ch', 'sixteen'))),
        phrase=('m.json', 'm.safetensors'))
    # ---- the released-file loader
    off = api('from codi_nb.official.loading import load_official\nload_official(tmp / "x.pth")')
    add('official-safetensors', 'load_official given a .safetensors file', 'clear error',
        api('from codi_nb.official.loading import load_official\nload_official(tmp / "m.safetensors")'),
        lambda tmp: copy_checkpoint(tmp, 'image_vae'), phrase='m.safetensors', forbid='see the torch message')
    add('official-text-file', 'load_official given a text file', 'clear error', off,
        lambda tmp: (tmp / 'x.pth').write_text('hello, I am not a checkpoint\n' * 10), phrase='x.pth',
        forbid='see the torch message')
    add('official-empty-file', 'load_official given an empty file', 'clear error', off,
        lambda tmp: (tmp / 'x.pth').write_bytes(b''), phrase='x.pth')
    def pickle_payload(tmp):
        import pickle
        class P:
            def __reduce__(self): return (os.system, (marker_cmd,))
        (tmp / 'x.pth').write_bytes(pickle.dumps({'state_dict': P()}))
    add('official-pickle-payload', 'load_official of a pickle that runs a command', 'clear error', off, pickle_payload,
        phrase='x.pth')
    # ---- output folders
    add('out-second-run', 'second run into the same --out', 'clear error',
        gen('--text', 'a red circle', '--n', '1'), second_run_setup, phrase='already holds outputs',
        integrity=earlier_intact)
    add('out-overwrite-fewer', '--overwrite with fewer samples than the earlier run', 'fine',
        gen('--text', 'a red circle', '--n', '1', '--overwrite'), second_run_setup,
        validate=lambda tmp, r: generated(tmp / 'out', 'image', 1))
    add('out-symlink-image', 'a symlink planted as image_000.png', 'clear error',
        gen('--text', 'a red circle', '--n', '1'), symlink_setup('image_000.png'), phrase='already holds outputs',
        integrity=target_untouched)
    add('out-symlink-image-overwrite', 'a symlink planted as image_000.png, --overwrite', 'fine',
        gen('--text', 'a red circle', '--n', '1', '--overwrite'), symlink_setup('image_000.png'),
        validate=lambda tmp, r: generated(tmp / 'out', 'image', 1), integrity=target_untouched)
    def settings_link(tmp):
        symlink_setup('image_settings.json')(tmp)
        (tmp / 'target.txt').write_text('precious\n')
    add('out-symlink-settings-overwrite', 'a symlink planted as image_settings.json, --overwrite', 'clear error',
        gen('--text', 'a red circle', '--n', '1', '--overwrite'), settings_link, phrase='image_settings.json',
        integrity=target_untouched)
    def listing_outside(tmp):
        (tmp / 'out').mkdir(); (tmp / 'target.txt').write_text('precious\n')
        (tmp / 'out' / 'image_settings.json').write_text(json.dumps({'outputs': ['../target.txt', str(tmp / 'target.txt')]}))
    add('out-settings-lists-outside', 'an earlier settings JSON listing files outside --out, --overwrite', 'fine',
        gen('--text', 'a red circle', '--n', '1', '--overwrite'), listing_outside,
        validate=lambda tmp, r: generated(tmp / 'out', 'image', 1), integrity=target_untouched)
    add('out-proc', '--out /proc/foo', 'clear error', lambda tmp: [*GENERATE, '--text', 'x', '--to', 'image', '--out',
                                                                     '/proc/codi-foo', *GEN],
        phrase='/proc/codi-foo', forbid='generating')
    add('out-under-file', '--out under a regular file', 'clear error', gen('--text', 'a red circle', out='f/sub'),
        lambda tmp: (tmp / 'f').write_text('x'), phrase='f/sub', forbid='generating')
    add('out-is-file', '--out names a regular file', 'clear error', gen('--text', 'a red circle', out='f'),
        lambda tmp: (tmp / 'f').write_text('x'), phrase='not a directory', forbid='generating',
        integrity=lambda tmp, r: None if (tmp / 'f').read_text() == 'x' else 'the file was changed')
    for sig, delay, when in ((signal.SIGINT, 0.0, 'generating'), (signal.SIGINT, 1.5, 'generating'),
                             (signal.SIGINT, 0.0, 'writing'), (signal.SIGTERM, 0.5, 'generating'),
                             (signal.SIGTERM, 0.0, 'writing')):
        name = signal.Signals(sig).name
        add(f'signal-{name}-{when}-{delay}', f'{name} {delay} s after the run starts {when}', 'clear error',
            runner=signal_runner(sig, delay, when), phrase='interrupted', integrity=interrupted_clean,
            exit_codes=(128 + sig,))
    add('concurrent-4', '4 concurrent runs into one folder', 'fine', runner=concurrent_runner,
        validate=concurrent_check)
    add('kill9-then-rerun', 'kill -9 while generating, then a new run into the same folder', 'fine',
        runner=kill9_runner('generating'), validate=both(wants('removed the lock file'),
                                                         lambda tmp, r: generated(tmp / 'out', 'image', 2)))
    add('kill9-writing-then-rerun', 'kill -9 while files are staged, then a new run', 'fine',
        runner=kill9_runner('writing'), validate=lambda tmp, r: generated(tmp / 'out', 'image', 2))
    # ---- arguments
    text = ('--text', 'a red circle')
    for args, phrase in ((('--seed', str(2**64)), '--seed'), (('--seed', '-1'), '--seed'),
                         (('--guidance', 'nan'), '--guidance'), (('--guidance', 'inf'), '--guidance'),
                         (('--guidance', '-1'), '--guidance'), (('--n', '1000000'), '--n'), (('--n', '0'), '--n'),
                         (('--steps', '0'), '--steps'), (('--batch-size', '0'), '--batch-size'),
                         (('--weights', 'text=1,text=5'), 'twice'), (('--weights', 'text=nan'), 'text=nan'),
                         (('--weights', 'audio=1'), 'audio'), (('--weights', 'text=0'), 'weights'),
                         (('--device', 'banana'), '--device'), (('--dtype', 'float8'), '--dtype')):
        add(f'arg{"".join(args).replace("-", "_")}', f'codi-generate {" ".join(args)}', 'clear error',
            gen(*text, *args), phrase=phrase, forbid='generating', integrity=lambda tmp, r: untouched(tmp / 'out'))
    add('arg-weights-overflow', '--weights text=3e38 with two captions (sum past float32)', 'clear error',
        gen('--text', 'a red circle', '--text', 'a blue square', '--weights', 'text=3e38'), phrase='float32',
        forbid='generating', integrity=lambda tmp, r: untouched(tmp / 'out'))
    add('arg-to-twice', '--to image,image', 'clear error', gen(*text, to='image,image'), phrase='twice')
    add('arg-to-unknown', '--to smell', 'clear error', gen(*text, to='smell'), phrase='smell')
    add('arg-empty-text', '--text ""', 'clear error', gen('--text', ''), phrase='empty')
    add('arg-no-input', 'no input at all', 'clear error', gen(), phrase='at least one input')
    add('arg-missing-file', '--image of a missing file', 'clear error', gen('--image', 'nope.png'), phrase='nope.png')
    # ---- media
    add('wav-nan', 'a wav holding NaN samples', 'clear error', gen('--audio', 'a.wav'),
        lambda tmp: wav(tmp / 'a.wav', np.where(np.arange(32000) == 5, np.nan, tone()).astype(np.float32)),
        phrase='NaN', forbid='generating')
    add('wav-inf', 'a wav holding an infinite sample', 'clear error', gen('--audio', 'a.wav'),
        lambda tmp: wav(tmp / 'a.wav', np.where(np.arange(32000) == 5, np.inf, tone()).astype(np.float32)),
        phrase='infinite', forbid='generating')
    add('wav-x1000', 'a float wav whose samples are x1000 (out of [-1, 1])', 'clear error', gen('--audio', 'a.wav'),
        lambda tmp: wav(tmp / 'a.wav', tone() * 1000), phrase='[-1, 1]', forbid='generating')
    add('wav-stereo', 'a stereo wav (downmixed, with a warning)', 'fine', gen('--audio', 'a.wav'),
        lambda tmp: wav(tmp / 'a.wav', np.stack([tone(), -tone()[::-1]], 1)),
        validate=both(wants('downmixed'), lambda tmp, r: generated(tmp / 'out', 'image', 1)))
    add('wav-8khz', 'an 8 kHz wav (resampled, with a warning)', 'fine', gen('--audio', 'a.wav'),
        lambda tmp: wav(tmp / 'a.wav', tone(16000), rate=8000),
        validate=both(wants('resampled'), lambda tmp, r: generated(tmp / 'out', 'image', 1)))
    add('wav-empty-file', 'an empty .wav file', 'clear error', gen('--audio', 'a.wav'),
        lambda tmp: (tmp / 'a.wav').write_bytes(b''), phrase='a.wav')
    add('wav-zero-samples', 'a wav with no samples (padded to silence, with a note)', 'fine', gen('--audio', 'a.wav'),
        lambda tmp: wav(tmp / 'a.wav', np.zeros(0, np.float32)),
        validate=both(wants('padded'), lambda tmp, r: generated(tmp / 'out', 'image', 1)))
    add('wav-is-text', 'a text file given as --audio', 'clear error', gen('--audio', 'a.wav'),
        lambda tmp: (tmp / 'a.wav').write_text('not a sound\n'), phrase='a.wav')
    add('api-stereo-array', 'a stereo (N, 2) array through the Python API', 'clear error',
        api('from codi_nb.pipeline import CoDiPipeline\nimport numpy as np\n'
            'w = np.zeros((32000, 2), np.float32)\nCoDiPipeline.from_pretrained()({"audio": w}, "image", steps=2)'),
        phrase='mono')
    add('api-nan-array', 'a NaN audio array through the Python API', 'clear error',
        api('from codi_nb.pipeline import CoDiPipeline\nimport numpy as np\n'
            'w = np.full(32000, np.nan, np.float32)\nCoDiPipeline.from_pretrained()({"audio": w}, "image", steps=2)'),
        phrase='NaN')
    add('npy-float32', 'a float32 video .npy', 'clear error', gen('--video', 'v.npy'),
        lambda tmp: npy(tmp / 'v.npy', np.random.rand(8, 32, 32, 3).astype(np.float32)), phrase='uint8')
    add('npy-directory', 'a directory named x.npy', 'clear error', gen('--video', 'x.npy'),
        lambda tmp: (tmp / 'x.npy').mkdir(), phrase='x.npy')
    add('npy-3d', 'a .npy video with 3 dimensions', 'clear error', gen('--video', 'v.npy'),
        lambda tmp: npy(tmp / 'v.npy', np.zeros((8, 32, 32), np.uint8)), phrase='shape')
    add('npy-5d', 'a .npy video with 5 dimensions', 'clear error', gen('--video', 'v.npy'),
        lambda tmp: npy(tmp / 'v.npy', np.zeros((1, 8, 32, 32, 3), np.uint8)), phrase='shape')
    add('npy-pickle-payload', 'an object .npy whose pickle runs a command', 'clear error', gen('--video', 'v.npy'),
        lambda tmp: pickle_npy(tmp, marker_cmd),
        phrase='v.npy')
    add('npy-48', 'a 48x48 video .npy (no advice for an option the CLI lacks)', 'clear error', gen('--video', 'v.npy'),
        lambda tmp: npy(tmp / 'v.npy', np.zeros((8, 48, 48, 3), np.uint8)), phrase='48', forbid='size=None')
    add('npy-4-frames', 'a 4-frame video .npy', 'clear error', gen('--video', 'v.npy'),
        lambda tmp: npy(tmp / 'v.npy', np.zeros((4, 32, 32, 3), np.uint8)), phrase='frames')
    add('mp4-audio-only', 'an audio-only mp4', 'clear error', gen('--video', 'a.mp4'),
        lambda tmp: mp4(tmp / 'a.mp4', audio=True, video=False), phrase='video stream')
    add('mp4-upper', 'an .MP4 file (upper-case suffix)', 'fine', gen('--video', 'v.MP4'),
        lambda tmp: mp4(tmp / 'v.MP4'), validate=lambda tmp, r: generated(tmp / 'out', 'image', 1))
    add('mp4-128', 'a 128x128 mp4 with sound (block-averaged)', 'fine', gen('--video', 'v.mp4'),
        lambda tmp: mp4(tmp / 'v.mp4', size=128, audio=True), validate=lambda tmp, r: generated(tmp / 'out', 'image', 1))
    add('mp4-empty', 'an empty .mp4 file', 'clear error', gen('--video', 'v.mp4'),
        lambda tmp: (tmp / 'v.mp4').write_bytes(b''), phrase='v.mp4')
    add('mp4-truncated', 'an mp4 cut in half', 'clear error', gen('--video', 'v.mp4'),
        lambda tmp: (mp4(tmp / 'v.mp4'), (tmp / 'v.mp4').write_bytes((tmp / 'v.mp4').read_bytes()[:1500])),
        phrase='v.mp4')
    add('video-wrong-suffix', 'a video named .avi', 'clear error', gen('--video', 'v.avi'),
        lambda tmp: (tmp / 'v.avi').write_bytes(b'RIFF'), phrase='v.avi')
    def png16(tmp):
        from PIL import Image
        ramp = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
        Image.fromarray(ramp).save(tmp / 'g.png')
    add('png-16bit-gray', 'a 16-bit grayscale png through codi-generate', 'fine', gen('--image', 'g.png'), png16,
        validate=lambda tmp, r: generated(tmp / 'out', 'image', 1))
    add('png-16bit-gray-read', 'a 16-bit grayscale png read for the model: not saturated to {0, 255}', 'fine',
        api('from codi_nb.composable import read_input_file\nx = read_input_file("image", tmp / "g.png")\n'
            'print(len(np.unique(x)), x.shape, x.dtype)'), png16,
        validate=lambda tmp, r: None if int(r.stdout.split()[0]) > 16 else f'{r.stdout.split()[0]} distinct levels')
    add('png-rgba', 'an RGBA png', 'fine', gen('--image', 'i.png'),
        lambda tmp: png(tmp / 'i.png', np.full((32, 32, 4), 128, np.uint8)),
        validate=lambda tmp, r: generated(tmp / 'out', 'image', 1))
    add('png-48', 'a 48x48 png', 'clear error', gen('--image', 'i.png'),
        lambda tmp: png(tmp / 'i.png', np.zeros((48, 48, 3), np.uint8)), phrase='48', forbid='size=None')
    add('png-empty', 'an empty .png file', 'clear error', gen('--image', 'i.png'),
        lambda tmp: (tmp / 'i.png').write_bytes(b''), phrase='i.png')
    add('png-truncated', 'a png cut short', 'clear error', gen('--image', 'i.png'),
        lambda tmp: (image32(tmp / 'i.png'), (tmp / 'i.png').write_bytes((tmp / 'i.png').read_bytes()[:200])),
        phrase='i.png')
    add('png-huge-header', 'a tiny png whose header claims 100000x100000 pixels', 'clear error',
        gen('--image', 'i.png'), lambda tmp: png_header_only(tmp / 'i.png', 100000, 100000), phrase='i.png')
    add('png-big-header', 'a tiny png whose header claims 10000x10000 pixels', 'clear error',
        gen('--image', 'i.png'), lambda tmp: png_header_only(tmp / 'i.png', 10000, 10000), phrase='i.png')
    add('png-is-jpeg', 'a jpeg named .png (read, fine)', 'fine', gen('--image', 'i.png'),
        lambda tmp: __import__('PIL.Image').Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp / 'i.png',
                                                                                                  format='JPEG'),
        validate=lambda tmp, r: generated(tmp / 'out', 'image', 1))
    add('caption-non-ascii', 'a caption in Greek (unknown words must be named)', 'fine',
        gen('--text', 'ένας κόκκινος κύκλος'), validate=both(wants('does not know'),
                                                            lambda tmp, r: generated(tmp / 'out', 'image', 1)))
    add('caption-non-ascii-joint', 'a caption in Greek, joint video+audio', 'fine',
        gen('--text', 'ένας κόκκινος κύκλος', to='video,audio'),
        validate=both(wants('does not know'), lambda tmp, r: generated(tmp / 'out', 'video,audio', 1)))
    add('caption-bad-utf8', 'caption bytes that are not UTF-8 (from a file)', 'fine',
        lambda tmp: [*GENERATE, '--text', os.fsdecode(b'a red \xff\xfe circle'), '--to', 'image', '--out', 'out',
                     *GEN], validate=lambda tmp, r: generated(tmp / 'out', 'image', 1))
    add('caption-huge', 'a 100 000-word caption', 'fine', gen('--text', 'red ' * 100000),
        validate=lambda tmp, r: generated(tmp / 'out', 'image', 1))
    # ---- Python API
    pipe = 'from codi_nb.pipeline import CoDiPipeline\npipe = CoDiPipeline.from_pretrained()\n'
    for args, phrase in (('steps=0', 'steps'), ('steps=2.5', 'steps'), ('num_samples=2.5', 'num_samples'),
                         ('batch_size=0', 'batch_size'), ('seed=2**64', 'seed'), ('guidance=float("nan")', 'guidance'),
                         ('weights={"text": "abc"}', 'weights'), ('sampler="euler"', 'sampler'),
                         ('num_samples=True', 'num_samples'), ('steps=-3', 'steps')):
        add(f'api-{args.split("=")[0]}-{args.split("=")[1][:6]}', f'pipe(..., {args})', 'clear error',
            api(pipe + f'pipe({{"text": "a red circle"}}, "image", {args})'), phrase=phrase)
    add('api-inputs-empty', 'pipe({}, "image")', 'clear error', api(pipe + 'pipe({}, "image")'), phrase='inputs')
    add('api-image-float', 'a float image array in [0, 1] through the API', 'fine',
        api(pipe + 'r = pipe({"image": np.random.rand(32, 32, 3).astype(np.float32)}, "image", steps=2, sampler="dpm")'
            '\nr.save(tmp / "out")'), validate=lambda tmp, r: generated(tmp / 'out', 'image', 1))
    add('api-save-twice', 'result.save into the same folder twice', 'clear error',
        api(pipe + 'r = pipe({"text": "a red circle"}, "image", steps=2, sampler="dpm")\nr.save(tmp / "out")\n'
            'r.save(tmp / "out")'), phrase='already holds outputs',
        integrity=lambda tmp, r: generated(tmp / 'out', 'image', 1))
    # ---- limits
    add('n-1000000', 'codi-generate --n 1000000', 'clear error', gen(*text, '--n', '1000000'), phrase='--n',
        max_s=60)
    add('toyworld-1e9', 'codi-toyworld --n 1000000000', 'clear error', tw('--out', 'out', '--n', '1000000000'),
        phrase='free', integrity=lambda tmp, r: untouched(tmp / 'out'), max_s=120)
    add('toyworld-ok', 'codi-toyworld --n 2', 'fine', tw('--out', 'out', '--n', '2'), validate=toyworld_check(2))
    def tw3(tmp):
        r = run([*TOYWORLD, '--out', 'out', '--n', '3'], tmp); assert r.rc == 0, r.stderr
        (tmp / 'before.json').write_text(json.dumps({str(p.relative_to(tmp / 'out')): sha(p)
                                                     for p in (tmp / 'out').rglob('*') if p.is_file()}))
    add('toyworld-second', 'codi-toyworld twice into one folder', 'clear error', tw('--out', 'out', '--n', '2'), tw3,
        phrase='already holds', integrity=lambda tmp, r: None if json.loads((tmp / 'before.json').read_text()) == {
            str(p.relative_to(tmp / 'out')): sha(p) for p in (tmp / 'out').rglob('*') if p.is_file()} else 'changed')
    add('toyworld-overwrite-fewer', 'codi-toyworld --overwrite with fewer samples', 'fine',
        tw('--out', 'out', '--n', '1', '--overwrite'), tw3, validate=toyworld_check(1))
    add('toyworld-n0', 'codi-toyworld --n 0', 'clear error', tw('--out', 'out', '--n', '0'), phrase='--n')
    add('toyworld-seed-neg', 'codi-toyworld --seed -5', 'clear error', tw('--out', 'out', '--seed', '-5'),
        phrase='--seed')
    add('toyworld-proc', 'codi-toyworld --out /proc/foo', 'clear error', tw('--out', '/proc/codi-foo'),
        phrase='/proc/codi-foo')
    def tw_kind_file(tmp):
        (tmp / 'out').mkdir(); (tmp / 'target.txt').write_text('precious\n')
        os.symlink(tmp / 'target.txt', tmp / 'out' / 'text-image')
    add('toyworld-kind-symlink', 'codi-toyworld with out/text-image a planted symlink', 'clear error',
        tw('--out', 'out', '--n', '1'), tw_kind_file, phrase='text-image', integrity=target_untouched)
    return C


def pickle_npy(tmp: Path, command: str):
    "A .npy holding an object array whose unpickling runs `command`."
    class P:
        def __reduce__(self): return (os.system, (command,))
    np.save(tmp / 'v.npy', np.array([P()], dtype=object), allow_pickle=True)


# ---------------------------------------------------------------- classify
def classify(case: Case, tmp: Path, r: Run) -> tuple[str, str]:
    "(observed class, why)"
    if any(tmp.rglob(MARKER)) or Path(MARKER).exists(): return 'code ran', f'{MARKER} appeared'
    if 'Traceback (most recent call last)' in r.stderr: return 'traceback', ''
    why = case.integrity(tmp, r)
    if why: return 'lost/corrupt output', why
    line = last_line(r.stderr)
    if r.rc != 0:
        phrases = case.phrase if isinstance(case.phrase, tuple) else (case.phrase,)
        if not any(p.lower() in line.lower() for p in phrases): return 'unclear error', f'expected {phrases}'
        if case.forbid and case.forbid in r.stderr: return 'unclear error', f'says {case.forbid!r}'
        if case.max_s and r.seconds > case.max_s: return 'unclear error', f'took {r.seconds:.0f} s'
        if case.exit_codes and r.rc not in case.exit_codes: return 'unclear error', f'exit {r.rc}'
        return 'clear error', ''
    why = case.validate(tmp, r)
    if case.expect == 'clear error' and not why: why = 'exit 0 where a refusal was expected'
    return ('silently wrong', why) if why else ('fine', '')

def run_case(case: Case) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f'hostile-{case.id[:20]}-'))
    t = time.time()
    try:
        case.setup(tmp)
        r = case.runner(case, tmp) if case.runner else run(case.cmd(tmp) if callable(case.cmd) else case.cmd, tmp)
        observed, why = classify(case, tmp, r)
    except Exception as e:
        r, observed, why = Run(-1, '', '', time.time() - t), 'harness error', f'{type(e).__name__}: {e}'
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dict(id=case.id, what=case.what, expected=case.expect, observed=observed, rc=r.rc,
                last_line=last_line(r.stderr)[:300], why=why, note=r.note, seconds=round(time.time() - t, 1))

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--json', help='write the table as JSON here')
    p.add_argument('--only', help='comma-separated case ids (prefixes)')
    p.add_argument('--jobs', type=int, default=2, help='cases run at a time (signal and concurrency cases run alone)')
    a = p.parse_args(argv)
    todo = cases()
    if a.only: todo = [c for c in todo if any(c.id.startswith(x) for x in a.only.split(','))]
    alone = [c for c in todo if c.runner]
    rows = {}
    t = time.time()
    with cf.ThreadPoolExecutor(a.jobs) as ex:
        for row in ex.map(run_case, [c for c in todo if not c.runner]):
            rows[row['id']] = row; print(f'{row["observed"]:>20}  {row["id"]}  ({row["seconds"]} s)', flush=True)
    for c in alone:
        row = run_case(c); rows[c.id] = row
        print(f'{row["observed"]:>20}  {row["id"]}  ({row["seconds"]} s)', flush=True)
    table = [rows[c.id] for c in todo]
    print(f'\n{"id":34} {"expected":12} {"observed":20} {"s":>6}  last stderr line / why')
    for r in table:
        print(f'{r["id"][:34]:34} {r["expected"]:12} {r["observed"]:20} {r["seconds"]:6.1f}  '
              f'{r["last_line"][:110]}' + (f'  [{r["why"]}]' if r['why'] else '') + (f'  ({r["note"]})' if r['note'] else ''))
    counts = {}
    for r in table: counts[r['observed']] = counts.get(r['observed'], 0) + 1
    print(f'\n{len(table)} cases in {time.time() - t:.0f} s: ' + ', '.join(f'{v} {k}' for k, v in sorted(counts.items())))
    if a.json: Path(a.json).write_text(json.dumps({'counts': counts, 'cases': table}, indent=1))
    return 1 if any(r['observed'] in BAD or r['observed'] == 'harness error' for r in table) else 0


if __name__ == '__main__':
    sys.exit(main())
