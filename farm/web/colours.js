// A node's colour from its name, as farm/viewing/colours.py derives it for the pygame viewer (same
// palette, same hash: tests/test_web.py checks they agree).
"use strict";

(() => {
  const NODE_COLOURS = ["#ffb800", "#00c8ff", "#ff54a8", "#78e850", "#ba8cff", "#ff7a40", "#40e0c8", "#f0f060"];

  // 32-bit FNV-1a of the name's UTF-8 bytes, its high half folded into the low one.
  function nameHash(name) {
    let value = 0x811c9dc5;
    for (const byte of new TextEncoder().encode(name)) value = Math.imul(value ^ byte, 0x01000193) >>> 0;
    return (value ^ (value >>> 16)) >>> 0;
  }

  function colour(node) {
    return NODE_COLOURS[nameHash(String(node)) % NODE_COLOURS.length];
  }

  window.povcolours = { colour };
})();
