"""Synthetic text-video data: one coloured shape moving over a plain background.

Procedural, numpy only, and a pure function of a seed, so that the tiny default
model (trained by `train/train_tiny.py`) can be retrained bit for bit and so that
evaluation start frames can be drawn from a seed stream training never uses.

A clip is K frames (default 8) of S x S pixels (default 32), uint8 RGB:
  - shape: circle, square or triangle (upward), "radius" r (half its width) 5-7 px;
  - colour: one of `COLORS` (6), background a dark grey (level 0-60);
  - motion: constant speed (1.5-2.5 px/frame) left, right, up or down; the object
    stays wholly inside the frame for the whole clip;
  - "hold": with probability `hold_prob` the object rests in frames 0..h
    (1 <= h <= K-2) and then starts moving, so at least the last frame has moved. These clips are what makes a queue of
    K-1 copies of one image (how TI2V-Zero starts) a situation the model has seen.
Caption: "a red circle moving left" (`caption`).

Shapes are rendered with 4x4 supersampling (anti-aliased edges).
"""

from __future__ import annotations

import dataclasses

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (165, 60, 205),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
# (dx, dy) per frame in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

SIZE = 32
NUM_FRAMES = 8
RADIUS = (5.0, 7.0)
SPEED = (1.5, 2.5)
BACKGROUND = (0, 60)
HOLD_PROB = 0.5
_SUPERSAMPLE = 4

# Seed streams: training draws from TRAIN, evaluation from EVAL (never overlapping).
TRAIN, EVAL = 0, 1


def caption(color: str, shape: str, direction: str) -> str:
    return f"a {color} {shape} moving {direction}"


def all_captions() -> list[str]:
    """Every caption the data can produce (6 colours x 3 shapes x 4 directions = 72)."""
    return [caption(c, s, d) for c in COLORS for s in SHAPES for d in DIRECTIONS]


