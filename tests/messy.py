"""A messy image folder, as real ones are: broken files, odd formats, duplicates.

`make_messy_folder` writes an ImageNet-layout dataset whose every oddity is
known, and returns what a check must find, so tests can compare exactly.
"""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fixtures import colour_image

UNICODE_NAME = "fourmi_été_日本.jpg"


@dataclass
class Messy:
    """A messy folder and what a check must report about it.

    Paths are relative to ``root``.
    """

    root: Path
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> exact reason
    odd_but_fine: list[str] = field(default_factory=list)  # readable despite their format
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> usable
    duplicates: list[tuple[str, set[str]]] = field(default_factory=list)  # (kind, paths)
    tiny: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (width, height)
    empty: dict[str, str] = field(default_factory=dict)  # class folder -> reason


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` RGB pixels, and no pixel data.

    Pillow refuses it when opening (DecompressionBombError: more than twice
    ``Image.MAX_IMAGE_PIXELS``), before allocating anything.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )


def odd_bmp() -> bytes:
    """A BMP whose header claims 7 bits per pixel, a depth Pillow does not support."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(buf, format="BMP")
    data = bytearray(buf.getvalue())
    struct.pack_into("<H", data, 28, 7)  # BITMAPINFOHEADER biBitCount
    return bytes(data)


def make_messy_folder(root: Path, seed: int = 0) -> Messy:
    """Write ``root/{train,val}/<class>/*`` with every kind of problem; return what to expect.

    * ``train/ants``: six good JPEGs; a truncated JPEG, a zero-byte file, a text
      file named ``.jpg``, a PNG header claiming 40000x40000 pixels and a BMP of
      an unsupported depth (unreadable); an animated GIF, a PNG with alpha, a
      CMYK JPEG, a 16-bit PNG, a greyscale JPEG, an EXIF-rotated JPEG and a
      16x12 PNG (all readable); a byte copy of a good image under a unicode
      name (a repeat within the class).
    * ``train/bees``: six good JPEGs and a byte copy of an ant (two labels).
    * ``train/moths``: only a text file named ``.jpg`` (no readable image).
    * ``train/wasps`` and ``val/wasps``: empty folders.
    * ``val/ants``, ``val/bees``: three good JPEGs each; ``val/bees`` also holds
      a byte copy of a training bee (a train/valid leak).
    """
    rng = np.random.default_rng(seed)
    m = Messy(root)

    def put(rel: str, img: Image.Image | bytes, **save) -> str:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(img, bytes):
            path.write_bytes(img)
        else:
            img.save(path, **save)
        return rel

    for split, n in (("train", 6), ("val", 3)):
        for k, cls in enumerate(("ants", "bees")):
            for i in range(n):
                put(f"{split}/{cls}/{cls}_{i}.jpg", colour_image(k, rng, (48, 40)))

    ant = colour_image(0, rng, (64, 48))
    jpeg = io.BytesIO()
    ant.save(jpeg, format="JPEG")
    m.unreadable = {
        put("train/ants/truncated.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 2]): (
            "truncated image data"
        ),
        put("train/ants/zero.jpg", b""): "empty file",
        put("train/ants/text.jpg", b"this is not a picture\n"): "not an image",
        put("train/ants/bomb.png", bomb_png()): "image too large (possible decompression bomb)",
        put("train/ants/odd.bmp", odd_bmp()): (
            "unsupported mode or encoding (Unsupported BMP pixel depth (7))"
        ),
        put("train/moths/notes.jpg", b"moth sightings, 2024\n"): "not an image",
    }

    frames = [colour_image(0, rng, (40, 32)) for _ in range(2)]
    gif = put("train/ants/anim.gif", frames[0], save_all=True, append_images=frames[1:])
    rgba = colour_image(0, rng, (40, 32)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((40, 32)))
    alpha = put("train/ants/alpha.png", rgba)
    cmyk = put("train/ants/cmyk.jpg", colour_image(0, rng, (40, 32)).convert("CMYK"))
    deep = np.linspace(0, 65535, 40 * 32).astype(np.uint16).reshape(32, 40)
    deep_png = put("train/ants/deep.png", Image.fromarray(deep))
    grey = put("train/ants/grey.jpg", colour_image(0, rng, (40, 32)).convert("L"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = put("train/ants/rotated.jpg", colour_image(0, rng, (48, 36)), exif=exif)
    tiny = put("train/ants/tiny.png", colour_image(0, rng, (16, 12)))
    m.odd_but_fine = [gif, alpha, cmyk, deep_png, grey, rotated, tiny]
    m.tiny = {tiny: (16, 12)}

    def copy(src: str, dst: str) -> str:
        shutil.copyfile(root / src, root / dst)
        return dst

    m.duplicates = [
        ("repeat in a class", {"train/ants/ants_0.jpg", copy("train/ants/ants_0.jpg", f"train/ants/{UNICODE_NAME}")}),
        ("two labels", {"train/ants/ants_1.jpg", copy("train/ants/ants_1.jpg", "train/bees/ant.jpg")}),
        ("train/valid leak", {"train/bees/bees_2.jpg", copy("train/bees/bees_2.jpg", "val/bees/leak.jpg")}),
    ]  # fmt: skip

    (root / "train" / "wasps").mkdir()
    (root / "val" / "wasps").mkdir()
    m.empty = {
        "train/moths": "no readable images",
        "train/wasps": "no image files",
        "val/wasps": "no image files",
    }
    m.counts = {
        "train": {"ants": 6 + 7 + 1, "bees": 6 + 1, "moths": 0},
        "valid": {"ants": 3, "bees": 3 + 1, "moths": 0},
    }
    return m
