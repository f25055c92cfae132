"""Render the notebooks into an HTML book, offline, with Jupyter Book 1.x (Sphinx).

Why not `nbdev_docs`: nbdev's docs need the Quarto binary, and the `quarto-cli` package downloads it while
installing, which cannot work without network. Jupyter Book installs from the package registry alone, and
MathJax comes from the `jupyter_server_mathjax` package, so the rendered pages need no network either.

Steps (all under the git-ignored `_book/`; `nbs/` is only read):
1. copy every `nbs/[0-9]*.ipynb` to `_book/src`: `#|slow` cells become markdown listings (shown, not run), `#|hide`
   cells are tagged `remove-cell`, `#|echo: false` cells `remove-input`, and nbdev's `#|` lines are dropped from the
   shown code;
2. execute each copy with a Jupyter kernel whose working folder is `nbs/` (the notebooks' relative paths are from
   there, as under `nbdev_test`), `HF_HUB_OFFLINE=1` and matplotlib's inline backend, so figures are kept as images;
   the time and the errors of each chapter go to `_book/report.json`;
3. write `_toc.yml` from the notebook names (new chapters appear by themselves), copy `book/_config.yml`, and let
   Jupyter Book render the executed copies to `_book/html/index.html`.

Usage: `python .ci/book.py [--no-execute] [--chapters 00_index,01_noise_schedule,...]` (`$CODI_BOOK_CHAPTERS` too).
`.ci/book` builds and then checks the result."""
import json, os, re, shutil, subprocess, sys, time
from pathlib import Path

root = Path(__file__).resolve().parents[1]
nbs, out = root / 'nbs', root / '_book'
src = out / 'src'
DIRECTIVE = re.compile(r'^\s*#\s*\|\s*([^\n]*)')

def directives(source: str) -> list[str]:
    "The nbdev directives (`#|name ...`) at the top of a cell."
    found = []
    for line in source.splitlines():
        if not line.strip(): continue
        m = DIRECTIVE.match(line)
        if not m: break
        found.append(m.group(1).strip())
    return found

def strip_directives(source: str) -> str:
    lines = source.splitlines()
    while lines and (not lines[0].strip() or DIRECTIVE.match(lines[0])): lines.pop(0)
    return '\n'.join(lines)

def is_slow(source: str) -> bool: return any(d.split()[0] == 'slow' for d in directives(source) if d)

def prepare_cell(cell: dict) -> dict:
    "The book's version of one code cell: a listing if slow, tagged if hidden, without nbdev's `#|` lines."
    source = ''.join(cell['source'])
    d = directives(source)
    if is_slow(source):
        return {'cell_type': 'markdown', 'metadata': {}, 'source':
                '*A slow recipe (`#|slow`): shown here, not run when the book is built.*\n\n```python\n'
                + strip_directives(source) + '\n```'}
    tags = []
    if 'hide' in d or any(x.startswith('default_exp') for x in d): tags.append('remove-cell')
    elif 'echo: false' in d: tags.append('remove-input')
    cell = {**cell, 'source': strip_directives(source) if 'remove-cell' not in tags else source, 'outputs': [],
            'execution_count': None}
    if tags: cell['metadata'] = {**cell.get('metadata', {}), 'tags': tags}
    return cell

def chapter_names(only: str | None = None) -> list[str]:
    names = [p.stem for p in sorted(nbs.glob('[0-9]*.ipynb'))]
    if not only: return names
    wanted = [n.strip() for n in only.split(',') if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown: raise SystemExit(f'unknown chapters {unknown}: give notebook names from nbs/ without .ipynb')
    return [n for n in names if n in wanted]

def prepare(names: list[str]):
    if out.exists(): shutil.rmtree(out)
    src.mkdir(parents=True)
    for name in names:
        nb = json.loads((nbs / f'{name}.ipynb').read_text())
        nb['cells'] = [prepare_cell(c) if c['cell_type'] == 'code' else c for c in nb['cells']]
        (src / f'{name}.ipynb').write_text(json.dumps(nb, indent=1))

def kernel_env() -> dict:
    "The kernel's environment: offline, inline figures, this checkout's package first."
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'module://matplotlib_inline.backend_inline',
           'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ.get("PATH", "")}'}
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(root), os.environ.get('PYTHONPATH')) if p)
    return env

