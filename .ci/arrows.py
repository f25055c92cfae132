"""Check that dependencies point one way: no network, codec, encoder or diffusion-model module of codi_nb imports
ToyWorld, training, recipes or evaluation, not even inside a function. Usage: `python .ci/arrows.py`; exits 1 on a breach."""
import ast, sys
from pathlib import Path

lib = Path(__file__).resolve().parents[1] / 'codi_nb'
MODELS = ('schedule', 'samplers', 'unet', 'video_unet', 'text_unet', 'image_vae', 'audio_codec', 'text_vae',
          'prompt_encoders', 'environment', 'latent_diffusion', 'joint')
FORBIDDEN = {'toyworld', 'training', 'toyworld_recipes', 'evaluation'}

def imported(path: Path) -> set[str]:
    "Every codi_nb module `path` imports, at any depth (relative or absolute imports)."
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level or mod.startswith('codi_nb'):
                name = mod.removeprefix('codi_nb').lstrip('.')
                out |= {name.split('.')[0]} if name else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split('.')[1] for a in node.names if a.name.startswith('codi_nb.')}
    return out

breaches = {m: sorted(imported(lib / f'{m}.py') & FORBIDDEN) for m in MODELS}
for m, bad in breaches.items(): print(f'{m:18s} {"imports " + ", ".join(bad) if bad else "ok"}')
sys.exit(1 if any(breaches.values()) else 0)
