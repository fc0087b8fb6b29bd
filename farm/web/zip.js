// Binary formats the page writes itself: scene bundles (zip) for bundles.upload, and animated PNGs made of
// the frames jobs.fetch returns. The controller checks every bundle as it checks the command line's.
"use strict";

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes, crc = 0) {
  crc = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return ~crc >>> 0;
}

function concat(parts) {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

const ZIP_DOS_DATE = (0 << 9) | (1 << 5) | 1;   // 1980-01-01, as the command line's bundles
const ZIP_MODE = (0o100644 << 16) >>> 0;          // a regular file, rw-r--r--
const UTF8_NAMES = 0x0800;

// entries: [{name: Uint8Array (UTF-8), method: 0|8, crc, size, data: Uint8Array (stored or deflated)}]
function writeZip(entries) {
  const locals = [], centrals = [];
  let offset = 0;
  for (const e of entries) {
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);
    local.setUint16(6, UTF8_NAMES, true);
    local.setUint16(8, e.method, true);
    local.setUint16(10, 0, true);
    local.setUint16(12, ZIP_DOS_DATE, true);
    local.setUint32(14, e.crc, true);
    local.setUint32(18, e.data.length, true);
    local.setUint32(22, e.size, true);
    local.setUint16(26, e.name.length, true);
    local.setUint16(28, 0, true);
    const central = new DataView(new ArrayBuffer(46));
    central.setUint32(0, 0x02014b50, true);
    central.setUint16(4, (3 << 8) | 20, true);      // made on Unix, so the mode below counts
    central.setUint16(6, 20, true);
    central.setUint16(8, UTF8_NAMES, true);
    central.setUint16(10, e.method, true);
    central.setUint16(12, 0, true);
    central.setUint16(14, ZIP_DOS_DATE, true);
    central.setUint32(16, e.crc, true);
    central.setUint32(20, e.data.length, true);
    central.setUint32(24, e.size, true);
    central.setUint16(28, e.name.length, true);
    central.setUint32(38, ZIP_MODE, true);
    central.setUint32(42, offset, true);
    locals.push(new Uint8Array(local.buffer), e.name, e.data);
    centrals.push(new Uint8Array(central.buffer), e.name);
    offset += 30 + e.name.length + e.data.length;
  }
  const directory = concat(centrals);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, entries.length, true);
  end.setUint16(10, entries.length, true);
  end.setUint32(12, directory.length, true);
  end.setUint32(16, offset, true);
  return concat([...locals, directory, new Uint8Array(end.buffer)]);
}

// A bundle of loose files ({name, bytes}), stored uncompressed, in name order.
function zipFiles(files) {
  const encoder = new TextEncoder();
  const sorted = [...files].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return writeZip(sorted.map((f) => ({
    name: encoder.encode(f.name), method: 0, crc: crc32(f.bytes), size: f.bytes.length, data: f.bytes,
  })));
}

// A zip someone made of a scene folder, rewritten as a bundle: its files as they are (same compressed
// data), without the folder entries and the desktop clutter zip tools add. Returns {zip, names}.
function repackZip(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let end = -1;
  for (let i = bytes.length - 22; i >= Math.max(0, bytes.length - 22 - 65535); i--) {
    if (view.getUint32(i, true) === 0x06054b50) { end = i; break; }
  }
  if (end < 0) throw new Error("the file is not a zip archive");
  const count = view.getUint16(end + 10, true);
  let at = view.getUint32(end + 16, true);
  const decoder = new TextDecoder();
  const entries = [];
  for (let n = 0; n < count; n++) {
    if (at + 46 > bytes.length || view.getUint32(at, true) !== 0x02014b50) throw new Error("the zip archive is damaged");
    const method = view.getUint16(at + 10, true);
    const crc = view.getUint32(at + 16, true);
    const packed = view.getUint32(at + 20, true);
    const size = view.getUint32(at + 24, true);
    const nameLength = view.getUint16(at + 28, true);
    const extraLength = view.getUint16(at + 30, true);
    const commentLength = view.getUint16(at + 32, true);
    const localAt = view.getUint32(at + 42, true);
    const name = bytes.subarray(at + 46, at + 46 + nameLength);
    at += 46 + nameLength + extraLength + commentLength;
    const text = decoder.decode(name);
    if (text.endsWith("/") || text.startsWith("__MACOSX/") || /(^|\/)(\.DS_Store|Thumbs\.db)$/.test(text)) continue;
    const dataAt = localAt + 30 + view.getUint16(localAt + 26, true) + view.getUint16(localAt + 28, true);
    entries.push({ name, text, method, crc, size, data: bytes.subarray(dataAt, dataAt + packed) });
  }
  entries.sort((a, b) => (a.text < b.text ? -1 : a.text > b.text ? 1 : 0));
  return { zip: writeZip(entries), names: entries.map((e) => e.text) };
}

// ---- PNG / APNG --------------------------------------------------------------------------------------

const PNG_SIGNATURE = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);

function pngChunks(png) {
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  const chunks = [];
  for (let at = 8; at + 12 <= png.length;) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...png.subarray(at + 4, at + 8));
    chunks.push({ type, data: png.subarray(at + 8, at + 8 + length) });
    at += 12 + length;
  }
  return chunks;
}

function pngChunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

function u32s(...values) {
  const out = new Uint8Array(4 * values.length);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => view.setUint32(4 * i, v));
  return out;
}

// Equally sized PNG frames as one animated PNG that plays forever, each frame shown delayMs.
function makeApng(pngs, delayMs = 100) {
  const frames = pngs.map(pngChunks);
  const header = frames[0].find((c) => c.type === "IHDR").data;
  const width = new DataView(header.buffer, header.byteOffset).getUint32(0);
  const height = new DataView(header.buffer, header.byteOffset).getUint32(4);
  const parts = [PNG_SIGNATURE, pngChunk("IHDR", header), pngChunk("acTL", u32s(frames.length, 0))];
  let sequence = 0;
  frames.forEach((chunks, index) => {
    const control = new Uint8Array(26);
    const view = new DataView(control.buffer);
    view.setUint32(0, sequence++);
    view.setUint32(4, width);
    view.setUint32(8, height);
    view.setUint16(20, Math.max(1, Math.min(delayMs, 65535)));
    view.setUint16(22, 1000);
    parts.push(pngChunk("fcTL", control));
    for (const chunk of chunks.filter((c) => c.type === "IDAT")) {
      parts.push(index === 0 ? pngChunk("IDAT", chunk.data) : pngChunk("fdAT", concat([u32s(sequence++), chunk.data])));
    }
  });
  parts.push(pngChunk("IEND", new Uint8Array(0)));
  return concat(parts);
}

window.povzip = { crc32, zipFiles, repackZip, makeApng };
