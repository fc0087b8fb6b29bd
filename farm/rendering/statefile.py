"""POV-Ray 3.7's render state file, decoded: the finished blocks of a render that is still running.

While it renders to a file, POV-Ray keeps `<output>.pov-state` beside it (the `+O` name with its
extension replaced) so that `+C` can continue an interrupted render. Its front end appends every message
of finished pixels it receives from the renderer and flushes the file after each one; when the render
succeeds it deletes the file. So the file is a live, append-only record of what is already rendered.
Read from POV-Ray 3.7.0.10's source (`frontend/renderfrontend.{h,cpp}`: NewBackup, ContinueBackup;
`frontend/imagemessagehandler.cpp`: what is written; `backend/scene/view.cpp`: CompletedRectangle, what a
message holds; `base/povmscpp.cpp`: POVMS_Object::Read/Write; `base/povms.cpp`: POVMSStream_Read):

- a 512-byte header: `POV-Ray Render State File` and three NULs (28 bytes), `0001`, then 480 reserved
  bytes that POV-Ray does not clear (they hold whatever its stack held: never pass the file on).
- then messages, each `POVRAYMS`, version 0x0370 (int32), the object's size (int32), its encoding
  (`RAWS`, or `GZIP` followed by the inflated size and zlib data: POV-Ray's Unix build writes RAWS), and
  the object. All numbers are big-endian; floats are IEEE float32.
- an object is `OBJE`, a count, then count times a 4-char key and a value: a 4-char type, an int32 size
  or count, and the data (INT4, TYPE: 4 bytes; VFL4/VIN4: count x 4; BOOL: 1; OBJE/LIST: nested;
  CSTR, U2ST, ADDR and the rest: size bytes).
- `MIDE` names the message. `PxBS` (PixelBlockSet) is one finished render block: `Left`, `Top `, `Righ`,
  `Bott` (inclusive, 0-based, in image coordinates, also in a `+SR/+ER` strip), `PBlo` the pixels row by
  row as R G B filter transmit, `PiId` the block's serial (final blocks only), `PiSi` the pixel size (1).
  `PxSe` (PixelSet) is a coarse preview pass, the radiosity pretrace: `PPos` x, y pairs, `PCol` their
  colours, each painting a `PiSi` x `PiSi` square (POV-Ray's own window shows these first).

read_pieces()/read_blocks() decode every whole message from an offset and return where the next one
begins; a message still being written (the file ends inside it) is left for the next call. Anything that
is not this format raises ValueError.

continue_file() writes one: POV-Ray's `+C` (continue an interrupted render) reads every message's `PiId`
and renders only the blocks it does not find, keeping their serials in the whole frame (ContinueBackup:
the serials below the first missing one are counted, the others skipped). A serial seeds a block's
radiosity pretrace jitter (`backend/render/radiositytask.cpp`), so a band of the frame pretraced this
way takes the very samples a whole-frame render would take there, where `+SR/+ER` numbers its blocks
from 0 and jitters them otherwise. Colours are in the scene's working gamma: `farm/rendering/gamma.py` turns them
into the integers of the image POV-Ray will write.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
import zlib
from array import array
from typing import Collection, Sequence, Union

from farm.rendering.gamma import Encoding
from farm.strips import band_serials, block_count

HEADER_SIZE = 512
SIGNATURE = b"POV-Ray Render State File\0\0\0" + b"0001"   # sig[28] (the literal and its NUL), ver[4]
MESSAGE_MAGIC = b"POVRAYMS"
POVMS_VERSION = 0x0370
_MESSAGE_HEAD = struct.Struct(">8sii4s")      # magic, version, object size, encoding
_INT = struct.Struct(">i")
_ENTRY_HEAD = struct.Struct(">4si")           # type, size or count
_SKIPPED = b"Skip"                            # a message id POV-Ray's image handler ignores
_MAX_DEPTH = 8                                # POV-Ray's pixel messages nest no object at all
_MAX_INFLATED = 1 << 28
_SWAP = sys.byteorder == "little"
_CHANNELS = 5                                 # R G B filter transmit


@dataclasses.dataclass(frozen=True)
class Block:
    """A finished render block: its rectangle (inclusive, 0-based image coordinates) and its pixels, row
    by row, 5 float32 each (R G B filter transmit, premultiplied, in the scene's working gamma)."""
    left: int
    top: int
    right: int
    bottom: int
    pixels: array
    serial: int | None = None     # POV-Ray's block id; only final blocks carry one

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    def rows(self, encoding: Encoding, alpha: bool = False) -> list[bytes]:
        """The block as the image file's rows would hold it: RGB (or RGBA with alpha) samples at the
        encoding's bit depth, top row first."""
        samples = encoding.encode(self.pixels, alpha)
        stride = len(samples) // self.height
        return [samples[row * stride:(row + 1) * stride] for row in range(self.height)]


@dataclasses.dataclass(frozen=True)
class Spots:
    """Preview pixels (the radiosity pretrace): spot i is `positions[2i], positions[2i+1]` (x, y, its
    top-left corner) and paints a size x size square with colour `pixels[5i:5i+5]`."""
    positions: array
    pixels: array
    size: int

    def __len__(self) -> int:
        return len(self.positions) // 2

    def colours(self, encoding: Encoding, alpha: bool = False) -> bytes:
        """Each spot's colour as the image file would hold it, RGB or RGBA, one after another."""
        return encoding.encode(self.pixels, alpha)


Piece = Union[Block, Spots]


def read_blocks(data: bytes, start: int = 0) -> tuple[list[Block], int]:
    """The finished blocks of whole messages from `start` (0, or an offset this returned before) on,
    and the offset of the first message not read yet. `data` is the file from its first byte: bytes, or
    an mmap of the file so that only the new tail is read."""
    pieces, end = read_pieces(data, start)
    return [piece for piece in pieces if isinstance(piece, Block)], end


def read_pieces(data: bytes, start: int = 0) -> tuple[list[Piece], int]:
    """Like read_blocks, with the preview spots too, in the order POV-Ray wrote them."""
    view = memoryview(data).cast("B")
    if start < 0 or start > len(view):
        raise ValueError(f"offset {start} is outside the {len(view)}-byte render state file: "
                         "it was replaced, or the offset is not one read_blocks returned")
    if not _header_checked(view):
        return [], start
    if 0 < start < HEADER_SIZE:
        raise ValueError(f"offset {start} is inside the render state file's header")
    position, pieces = max(start, HEADER_SIZE), []
    while True:
        decoded = _read_message(view, position)
        if decoded is None:
            return pieces, position
        piece, position = decoded
        if piece is not None:
            pieces.append(piece)


def _header_checked(view: memoryview) -> bool:
    """True once the whole header is there and right; False while it is still being written."""
    head = bytes(view[:len(SIGNATURE)])
    if head != SIGNATURE[:len(head)]:
        if head[:len(SIGNATURE) - 4] == SIGNATURE[:-4]:
            raise ValueError(f"the render state file has version {head[-4:]!r}; POV-Ray 3.7 writes b'0001'")
        raise ValueError("this is not a POV-Ray render state file (it does not start with "
                         "'POV-Ray Render State File')")
    return len(view) >= HEADER_SIZE


def _read_message(view: memoryview, position: int) -> tuple[Piece | None, int] | None:
    """The piece of the message at `position` (None for other messages) and where the next begins; None
    while the message is not all there."""
    if len(view) - position < _MESSAGE_HEAD.size:
        _check_partial_magic(view, position)
        return None
    magic, version, size, encoding = _MESSAGE_HEAD.unpack_from(view, position)
    if magic != MESSAGE_MAGIC:
        raise ValueError(f"no POVMS message at byte {position} of the render state file "
                         f"(found {magic!r}): the file is corrupt")
    if version != POVMS_VERSION:
        raise ValueError(f"the message at byte {position} has POVMS version {version:#x}, not 0x370")
    if size <= 0:
        raise ValueError(f"the message at byte {position} says it holds {size} bytes: the file is corrupt")
    body = position + _MESSAGE_HEAD.size
    if encoding == b"RAWS":
        end = body + size
        if end > len(view):
            return None
        return _piece(_read_object(view[body:end], position), position), end
    if encoding == b"GZIP":
        end = body + 4 + size
        if end > len(view):
            return None
        return _piece(_read_object(_inflate(view, body, size, position), position), position), end
    raise ValueError(f"the message at byte {position} has an unknown encoding {encoding!r}")


def _check_partial_magic(view: memoryview, position: int) -> None:
    head = bytes(view[position:position + len(MESSAGE_MAGIC)])
    if head != MESSAGE_MAGIC[:len(head)]:
        raise ValueError(f"no POVMS message at byte {position} of the render state file "
                         f"(found {head!r}): the file is corrupt")


def _inflate(view: memoryview, body: int, size: int, position: int) -> memoryview:
    (inflated_size,) = _INT.unpack_from(view, body)
    if not 0 < inflated_size <= _MAX_INFLATED:
        raise ValueError(f"the compressed message at byte {position} claims {inflated_size} bytes")
    inflater = zlib.decompressobj()
    try:
        object_bytes = inflater.decompress(bytes(view[body + 4:body + 4 + size]), inflated_size)
    except zlib.error as error:
        raise ValueError(f"the compressed message at byte {position} does not inflate: {error}") from None
    if len(object_bytes) != inflated_size:
        raise ValueError(f"the compressed message at byte {position} inflates to "
                         f"{len(object_bytes)} bytes, not the {inflated_size} it claims")
    return memoryview(object_bytes)


def _read_object(body: memoryview, position: int) -> dict[str, object]:
    """The message's attributes by key, which must fill its stated size exactly."""
    try:
        value, end = _read_value(body, 0, 0)
    except struct.error:
        raise ValueError(f"the message at byte {position} ends inside one of its attributes: "
                         "the file is corrupt") from None
    if not isinstance(value, dict) or end != len(body):
        raise ValueError(f"the message at byte {position} is not one POVMS object of its stated size "
                         f"({len(body)} bytes): the file is corrupt")
    return value


def _read_value(body: memoryview, offset: int, depth: int) -> tuple[object, int]:
    """One POVMS value at offset (as POVMSStream_Read does) and the offset after it. Kept: objects (as
    dicts), INT4, TYPE, VIN4 and VFL4; everything else is skipped (None). struct.error when the bytes
    run out or make no sense."""
    kind, size = _ENTRY_HEAD.unpack_from(body, offset)
    offset += _ENTRY_HEAD.size
    if size < 0:
        raise struct.error("negative size")
    if kind in (b"OBJE", b"RESU", b"LOCK", b"LIST"):
        if depth >= _MAX_DEPTH:
            raise struct.error("nested too deep")
        return _read_container(body, offset, kind, size, depth + 1)
    length = _data_length(kind, size)
    if offset + length > len(body):
        raise struct.error("past the end")
    chunk = body[offset:offset + length]
    if kind == b"INT4":
        return _INT.unpack(chunk)[0], offset + length
    if kind == b"TYPE":
        return bytes(chunk).decode("latin-1"), offset + length
    if kind in (b"VFL4", b"VIN4"):
        return _numbers("f" if kind == b"VFL4" else "i", chunk), offset + length
    return None, offset + length


_FIXED_SIZES = {b"INT4": 4, b"FLT4": 4, b"TYPE": 4, b"INT8": 8, b"BOOL": 1}   # their size field is ignored
_VECTOR_ITEM_SIZES = {b"VIN4": 4, b"VFL4": 4, b"VTYP": 4, b"VIN8": 8}       # theirs is a count


def _data_length(kind: bytes, size: int) -> int:
    """How many bytes follow a value's type and size (strings, addresses and the rest: size bytes)."""
    if kind in _FIXED_SIZES:
        return _FIXED_SIZES[kind]
    return size * _VECTOR_ITEM_SIZES.get(kind, 1)


def _read_container(body: memoryview, offset: int, kind: bytes, count: int,
                    depth: int) -> tuple[object, int]:
    if kind == b"LIST":
        for _ in range(count):
            _, offset = _read_value(body, offset, depth)
        return None, offset
    attributes: dict[str, object] = {}
    for _ in range(count):
        if offset + 4 > len(body):
            raise struct.error("past the end")
        key = bytes(body[offset:offset + 4]).decode("latin-1")
        attributes[key], offset = _read_value(body, offset + 4, depth)
    return attributes, offset


def _numbers(code: str, chunk: memoryview) -> array:
    numbers = array(code)
    numbers.frombytes(chunk)
    if _SWAP:
        numbers.byteswap()
    return numbers


def _piece(attributes: dict[str, object], position: int) -> Piece | None:
    ident = attributes.get("MIDE")
    if ident == "PxBS":
        return _block(attributes, position)
    if ident == "PxSe":
        return _spots(attributes, position)
    return None


def _int(attributes: dict[str, object], key: str, position: int, default: int | None = None) -> int:
    value = attributes.get(key, default)
    if not isinstance(value, int):
        raise ValueError(f"the pixel message at byte {position} has no integer {key!r}")
    return value


def _block(attributes: dict[str, object], position: int) -> Block:
    left, top = _int(attributes, "Left", position), _int(attributes, "Top ", position)
    right, bottom = _int(attributes, "Righ", position), _int(attributes, "Bott", position)
    pixels = attributes.get("PBlo")
    if not 0 <= left <= right or not 0 <= top <= bottom:
        raise ValueError(f"the block at byte {position} has no area: left {left}, top {top}, "
                         f"right {right}, bottom {bottom}")
    area = (right - left + 1) * (bottom - top + 1)
    if not isinstance(pixels, array) or pixels.typecode != "f" or len(pixels) != area * _CHANNELS:
        raise ValueError(f"the block at byte {position} ({right - left + 1}x{bottom - top + 1}) does "
                         f"not hold {area * _CHANNELS} floats of pixels")
    serial = attributes.get("PiId")
    return Block(left, top, right, bottom, pixels, serial if isinstance(serial, int) else None)


def _spots(attributes: dict[str, object], position: int) -> Spots:
    positions, pixels = attributes.get("PPos"), attributes.get("PCol")
    size = _int(attributes, "PiSi", position, 1)
    if (not isinstance(positions, array) or positions.typecode != "i"
            or not isinstance(pixels, array) or pixels.typecode != "f"
            or len(positions) % 2 or len(positions) // 2 * _CHANNELS != len(pixels)):
        raise ValueError(f"the preview pixels at byte {position} do not pair positions with colours")
    if size < 1:
        raise ValueError(f"the preview pixels at byte {position} have size {size}")
    return Spots(positions, pixels, size)


def continue_file(width: int, height: int, block: int, pieces: Sequence[tuple[int, int]]) -> bytes:
    """A render state file with which `+C` renders only the blocks of the pieces of rows [start, end)
    (0-based, end exclusive; a row that is no block edge cuts its row of blocks, `strips.band_serials`) of a
    `width` x `height` frame of `block`-pixel render blocks, numbered as in the whole frame: one message per
    other block, holding its serial and nothing to paint."""
    bad = [(start, end) for start, end in pieces if not 0 <= start < end <= height]
    if block < 1 or width < 1 or bad or not pieces:
        raise ValueError(f"rows {bad or list(pieces)} of a {width}x{height} frame in {block}-pixel blocks")
    return blocks_file(width, height, block, {serial for start, end in pieces
                                              for serial in band_serials(width, height, block, start, end)})


def blocks_file(width: int, height: int, block: int, keep: Collection[int]) -> bytes:
    """A render state file with which `+C` renders only the blocks whose serials (left to right, top to
    bottom, from 0) are in `keep`: one message for every other block of the frame."""
    if block < 1 or width < 1 or height < 1:
        raise ValueError(f"a {width}x{height} frame in {block}-pixel blocks")
    total = block_count(width, block) * block_count(height, block)
    skipped = (serial for serial in range(total) if serial not in keep)
    return SIGNATURE.ljust(HEADER_SIZE, b"\0") + b"".join(_skip_message(serial) for serial in skipped)


def _skip_message(serial: int) -> bytes:
    entries = (b"MCLA" + _ENTRY_HEAD.pack(b"TYPE", 4) + b"VImg",
               b"MIDE" + _ENTRY_HEAD.pack(b"TYPE", 4) + _SKIPPED,
               b"PiId" + _ENTRY_HEAD.pack(b"INT4", 4) + _INT.pack(serial))
    body = _ENTRY_HEAD.pack(b"OBJE", len(entries)) + b"".join(entries)
    return _MESSAGE_HEAD.pack(MESSAGE_MAGIC, POVMS_VERSION, len(body), b"RAWS") + body
