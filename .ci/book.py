"""Render the notebooks into an HTML book, offline, with Jupyter Book 1.x (Sphinx).

Why not `nbdev_docs`: nbdev's docs need the Quarto binary, and the `quarto-cli` package downloads it while
installing, which cannot work without network. Jupyter Book installs from the package registry alone, and
MathJax comes from the `jupyter_server_mathjax` package, so the rendered pages need no network either.

The notebooks are copied to `_book/src`, their nbdev directives translated to Jupyter Book cell tags
(`#|slow` -> not executed, `#|hide` -> removed, `#|echo: false` -> input hidden), executed, and rendered to
`_book/html/index.html`. Usage: `python .ci/book.py [--no-execute]`."""
import json, re, shutil, subprocess, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
out, src = root / '_book', root / '_book' / 'src'

def directives(source: str) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r'^\s*#\s*\|\s*([^\n]+)', source, re.M)}

def tags_for(source: str) -> list[str]:
    d, tags = directives(source), []
    if 'slow' in d: tags.append('skip-execution')
    if 'hide' in d or any(x.startswith('default_exp') for x in d): tags.append('remove-cell')
    elif 'echo: false' in d: tags.append('remove-input')
    return tags

def prepare() -> list[str]:
    if out.exists(): shutil.rmtree(out)
    src.mkdir(parents=True)
    names = []
    for nb_path in sorted((root / 'nbs').glob('[0-9]*.ipynb')):
        nb = json.loads(nb_path.read_text())
        for cell in nb['cells']:
            if cell['cell_type'] != 'code': continue
            tags = tags_for(''.join(cell['source']))
            if tags: cell.setdefault('metadata', {})['tags'] = tags
        (src / nb_path.name).write_text(json.dumps(nb, indent=1))
        names.append(nb_path.stem)
    for extra in (root / 'data_samples',):
        if extra.exists(): shutil.copytree(extra, out / extra.name)
    return names

def configure(names: list[str], execute: bool):
    import jupyter_server_mathjax
    mathjax = Path(jupyter_server_mathjax.__file__).parent / 'static'
    shutil.copytree(mathjax, src / '_extra' / 'mathjax')  # copied as is, outside _static (whose .js files get script tags)
    (src / '_toc.yml').write_text('format: jb-book\nroot: ' + names[0] + '\nchapters:\n'
                                  + ''.join(f'- file: {n}\n' for n in names[1:]))
    (src / '_config.yml').write_text(f'''title: "codi_nb: CoDi, built up in notebooks"
author: codi_nb authors
only_build_toc_files: true
execute:
  execute_notebooks: {"force" if execute else "off"}
  timeout: 1200
  allow_errors: false
  stderr_output: remove
html:
  use_repository_button: false
sphinx:
  config:
    html_extra_path: [_extra]
    mathjax_path: ../mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full
    html_show_copyright: false
''')

def main():
    execute = '--no-execute' not in sys.argv
    names = prepare()
    configure(names, execute)
    exe = Path(sys.executable).parent / 'jupyter-book'           # the venv's, even when the venv is not activated
    cmd = [str(exe) if exe.exists() else 'jupyter-book', 'build', str(src), '--path-output', str(out), '--quiet']
    env = {**__import__('os').environ, 'HF_HUB_OFFLINE': '1'}   # no MPLBACKEND: the kernel's inline backend must capture figures
    subprocess.run(cmd, check=True, env=env, cwd=src)
    html = out / '_build' / 'html'
    if (out / 'html').exists(): shutil.rmtree(out / 'html')
    shutil.move(str(html), out / 'html')
    # The theme marks the page body `tex2jax_ignore` and myst-nb adds a MathJax 3 config that re-includes math;
    # MathJax 2 needs the same rule in its own words. The wheel ships only the STIX-Web fonts, so MathJax is told to
    # use them (its default, the TeX web font, is absent and the fallback misplaces bars and radicals).
    mathjax2 = ('<script type="text/x-mathjax-config">MathJax.Hub.Config({tex2jax: {processClass: '
                '"tex2jax_process|mathjax_process|math|output_area"}, "HTML-CSS": {availableFonts: [], '
                'webFont: "STIX-Web", imageFont: null}})</script>')
    for page in (out / 'html').glob('*.html'):
        page.write_text(re.sub(r'<script>window\.MathJax = \{.*?\}</script>', mathjax2, page.read_text()))
    print(f'book written to {out / "html" / "index.html"}')

if __name__ == '__main__':
    main()