VOCABULARY = ("a", "moving", *COLORS, *SHAPES, *DIRECTIONS)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Everything that determines one clip."""
    shape: str
    color: str
    direction: str
    x0: float            # start centre, pixels
    y0: float
    radius: float
    speed: float         # pixels per frame
    hold: int            # frames at rest before moving
    background: int      # grey level

    @property
    def caption(self) -> str:
        return caption(self.color, self.shape, self.direction)

    def centers(self, num_frames: int = NUM_FRAMES) -> np.ndarray:
        """(F, 2) centres (x, y) of the shape in each frame."""
        steps = np.maximum(np.arange(num_frames) - self.hold, 0) * self.speed
        dx, dy = DIRECTIONS[self.direction]
        return np.stack([self.x0 + dx * steps, self.y0 + dy * steps], axis=-1)


def _start(rng, direction, radius, travel, size):
    """A start centre keeping the shape inside [0, size] for the whole travel."""
    dx, dy = DIRECTIONS[direction]
    lo, hi = radius + 0.5, size - radius - 0.5
    along = lambda d: rng.uniform(lo - min(d, 0) * travel, hi - max(d, 0) * travel)  # noqa: E731
    return along(dx), along(dy)


def sample_specs(seed: int, n: int, *, num_frames: int = NUM_FRAMES, size: int = SIZE,
                 hold_prob: float = HOLD_PROB, min_hold: int = 1, stream: int = TRAIN) -> list[ClipSpec]:
    """n clip specifications, a pure function of (stream, seed).

    A clip holds with probability `hold_prob`, for h frames drawn uniformly from
    min_hold..K-2 (min_hold > 1 makes the long holds a TI2V-Zero queue looks like commoner).
    """
    if not 1 <= min_hold <= num_frames - 2:
        raise ValueError(f"min_hold must be in 1..{num_frames - 2} for {num_frames} frames, got {min_hold}")
    rng = np.random.default_rng([stream, seed])
    specs = []
    for _ in range(n):
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
        radius = rng.uniform(*RADIUS)
        speed = rng.uniform(*SPEED)
        hold = int(rng.integers(min_hold, num_frames - 1)) if rng.random() < hold_prob else 0
        moving = max(num_frames - 1 - hold, 1)
        speed = min(speed, (size - 2 * radius - 2) / moving)  # the biggest shapes move a bit slower
        x0, y0 = _start(rng, direction, radius, speed * (num_frames - 1 - hold), size)
        background = int(rng.integers(BACKGROUND[0], BACKGROUND[1] + 1))
        specs.append(ClipSpec(shape, color, direction, float(x0), float(y0), float(radius), float(speed), hold,
                              background))
    return specs


def shape_coverage(shape: str, centers: np.ndarray, radius: float, size: int = SIZE) -> np.ndarray:
    """(F, size, size) float32 coverage in [0, 1] of `shape` at each centre (x, y)."""
    ss = _SUPERSAMPLE
    coords = (np.arange(size * ss, dtype=np.float32) + 0.5) / ss
    px = coords[None, None, :] - np.asarray(centers, np.float32)[:, 0, None, None]
    py = coords[None, :, None] - np.asarray(centers, np.float32)[:, 1, None, None]
    r = np.float32(radius)
    if shape == "circle":
        inside = px * px + py * py <= r * r
    elif shape == "square":
        inside = (np.abs(px) <= r) & (np.abs(py) <= r)
    elif shape == "triangle":
        # Apex (0, -r), base from (-r, r) to (r, r): |x| <= (y + r) / 2 for -r <= y <= r.
        inside = (py <= r) & (np.abs(px) <= (py + r) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    f = inside.shape[0]
    return inside.reshape(f, size, ss, size, ss).mean(axis=(2, 4), dtype=np.float32)


def render(spec: ClipSpec, num_frames: int = NUM_FRAMES, size: int = SIZE) -> np.ndarray:
    """(F, size, size, 3) uint8 frames of one clip."""
    cov = shape_coverage(spec.shape, spec.centers(num_frames), spec.radius, size)[..., None]
    bg = np.float32(spec.background)
    fg = np.asarray(COLORS[spec.color], np.float32)
    return np.round(bg + cov * (fg - bg)).astype(np.uint8)


def render_image(shape: str, color: str, center, radius: float = 6.0, background: int = 30,
                 size: int = SIZE) -> np.ndarray:
    """One (size, size, 3) uint8 frame: a start image for image-to-video."""
    spec = ClipSpec(shape, color, "right", float(center[0]), float(center[1]), float(radius), 0.0, 0, background)
    return render(spec, 1, size)[0]


def make_batch(seed: int, n: int, *, num_frames: int = NUM_FRAMES, size: int = SIZE,
               hold_prob: float = HOLD_PROB, min_hold: int = 1, stream: int = TRAIN):
    """(videos (n, F, size, size, 3) uint8, captions list[str], specs) for one seed."""
    specs = sample_specs(seed, n, num_frames=num_frames, size=size, hold_prob=hold_prob, min_hold=min_hold,
                         stream=stream)
    videos = np.stack([render(s, num_frames, size) for s in specs])
    return videos, [s.caption for s in specs], specs


def to_model_range(uint8_frames) -> np.ndarray:
    """uint8 -> float32 in [-1, 1] (x / 127.5 - 1), as the pipeline feeds the VAE."""
    return np.asarray(uint8_frames, np.float32) / 127.5 - 1.0


# --- a tokenizer whose vocabulary holds every caption word whole -------------------

def _bpe(symbols: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """CLIP's BPE on one word: repeatedly merge the adjacent pair of lowest rank."""
    rank = {m: i for i, m in enumerate(merges)}
    while len(symbols) > 1:
        pairs = [(rank.get(p, len(rank)), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
        r, i = min(pairs)
        if r == len(rank):
            break
        a, b = merges[r]
        out, j = [], 0
        while j < len(symbols):  # merge every occurrence of the pair, left to right
            if j + 1 < len(symbols) and symbols[j] == a and symbols[j + 1] == b:
                out.append(a + b)
                j += 2
            else:
                out.append(symbols[j])
                j += 1
        symbols = out
    return symbols


def write_caption_tokenizer(directory, words=VOCABULARY) -> str:
    """A real CLIP BPE tokenizer (vocab.json + merges.txt) in which each of `words` is ONE token.

    Vocabulary: CLIP's 256 byte symbols and their end-of-word forms (so any text
    tokenizes), then one merge chain per word (c+i, ci+r, ..., circl+e</w>), then
    BOS/EOS. Padding is "!" (id of the byte "!"), as ModelScope's OpenCLIP tokenizer pads.
    """
    from ti2v_jax.tokenizer import write_clip_bpe_tokenizer

    merges: list[tuple[str, str]] = []
    for word in words:
        # Add merges (lowest priority) until BPE, with the merges so far, makes the word one token.
        # A merge added later never fires inside an earlier word, which is already one token.
        while len(parts := _bpe(list(word[:-1]) + [word[-1] + "</w>"], merges)) > 1:
            merges.append((parts[0], parts[1]))
    return write_clip_bpe_tokenizer(directory, merges)
