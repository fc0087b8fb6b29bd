// A job's frames as the page paints them: final rows, live blocks and the preview, each frame an
// ImageData over a checkerboard, as farm/viewing/canvas.py keeps them for the pygame viewer; and which
// frames have pixels to step through (farm/viewing/frames.py).
"use strict";

(() => {
  const CHECKER = 8;
  const UNRENDERED = [0x2c, 0x36];         // dark checkerboard: rows nobody has rendered yet

  function frameCanvas(view, number) {
    let frame = view.frames.get(number);
    if (!frame) {
      const img = new ImageData(view.width, view.height);
      fillChecker(img);
      // spans: the rows painted (of the sheared image, farm/shear.py, where view.shear says so); finals: the
      // frame's rectangles they cover; final: of a sheared frame, which blocks are final by pixel row.
      frame = { img, spans: [], preview: null, blocks: [], finals: [],
                final: view.shear ? new Uint8Array(view.height * columnsOf(view)) : null };
      view.frames.set(number, frame);
    }
    return frame;
  }

  function fillChecker(img) {
    const data = img.data;
    for (let y = 0; y < img.height; y++) {
      for (let x = 0; x < img.width; x++) {
        const v = UNRENDERED[(Math.floor(x / CHECKER) + Math.floor(y / CHECKER)) % 2];
        const at = 4 * (y * img.width + x);
        data[at] = data[at + 1] = data[at + 2] = v;
        data[at + 3] = 255;
      }
    }
  }

  function columnsOf(view) {
    return Math.ceil(view.width / view.block);
  }

  // The frame's pixel row that row `row` of a sheared frame's image holds in column of blocks `column`, as
  // farm/shear.py lays it out: only whole block rows move, each column rotated up by column * shear of them.
  function sourceRow(view, column, row) {
    const rows = Math.floor(view.height / view.block), band = Math.floor(row / view.block);
    if (!view.shear || band >= rows) return row;
    return ((band + column * view.shear) % rows) * view.block + (row % view.block);
  }

  // The frame's rectangles [x, y, w, h] that rows [start, end) cover: one band, or a sheared image's blocks,
  // a run of rows per column of blocks.
  function rowRectangles(view, start, end) {
    if (!view.shear) return [[0, start, view.width, end - start]];
    const rects = [];
    for (let column = 0; column < columnsOf(view); column++) {
      const left = column * view.block, width = Math.min(view.width, left + view.block) - left;
      const tops = [];
      for (let row = start; row < end; row++) tops.push(sourceRow(view, column, row));
      tops.sort((a, b) => a - b);
      let first = tops[0];
      for (let i = 1; i <= tops.length; i++) {
        if (i === tops.length || tops[i] !== tops[i - 1] + 1) {
          rects.push([left, first, width, tops[i - 1] + 1 - first]);
          first = tops[i];
        }
      }
    }
    return rects;
  }

  function pieceRowBytes(view, piece) {
    const width = piece.kind === "preview" ? piece.width : view.width;
    return width * view.channels * (view.bits / 8);
  }

  // PNG scanlines (each row led by its filter type: None, Sub, Up, Average, Paeth; the first row filtered
  // against zeros) back into raw rows, as the farm's "filtered" encoding sends them.
  function unfilter(scan, rowBytes, view) {
    const bpp = view.channels * (view.bits / 8);
    const count = scan.length / (rowBytes + 1);
    if (!Number.isInteger(count)) throw new Error(`${scan.length} bytes are not whole filtered rows`);
    const out = new Uint8Array(count * rowBytes);
    for (let y = 0; y < count; y++) {
      const kind = scan[y * (rowBytes + 1)];
      const src = y * (rowBytes + 1) + 1;
      const at = y * rowBytes;
      const up = at - rowBytes;          // the row above in out; none (zeros) for the first row
      if (kind > 4) throw new Error(`row ${y} has an invalid filter type ${kind}`);
      for (let i = 0; i < rowBytes; i++) {
        const a = i >= bpp ? out[at + i - bpp] : 0;
        const b = y > 0 ? out[up + i] : 0;
        const c = y > 0 && i >= bpp ? out[up + i - bpp] : 0;
        let pred = 0;
        if (kind === 1) pred = a;
        else if (kind === 2) pred = b;
        else if (kind === 3) pred = (a + b) >> 1;
        else if (kind === 4) {
          const pa = Math.abs(b - c), pb = Math.abs(a - c), pc = Math.abs(a + b - 2 * c);
          pred = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
        }
        out[at + i] = (scan[src + i] + pred) & 255;
      }
    }
    return out;
  }

  // Raw rows (RGB or RGBA, 8 or 16 bits big-endian) into RGBA bytes: 16-bit samples by their high byte.
  function toRgba(rows, pixels, channels, bits, out, at) {
    const step = (channels * bits) / 8, wide = bits === 16 ? 2 : 1;
    for (let i = 0, p = 0; p < pixels; i += step, p++, at += 4) {
      out[at] = rows[i];
      out[at + 1] = rows[i + wide];
      out[at + 2] = rows[i + 2 * wide];
      out[at + 3] = channels === 4 ? rows[i + 3 * wide] : 255;
    }
  }

  function paintPiece(view, piece, rows) {
    if (piece.kind === "preview") return paintPreview(view, piece, rows);
    const start = piece.row_start, end = piece.row_end;
    const rowBytes = (view.width * view.channels * view.bits) / 8;
    if (!(start >= 0 && start < end && end <= view.height) || rows.length !== (end - start) * rowBytes) {
      console.warn(`job ${view.job} frame ${piece.frame}: rows ${start}-${end} do not fit the image`);
      return false;
    }
    const frame = frameCanvas(view, piece.frame);
    if (view.shear) {
      const columns = columnsOf(view), bytes = (view.channels * view.bits) / 8;
      for (let row = start; row < end; row++) {
        for (let column = 0; column < columns; column++) {
          const left = column * view.block, width = Math.min(view.width, left + view.block) - left;
          const y = sourceRow(view, column, row);
          toRgba(rows.subarray((row - start) * rowBytes + left * bytes), width, view.channels, view.bits,
                 frame.img.data, (y * view.width + left) * 4);
          frame.final[y * columns + column] = 1;
        }
      }
    } else {
      toRgba(rows, (end - start) * view.width, view.channels, view.bits, frame.img.data, start * view.width * 4);
    }
    frame.spans = mergeSpan(frame.spans, [start, end]);
    frame.finals.push(...rowRectangles(view, start, end));
    return true;
  }

  // A finished block of a strip still rendering (8-bit RGB), like POV-Ray's own window: shown over the
  // preview and the checkerboard in the rows no final rows are painted in yet; final rows replace it.
  function paintBlock(view, block, rgb) {
    const { left, top, right, bottom } = block, width = right - left + 1;
    if (!(left >= 0 && left <= right && right < view.width && top >= 0 && top <= bottom && bottom < view.height)
        || rgb.length !== width * (bottom - top + 1) * 3) {
      console.warn(`job ${view.job} frame ${block.frame}: a live block that does not fit`);
      return false;
    }
    const frame = frameCanvas(view, block.frame), data = frame.img.data;
    let shown = false;
    const column = Math.floor(left / view.block), columns = frame.final ? columnsOf(view) : 0;
    for (let y = top; y <= bottom; y++) {
      if (frame.final ? frame.final[y * columns + column]
                      : frame.spans.some(([start, end]) => y >= start && y < end)) continue;
      toRgba(rgb.subarray((y - top) * width * 3), width, 3, 8, data, (y * view.width + left) * 4);
      shown = true;
    }
    if (shown) frame.blocks.push([left, top, width, bottom - top + 1]);
    return shown;
  }

  // A low-resolution preview of the whole frame: shown scaled up wherever no final rows are painted yet.
  function paintPreview(view, piece, rows) {
    const width = piece.width, height = piece.height;
    const start = piece.row_start || 0, end = piece.row_end || height;
    const rowBytes = (width * view.channels * view.bits) / 8;
    if (!(width > 0 && height > 0 && start < end && end <= height) || rows.length !== (end - start) * rowBytes) {
      console.warn(`job ${view.job} frame ${piece.frame}: a preview that does not fit`);
      return false;
    }
    const frame = frameCanvas(view, piece.frame);
    if (!frame.preview || frame.preview.width !== width || frame.preview.height !== height) {
      frame.preview = document.createElement("canvas");
      frame.preview.width = width;
      frame.preview.height = height;
    }
    const img = new ImageData(width, end - start);
    toRgba(rows, (end - start) * width, view.channels, view.bits, img.data, 0);
    frame.preview.getContext("2d").putImageData(img, 0, start);
    return true;
  }

  function mergeSpan(spans, span) {
    const merged = [];
    for (const s of [...spans, span].sort((a, b) => a[0] - b[0])) {
      if (merged.length && s[0] <= merged[merged.length - 1][1]) {
        merged[merged.length - 1][1] = Math.max(merged[merged.length - 1][1], s[1]);
      } else {
        merged.push([s[0], s[1]]);
      }
    }
    return merged;
  }

  function paintedRows(frame) {
    return frame ? frame.spans.reduce((n, [s, e]) => n + e - s, 0) : 0;
  }

  function hasPixels(frame) {
    return Boolean(frame && (frame.spans.length || frame.blocks.length || frame.preview));
  }

  function stepFrames(view) {
    return [...view.frames.keys()].filter((n) => hasPixels(view.frames.get(n))).sort((a, b) => a - b);
  }

  function stopPlaying(view) {
    if (view.playing) clearInterval(view.playing);
    view.playing = null;
  }

  window.povcanvas = {
    frameCanvas, pieceRowBytes, unfilter, paintPiece, paintBlock, paintedRows, hasPixels, stepFrames, stopPlaying,
    rowRectangles,
  };
})();
