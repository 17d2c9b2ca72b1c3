"""Progress bars: tqdm when installed, otherwise a silent pass-through (progress is optional)."""

try:
    from tqdm import tqdm
except ImportError:

    def tqdm(it=None, **_kw):
        return it


__all__ = ["tqdm"]
