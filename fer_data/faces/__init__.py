"""Face geometry shared by adapters (given landmarks) and the detectors/aligners."""

# The faces stage's backends (stage.py says what each does). Here, not in stage.py, so that the
# command line can offer them without importing OpenCV and insightface.
BACKENDS = ("auto", "centerface", "scrfd", "given", "none")


def check_size(size: int) -> int:
    """insightface's template scales to multiples of 112 (ArcFace) or 128 (with the 8 px x-shift)."""
    if size % 112 and size % 128:
        raise ValueError(f"crop size {size}: must be a multiple of 112 or 128 (e.g. 112, 224, 256, 336, 384)")
    return size
