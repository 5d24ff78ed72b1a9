"""Face geometry shared by adapters (given landmarks) and the detectors/aligners."""

import functools

# The faces stage's backends (stage.py says what each does). Here, not in stage.py, so that the
# command line can offer them without importing OpenCV and insightface.
BACKENDS = ("auto", "centerface", "scrfd", "given", "none", "box")
FACES = ("largest", "all")  # which faces of an image become samples (`Settings.faces`)


@functools.lru_cache(maxsize=64)
def parse_chain(spec: str) -> tuple[str, ...]:
    """A detector chain, `centerface,scrfd,box`: each backend runs only on the records the ones before
    it rejected. Every name a backend, none twice; `auto` (which picks per record) only first.
    Cached: it is asked twice a record."""
    chain = tuple(name.strip() for name in spec.split(","))
    for name in chain:
        if name not in BACKENDS:
            raise ValueError(f"detector {name!r} in {spec!r}: expected a comma list of {', '.join(BACKENDS)}")
    if len(set(chain)) != len(chain):
        raise ValueError(f"detector chain {spec!r} names a backend twice")
    if "auto" in chain[1:]:
        raise ValueError(f"detector chain {spec!r}: 'auto' picks per record, so it can only come first")
    return chain


def check_size(size: int) -> int:
    """insightface's template scales to multiples of 112 (ArcFace) or 128 (with the 8 px x-shift)."""
    if size % 112 and size % 128:
        raise ValueError(f"crop size {size}: must be a multiple of 112 or 128 (e.g. 112, 224, 256, 336, 384)")
    return size
