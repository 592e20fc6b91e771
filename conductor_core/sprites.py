"""A rule-based sprite generator: a small block-character axolotl per mood, size and variant.

No model, no files: shapes (ellipses and thick line segments in a unit square) are painted onto a
square pixel canvas, then every two pixels stacked vertically become one character cell with
half blocks (``▀``/``▄``/``█``) and foreground/background colours, so a terminal cell (about
twice as tall as wide) shows square pixels. Sizes: tiny 8×4 cells, small 12×6, medium 16×8,
large 24×12. Variants 0..7 are colour morphs (0 is the pink leucistic base). A sprite takes well
under a millisecond (tests/test_sprites.py measures it).

:func:`check_sprite` enforces the limits every sprite on the wire obeys: at most 100×100 and
10,000 cells, characters only from ASCII printable, box drawing (U+2500–U+257F) and block
elements with shades (U+2580–U+259F), colours only ``#rrggbb``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .avatar_grammar import MOODS, SIZES
from .protocol import SpriteCell, SpriteReply

__all__ = [
    "MAX_CELLS",
    "MAX_HEIGHT",
    "MAX_VARIANT",
    "MAX_WIDTH",
    "SIZE_CELLS",
    "allowed_char",
    "check_sprite",
    "render_sprite",
    "sprite_key",
]

MAX_WIDTH = MAX_HEIGHT = 100
MAX_CELLS = 10_000
SIZE_CELLS = {"tiny": (8, 4), "small": (12, 6), "medium": (16, 8), "large": (24, 12)}  # (width, height)

_COLOUR = re.compile(r"#[0-9a-f]{6}\Z")

# body, gills, belly, eyes, mouth, blush
_PALETTES = (
    ("#f7c6d3", "#e25c7e", "#fde3ea", "#1d1a2b", "#8c2f45", "#ff8fab"),  # 0 leucistic (pink)
    ("#7d7a45", "#9c5f46", "#a3a06a", "#101010", "#3a2a1a", "#c98a6a"),  # 1 wild
    ("#f4d36e", "#ea8f4c", "#fbe8a8", "#b3263a", "#8a3b1c", "#ffa07a"),  # 2 golden albino
    ("#343846", "#565b75", "#4a4f61", "#e9e9f2", "#15161c", "#8a6f8f"),  # 3 melanoid
    ("#cc8d5c", "#a3522e", "#e2b48e", "#1a120c", "#5e2a14", "#f08a6a"),  # 4 copper
    ("#cbb8e6", "#9478d2", "#e3d8f3", "#231b38", "#5b3d8c", "#f29ac7"),  # 5 lavender
    ("#a3dbea", "#2f9fc0", "#d3eff6", "#0f2530", "#1f5c70", "#f7a1b8"),  # 6 blue
    ("#c3ebcd", "#4fb874", "#e2f6e7", "#12281a", "#2c6b40", "#f5a3a3"),  # 7 mint
)
MAX_VARIANT = len(_PALETTES) - 1
_SPARKLE = "#ffe066"
_WHITE = "#ffffff"

# gill fronds, left side: (x0, y0) -> (x1, y1) in the unit square; the right side is mirrored
_GILLS = ((0.25, 0.30, 0.07, 0.13), (0.20, 0.40, 0.03, 0.37), (0.23, 0.50, 0.07, 0.63))


def sprite_key(mood: str, size: str, variant: int) -> str:
    return f"axolotl/{mood}/{size}/{variant}"


def allowed_char(ch: str) -> bool:
    """One character from the allow-list: printable ASCII, box drawing, blocks and shades."""
    if len(ch) != 1:
        return False
    o = ord(ch)
    return 0x20 <= o <= 0x7E or 0x2500 <= o <= 0x259F


def check_sprite(width: int, height: int, cells: Sequence[SpriteCell]) -> None:
    """Raise ValueError unless the sprite is within the limits and uses allowed characters."""
    if not (1 <= width <= MAX_WIDTH and 1 <= height <= MAX_HEIGHT):
        raise ValueError(f"sprite is {width}x{height}; the limit is {MAX_WIDTH}x{MAX_HEIGHT}")
    if width * height > MAX_CELLS:
        raise ValueError(f"sprite has {width * height} cells; the limit is {MAX_CELLS}")
    if len(cells) != width * height:
        raise ValueError(f"sprite has {len(cells)} cells for {width}x{height}")
    for index, cell in enumerate(cells):
        if not allowed_char(cell.ch):
            raise ValueError(f"cell {index}: character {cell.ch!r} is not allowed")
        for colour in (cell.fg, cell.bg):
            if colour is not None and not _COLOUR.match(colour):
                raise ValueError(f"cell {index}: colour {colour!r} is not #rrggbb")


class _Canvas:
    __slots__ = ("n", "px")

    def __init__(self, n: int) -> None:
        self.n = n
        self.px: list[str | None] = [None] * (n * n)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, colour: str) -> None:
        n, px = self.n, self.px
        x0, x1 = max(0, int((cx - rx) * n)), min(n - 1, int((cx + rx) * n))
        y0, y1 = max(0, int((cy - ry) * n)), min(n - 1, int((cy + ry) * n))
        for y in range(y0, y1 + 1):
            dy = ((y + 0.5) / n - cy) / ry
            dy *= dy
            row = y * n
            for x in range(x0, x1 + 1):
                dx = ((x + 0.5) / n - cx) / rx
                if dx * dx + dy <= 1.0:
                    px[row + x] = colour

    def segment(self, x0: float, y0: float, x1: float, y1: float, width: float, colour: str) -> None:
        n, px = self.n, self.px
        half = max(width, 0.55 / n)
        ax, ay = min(x0, x1) - half, min(y0, y1) - half
        bx, by = max(x0, x1) + half, max(y0, y1) + half
        vx, vy = x1 - x0, y1 - y0
        length2 = vx * vx + vy * vy
        for y in range(max(0, int(ay * n)), min(n - 1, int(by * n)) + 1):
            py = (y + 0.5) / n
            for x in range(max(0, int(ax * n)), min(n - 1, int(bx * n)) + 1):
                pxx = (x + 0.5) / n
                t = ((pxx - x0) * vx + (py - y0) * vy) / length2
                t = 0.0 if t < 0 else 1.0 if t > 1 else t
                ex, ey = pxx - (x0 + t * vx), py - (y0 + t * vy)
                if ex * ex + ey * ey <= half * half:
                    px[y * n + x] = colour

    def dot(self, x: float, y: float, colour: str, radius: float = 0.0) -> None:
        """The pixel under (x, y); with a radius, every pixel whose centre is that close."""
        n = self.n
        if radius * n >= 0.75:
            self.ellipse(x, y, radius, radius, colour)
            return
        ix, iy = min(n - 1, max(0, int(x * n))), min(n - 1, max(0, int(y * n)))
        self.px[iy * n + ix] = colour

    def cells(self) -> list[SpriteCell]:
        """Two pixel rows per cell row, as half blocks."""
        n, px, out = self.n, self.px, []
        for y in range(0, n, 2):
            top_row, bottom_row = y * n, (y + 1) * n
            for x in range(n):
                top, bottom = px[top_row + x], px[bottom_row + x]
                if top is None:
                    out.append(_BLANK if bottom is None else SpriteCell("▄", bottom))
                elif bottom is None:
                    out.append(SpriteCell("▀", top))
                elif top == bottom:
                    out.append(SpriteCell("█", top))
                else:
                    out.append(SpriteCell("▀", top, bottom))
        return out


_BLANK = SpriteCell(" ")


def render_sprite(mood: str, size: str, variant: int = 0) -> SpriteReply:
    """The axolotl for a canonical mood and size; ValueError for unknown names or variants."""
    if mood not in MOODS:
        raise ValueError(f"unknown mood {mood!r}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}")
    if not 0 <= variant <= MAX_VARIANT:
        raise ValueError(f"variant must be 0..{MAX_VARIANT}")
    width, height = SIZE_CELLS[size]
    body, gill, belly, eye, mouth, blush = _PALETTES[variant]
    c = _Canvas(width)
    fine = width >= 16  # room for details
    # gills behind the head, then tail, body, limbs, head
    for x0, y0, x1, y1 in _GILLS:
        c.segment(x0, y0, x1, y1, 0.045, gill)
        c.segment(1 - x0, y0, 1 - x1, y1, 0.045, gill)
    c.segment(0.62, 0.90, 0.92, 0.80, 0.05, body)  # tail to one side
    c.ellipse(0.5, 0.77, 0.21, 0.17, body)
    c.ellipse(0.5, 0.80, 0.11, 0.10, belly)
    c.ellipse(0.30, 0.91, 0.07, 0.05, body)
    c.ellipse(0.70, 0.91, 0.07, 0.05, body)
    c.ellipse(0.5, 0.41, 0.31, 0.25, body)
    _face(c, mood, eye, mouth, blush, body, fine)
    cells = c.cells()
    return SpriteReply(sprite_key(mood, size, variant), width, height, cells, mood=mood, size=size, variant=variant)


def _face(c: _Canvas, mood: str, eye: str, mouth: str, blush: str, body: str, fine: bool) -> None:
    lx, rx, ey, my = 0.37, 0.63, 0.39, 0.52
    r = 0.045 if fine else 0.0
    if mood in ("happy", "playful", "shy", "calm", "excited"):
        c.dot(0.29, 0.49, blush, r)
        c.dot(0.71, 0.49, blush, r)
    if mood == "happy":
        c.dot(lx, ey, eye, r), c.dot(rx, ey, eye, r)
        c.segment(0.42, 0.50, 0.50, 0.54, 0.0, mouth), c.segment(0.50, 0.54, 0.58, 0.50, 0.0, mouth)
    elif mood == "thinking":
        c.dot(lx + 0.03, ey - 0.03, eye, r), c.dot(rx + 0.03, ey - 0.03, eye, r)
        c.segment(0.47, my, 0.55, my, 0.0, mouth)
        c.dot(0.86, 0.10, _WHITE, 0.04 if fine else 0.0)  # a thought
    elif mood == "playful":
        c.segment(lx - 0.05, ey, lx + 0.04, ey, 0.0, eye)  # a wink
        c.dot(rx, ey, eye, r)
        c.segment(0.43, 0.51, 0.57, 0.51, 0.0, mouth)
        c.dot(0.53, 0.55, blush)  # tongue
    elif mood == "shy":
        c.dot(lx, ey + 0.03, eye, r), c.dot(rx, ey + 0.03, eye, r)
        c.dot(0.5, my + 0.01, mouth)
        c.dot(0.29, 0.49, blush, 0.06 if fine else 0.0), c.dot(0.71, 0.49, blush, 0.06 if fine else 0.0)
    elif mood == "excited":
        big = 0.07 if fine else 0.045
        c.dot(lx, ey, eye, big), c.dot(rx, ey, eye, big)
        if fine:
            c.dot(lx - 0.02, ey - 0.02, _WHITE), c.dot(rx - 0.02, ey - 0.02, _WHITE)
        c.dot(0.5, my + 0.02, mouth, 0.045 if fine else 0.0)
        c.dot(0.88, 0.08, _SPARKLE), c.dot(0.12, 0.08, _SPARKLE)
    elif mood == "confused":
        c.dot(lx, ey - 0.03, eye, r), c.dot(rx, ey + 0.03, eye, r)
        c.segment(0.43, my + 0.01, 0.50, my - 0.01, 0.0, mouth), c.segment(0.50, my - 0.01, 0.57, my + 0.01, 0.0, mouth)
        c.dot(0.84, 0.08, _SPARKLE)
    elif mood == "calm":
        c.segment(lx - 0.04, ey, lx + 0.04, ey, 0.0, eye), c.segment(rx - 0.04, ey, rx + 0.04, ey, 0.0, eye)
        c.segment(0.45, my, 0.55, my, 0.0, mouth)
    else:  # curious
        big = 0.06 if fine else 0.0
        c.dot(lx + 0.04, ey, eye, big), c.dot(rx + 0.04, ey, eye, big)
        c.dot(0.52, my + 0.01, mouth)
