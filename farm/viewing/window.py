"""The viewer's pygame window (about 30 frames a second): it drains the feed's queue without blocking, turns
each new strip into pixels once, blits only the rows that changed, and redraws only when something changed.

pygame is imported by `import_pygame` when the window is about to open, never by importing this module.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from pathlib import Path

from farm import atomic
from farm.faults import Code, FarmError
from farm.kinds import PREVIEW
from farm.retry import duration
from farm.viewing.canvas import TRANSPARENT, Canvas, checker
from farm.viewing import frames
from farm.viewing.feed import Feed
from farm.states import ENDED
from farm.viewing.state import ViewerState

log = logging.getLogger(__name__)

INSTALL_HINT = "the viewer needs pygame; install it with: pip install 'povfarm[viewer]'"


def frame_keys(pg) -> dict[int, str]:
    """The keys that step through an animation's frames, play them, and follow the newest again."""
    return {pg.K_RIGHT: frames.NEXT, pg.K_LEFT: frames.PREVIOUS, pg.K_SPACE: frames.PLAY, pg.K_END: frames.FOLLOW}


def import_pygame():
    """pygame, or a FarmError saying how to install it: only the window needs it."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError:
        raise FarmError(Code.BAD_ARGUMENT, INSTALL_HINT) from None
    return pygame


def write_png(path: Path, data: bytes) -> None:
    """Write a PNG whole or not at all."""
    path = Path(path)
    try:
        atomic.write(path, data)
    except OSError as err:
        raise FarmError(Code.BAD_ARGUMENT, f"cannot write {path}: {err.strerror or err}") from None


class Window:
    """The pygame window: the image, scaled to fit or 1:1, with the overlay on top."""

    MIN_SIZE = (480, 270)
    USUAL_IMAGE = (640, 480)    # the size the window is made for when no job is known yet (POV-Ray's own default)
    STATUS_LINES = 2
    FPS = 30
    BACKGROUND = (20, 20, 24)

    def __init__(self, pygame, state: ViewerState, feed: Feed, *, url: str = "", scale: str | float = "fit",
                 snapshot: Path | None = None, exit_when_done: bool = False, save_dir: Path = Path("."),
                 image_size: tuple[int, int] | None = None):
        """`image_size`: the first job's image, when known, to make the window for: it is opened once, at
        its size, and every image after is fitted into it (a window made again flickers and moves)."""
        self.pg = pygame
        self.state, self.feed, self.url = state, feed, url
        self.zoom = 1.0 if scale == "fit" else float(scale)
        self.fit = scale == "fit"
        self.snapshot, self.exit_when_done, self.save_dir = snapshot, exit_when_done, Path(save_dir)
        self.snapshot_written = False
        self.overlay = True
        pygame.display.init()
        pygame.font.init()
        info = pygame.display.Info()
        self.screen = (info.current_w if info.current_w > 0 else 1920, info.current_h if info.current_h > 0 else 1080)
        self.font = pygame.font.Font(None, 20)
        self.small = pygame.font.Font(None, 17)
        self.image = None           # the shown frame at full size, as the screen shows it
        self.view = None            # `image` scaled for the window
        self.view_pos = (0, 0)
        self.scale = 1.0
        self.image_key: tuple | None = None
        self.window_size = (0, 0)
        self.dirty = True
        self._shown_version = -1
        self._tick_second = 0
        self._open(self.natural_size(*(image_size or self.USUAL_IMAGE)))

    # -- layout ----------------------------------------------------------------------------------------

    def _open(self, size: tuple[int, int]) -> None:
        self.pg.display.set_mode(size, self.pg.RESIZABLE)
        self.window_size = self.pg.display.get_surface().get_size()
        self.dirty = True

    def natural_size(self, width: int, height: int) -> tuple[int, int]:
        """The window for an image: its size (times the zoom), shrunk to fit the screen, not too small, with
        the status bar below it."""
        w, h = width * self.zoom, height * self.zoom
        bar = self.status_height()
        room_w, room_h = self.screen[0] * 0.9, self.screen[1] * 0.85 - bar
        shrink = min(1.0, room_w / w, room_h / h)
        return max(self.MIN_SIZE[0], round(w * shrink)), max(self.MIN_SIZE[1], round(h * shrink) + bar)

    def status_height(self) -> int:
        """Pixels the status bar takes at the bottom of the window: the image is laid out above it."""
        return (self.small.get_linesize() + 3) * self.STATUS_LINES + 6

    def _layout(self) -> None:
        """Recompute the scale and rebuild the scaled view from the full-size image."""
        self.window_size = self.pg.display.get_surface().get_size()
        if self.image is None:
            self.view = None
            return
        w, h = self.image.get_size()
        ww, wh = self.window_size
        wh = max(1, wh - self.status_height())
        self.scale = min(ww / w, wh / h) if self.fit else self.zoom
        vw, vh = max(1, round(w * self.scale)), max(1, round(h * self.scale))
        self.view = self.image if (vw, vh) == (w, h) else self._scaled(self.image, (vw, vh))
        self.view_pos = ((ww - vw) // 2, (wh - vh) // 2)
        self.dirty = True

    def _scaled(self, surface, size):
        if size[0] <= surface.get_width():
            return self.pg.transform.smoothscale(surface, size)
        return self.pg.transform.scale(surface, size)     # enlarging: keep pixels crisp

    # -- pixels ----------------------------------------------------------------------------------------

    def _rows_surface(self, canvas: Canvas, start: int, end: int):
        """The screen pixels of rows [start, end), over the light checker when the image has alpha."""
        pg = self.pg
        data = bytes(canvas.display[start * canvas.display_row_bytes:end * canvas.display_row_bytes])
        rows = pg.image.frombuffer(data, (canvas.width, end - start), "RGBA" if canvas.channels == 4 else "RGB")
        if canvas.channels == 3:
            return rows
        base = pg.image.frombuffer(checker(canvas.width, end - start, 3, TRANSPARENT), rows.get_size(), "RGB")
        base = base.copy()
        base.blit(rows, (0, 0))
        return base

    def sync(self) -> None:
        """Bring the image surfaces up to date with the state: whole image or only the new rows."""
        pg = self.pg
        canvas = self.state.canvas()
        full, bands = self.state.take_updates()
        if canvas is None:
            if self.image is not None:
                self.image, self.view, self.dirty = None, None, True
            return
        key = (self.state.target, self.state.frame, canvas.width, canvas.height)
        if full or self.image is None or key != self.image_key:
            self.image = pg.Surface((canvas.width, canvas.height), 0, 32)
            self.image.blit(self._rows_surface(canvas, 0, canvas.height), (0, 0))
            self.image_key = key
            self._layout()
            return
        for start, end in bands:
            self.image.blit(self._rows_surface(canvas, start, end), (0, start))
            if self.view is not self.image:
                top, bottom = round(start * self.scale), round(end * self.scale)
                if bottom > top:
                    piece = self.image.subsurface((0, start, canvas.width, end - start))
                    self.view.blit(self._scaled(piece, (self.view.get_width(), bottom - top)), (0, top))
            self.dirty = True

    def save_png(self, path: Path) -> bool:
        canvas = self.state.canvas()
        if canvas is None:
            return False
        write_png(path, canvas.png())
        return True

    # -- drawing ---------------------------------------------------------------------------------------

    def draw(self) -> None:
        pg = self.pg
        win = pg.display.get_surface()
        win.fill(self.BACKGROUND)
        if self.view is not None:
            win.blit(self.view, self.view_pos)
        if self.overlay:
            self._draw_in_flight(win)
            self._draw_error(win)
        self._draw_status(win)      # below the image, so it hides nothing
        pg.display.flip()

    def _label(self, win, text: str, pos: tuple[int, int], colour, font=None, background=(0, 0, 0, 170)):
        font = font or self.small
        glyphs = font.render(text, True, colour)
        box = self.pg.Surface((glyphs.get_width() + 8, glyphs.get_height() + 4), self.pg.SRCALPHA)
        box.fill(background)
        box.blit(glyphs, (4, 2))
        win.blit(box, pos)
        return box.get_size()

    def _draw_in_flight(self, win) -> None:
        if self.view is None:
            return
        x, y = self.view_pos
        width = self.view.get_width()
        for strip in self.state.shown_in_flight():
            colour = self.state.colour(strip["node"])
            whole = strip.get("kind") == PREVIEW     # its rows are the preview's own: the whole frame
            if whole:
                top = y
                self.pg.draw.rect(win, colour, self.pg.Rect(x, y, width, max(2, self.view.get_height())), 2)
            else:
                rects = self.state.strip_rectangles(strip)
                top = y + round(rects[0][1] * self.scale)    # the label at its first column's blocks
                for left, upper, right, lower in rects:   # a band, or a sheared strip's blocks (farm.shear)
                    box = self.pg.Rect(x + round(left * self.scale), y + round(upper * self.scale),
                                       max(2, round((right - left) * self.scale)),
                                       max(2, round((lower - upper) * self.scale)))
                    self.pg.draw.rect(win, colour, box, 2 if len(rects) == 1 else 1)
            doing = {"pretrace": " radiosity pretrace", PREVIEW: " preview"}.get(strip.get("kind", ""), "")
            text = f"{strip['node']}{doing} {float(strip['progress']) * 100:.0f}%"
            # The preview's label goes top right: the first strip's is top left, over the same rows.
            left = x + width - self.small.size(text)[0] - 12 if whole else x + 4
            self._label(win, text, (left, top + 4), colour)

    def _draw_error(self, win) -> None:
        job = self.state.job
        if job.get("state") not in ("failed", "canceled"):
            return
        title = f"job {job['id']} failed" if job["state"] == "failed" else f"job {job['id']} was canceled"
        lines = [title]
        for raw in (job.get("error") or "").splitlines()[:14]:
            lines.extend(self._wrap(raw, win.get_width() - 60))
        ww, wh = win.get_size()
        height = sum(self.font.get_linesize() + 2 for _ in lines) + 20
        box = self.pg.Surface((ww - 30, min(wh - 60, height)), self.pg.SRCALPHA)
        box.fill((60, 0, 0, 215))
        y = 10
        for i, line in enumerate(lines):
            glyphs = self.font.render(line, True, (255, 220, 220) if i else (255, 255, 255))
            box.blit(glyphs, (15, y))
            y += self.font.get_linesize() + 2
        win.blit(box, (15, 15))

    def _wrap(self, text: str, width: int) -> list[str]:
        words, lines, line = text.split(" "), [], ""
        for word in words:
            candidate = f"{line} {word}" if line else word
            if self.font.size(candidate)[0] > width and line:
                lines.append(line)
                line = word
            else:
                line = candidate
        return [*lines, line]

    def _draw_status(self, win) -> None:
        lines = [line for line in self.state.status_lines(self.url) if line]
        ww, wh = win.get_size()
        step = self.small.get_linesize() + 3
        bar = self.pg.Surface((ww, self.status_height()), self.pg.SRCALPHA)
        bar.fill((0, 0, 0, 185))
        for i, line in enumerate(lines):
            colour = (255, 140, 120) if (i == 1 and not self.state.link_ok) else (235, 235, 235)
            bar.blit(self.small.render(line, True, colour), (8, 4 + i * step))
        win.blit(bar, (0, wh - bar.get_height()))

    # -- the loop --------------------------------------------------------------------------------------

    def handle_key(self, key: int) -> int | None:
        pg, state = self.pg, self.state
        if key in (pg.K_q, pg.K_ESCAPE):
            return state.exit_code if state.finished else 0
        if key == pg.K_s:
            job = state.job
            if not job or state.canvas() is None:
                state.say("nothing to save yet")
            else:
                suffix = f"-frame{state.frame}" if int(job.get("frames_total", 1)) > 1 else ""
                path = self.save_dir / f"povfarm-job{job['id']}{suffix}.png"
                try:
                    self.save_png(path)
                    state.say(f"saved {path}")
                except FarmError as err:
                    state.say(str(err))
        elif key == pg.K_f:
            self.fit = not self.fit
            if not self.fit:
                self.zoom = 1.0
            self._layout()
        elif key == pg.K_o:
            self.overlay = not self.overlay
            self.dirty = True
        elif key in (pg.K_n, pg.K_p):
            state.step(1 if key == pg.K_n else -1)
            self.feed.request_jobs()
        elif key in frame_keys(pg):
            state.navigate(frame_keys(pg)[key])
        return None

    def drain(self, budget: float = 0.02) -> None:
        """Apply queued messages for at most `budget` seconds, so the window stays responsive."""
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            try:
                message = self.feed.messages.get_nowait()
            except queue.Empty:
                return
            self.state.handle(message)

    def step(self) -> int | None:
        """One turn of the loop; returns an exit code when the viewer should close."""
        pg, state = self.pg, self.state
        for event in pg.event.get():
            if event.type == pg.QUIT:
                return state.exit_code if state.finished else 0
            if event.type == pg.KEYDOWN:
                code = self.handle_key(event.key)
                if code is not None:
                    return code
            elif event.type in (pg.VIDEORESIZE, getattr(pg, "WINDOWSIZECHANGED", -1), pg.VIDEOEXPOSE):
                self.dirty = True
        if pg.display.get_surface().get_size() != self.window_size:
            self._layout()
        self.drain()
        if self.feed.wanted != state.wanted():
            self.feed.watch(*state.wanted())
        self.feed.follow = state.follow
        if state.choice.playing:
            state.navigate("")
        self.sync()
        if state.finished and not self.snapshot_written and self.snapshot is not None:
            if self.save_png(self.snapshot):
                self.snapshot_written = True
        if state.finished and self.exit_when_done and (self.snapshot is None or self.snapshot_written):
            return state.exit_code
        if self.exit_when_done and state.gave_up:
            log.error("gave up on the controller at %s after the setting patience (%s): %s", self.url,
                      duration(state.outage.limit), state.link_error)
            return 1
        second = int(time.monotonic())
        if second != self._tick_second:         # the clocks in the status bar move once a second
            self._tick_second = second
            state.expire_message()
            if state.job.get("state") not in ENDED and state.job:
                self.dirty = True
        if state.version != self._shown_version:
            self._shown_version, self.dirty = state.version, True
        title = f"povfarm viewer - job {state.job['id']} {state.job.get('name', '')}" if state.job else \
            "povfarm viewer"
        if title != pg.display.get_caption()[0]:
            pg.display.set_caption(title)
        if self.dirty:
            self.draw()
            self.dirty = False
        return None

    def run(self) -> int:
        clock = self.pg.time.Clock()
        while True:
            code = self.step()
            if code is not None:
                return code
            clock.tick(self.FPS)
