__version__ = "0.1.0"
# Written by hand (nbdev_export only keeps the version line above up to date); chapter 17a explains and tests it.
__all__ = ['CoDiPipeline', 'CoDiResult']

def __getattr__(name: str):
    "`from codi_nb import CoDiPipeline` imports `codi_nb.pipeline` (torch, open_clip, ...) only when it is asked for."
    if name in __all__:
        import importlib
        return getattr(importlib.import_module('codi_nb.pipeline'), name)
    raise AttributeError(f'module codi_nb has no attribute {name!r}')
