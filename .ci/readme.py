"""Regenerate README.md from nbs/00_index.ipynb (nbdev 2's own readme step needs Quarto, which cannot be
installed offline). Markdown cells are copied; code cells become fenced Python blocks, except cells marked
`#|hide` or `#|echo: false`. `--check` exits 1 if README.md is out of date."""
import json, re, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
HIDDEN = re.compile(r'^\s*#\s*\|\s*(hide|echo:\s*false|default_exp)\b', re.M)
DIRECTIVE = re.compile(r'^\s*#\s*\|.*\n?', re.M)

def render(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    parts = ['<!-- Generated from nbs/00_index.ipynb by `python .ci/readme.py`; edit the notebook, not this file. -->']
    for cell in nb['cells']:
        src = ''.join(cell['source'])
        if cell['cell_type'] == 'markdown': parts.append(src.strip())
        elif cell['cell_type'] == 'code' and not HIDDEN.search(src):
            parts.append('```python\n' + DIRECTIVE.sub('', src).strip() + '\n```')
    return '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    text, readme = render(root / 'nbs' / '00_index.ipynb'), root / 'README.md'
    if '--check' in sys.argv:
        if readme.read_text() != text:
            sys.exit('README.md is out of date: run `python .ci/readme.py` and commit it.')
        print('README.md is in sync with nbs/00_index.ipynb')
    else:
        readme.write_text(text); print(f'wrote {readme}')