def execute(names: list[str], timeout: int = 1800) -> dict:
    "Run each prepared notebook in a kernel working in nbs/; returns {name: {'seconds', 'failure'}}."
    import nbformat
    from nbclient import NotebookClient
    saved, report = dict(os.environ), {}
    os.environ.clear(); os.environ.update(kernel_env())           # the kernel inherits this process's environment
    try:
        for name in names:
            path = src / f'{name}.ipynb'
            nb = nbformat.read(path, as_version=4)
            start, failure = time.time(), None
            client = NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=True,
                                    resources={'metadata': {'path': str(nbs)}})
            try: client.execute()
            except Exception as e: failure = f'{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}'
            nbformat.write(nb, path)
            report[name] = {'seconds': round(time.time() - start, 1), 'failure': failure}
            print(f'executed {name} in {report[name]["seconds"]:.0f} s' + (f' ({failure})' if failure else ''),
                  flush=True)
    finally:
        os.environ.clear(); os.environ.update(saved)
    return report

def configure(names: list[str]):
    import jupyter_server_mathjax
    mathjax = Path(jupyter_server_mathjax.__file__).parent / 'static'
    # copied as is, outside _static (whose .js files get script tags)
    shutil.copytree(mathjax, src / '_extra' / 'mathjax')
    shutil.copy(root / 'book' / '_config.yml', src / '_config.yml')
    chapters = 'chapters:\n' + ''.join(f'- file: {n}\n' for n in names[1:]) if len(names) > 1 else ''
    (src / '_toc.yml').write_text(f'format: jb-book\nroot: {names[0]}\n{chapters}')

def render():
    exe = Path(sys.executable).parent / 'jupyter-book'           # the venv's, even when the venv is not activated
    cmd = [str(exe) if exe.exists() else 'jupyter-book', 'build', str(src), '--path-output', str(out), '--quiet']
    subprocess.run(cmd, check=True, cwd=src, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    html = out / 'html'
    shutil.move(str(out / '_build' / 'html'), html)
    # The theme marks the page body `tex2jax_ignore` and myst-nb adds a MathJax 3 config that re-includes math;
    # MathJax 2 needs the same rule in its own words. The wheel ships only the STIX-Web fonts, so MathJax is told to
    # use them (its default, the TeX web font, is absent and the fallback misplaces bars and radicals).
    mathjax2 = ('<script type="text/x-mathjax-config">MathJax.Hub.Config({tex2jax: {processClass: '
                '"tex2jax_process|mathjax_process|math|output_area"}, "HTML-CSS": {availableFonts: [], '
                'webFont: "STIX-Web", imageFont: null}})</script>')
    for page in html.glob('*.html'):
        page.write_text(re.sub(r'<script>window\.MathJax = \{.*?\}</script>', mathjax2, page.read_text()))

def build(only: str | None = None, run: bool = True) -> list[str]:
    "Prepare, execute (unless `run` is False) and render the chapters named in `only` (all by default)."
    names = chapter_names(only)
    start = time.time()
    prepare(names)
    report = execute(names) if run else {}
    configure(names)
    render()
    (out / 'report.json').write_text(json.dumps({'chapters': names, 'executed': run, 'execution': report,
                                                 'seconds': round(time.time() - start, 1)}, indent=1))
    print(f'book written to {out / "html" / "index.html"} ({len(names)} chapters, {time.time() - start:.0f} s)')
    return names

def arguments(argv: list[str]) -> tuple[str | None, bool]:
    only = os.environ.get('CODI_BOOK_CHAPTERS')
    if '--chapters' in argv:
        i = argv.index('--chapters')
        if i + 1 >= len(argv): raise SystemExit('--chapters needs a comma-separated list of notebook names')
        only = argv[i + 1]
    return only, '--no-execute' not in argv

if __name__ == '__main__':
    only, run = arguments(sys.argv[1:])
    build(only, run)
