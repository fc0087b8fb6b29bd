// The page's figures in words: durations, sizes, link rates and clock times.
"use strict";

(() => {
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    const s = Math.round(seconds);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}` : `${m}:${String(r).padStart(2, "0")}`;
  }

  function byteSize(bytes) {
    for (const [unit, scale] of [["TB", 1e12], ["GB", 1e9], ["MB", 1e6], ["kB", 1e3]]) {
      if (bytes >= scale) return `${Number((bytes / scale).toPrecision(3))} ${unit}`;
    }
    return `${Math.round(bytes || 0)} B`;
  }

  // A node's measured upload rate in bits per second, as links are sold ("-" until it reports one).
  function uploadRate(bytesPerSecond) {
    const bits = (bytesPerSecond || 0) * 8;
    if (!(bits > 0)) return "-";
    for (const [unit, scale] of [["Gbit/s", 1e9], ["Mbit/s", 1e6], ["kbit/s", 1e3]]) {
      if (bits >= scale) return `${Number((bits / scale).toPrecision(3))} ${unit}`;
    }
    return `${Math.round(bits)} bit/s`;
  }

  function clockTime(unix) {
    if (!unix) return "";
    const when = new Date(unix * 1000);
    const sameDay = when.toDateString() === new Date().toDateString();
    const time = when.toLocaleTimeString([], { hour12: false });
    return sameDay ? time : `${when.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
  }

  window.povwords = { duration, byteSize, uploadRate, clockTime };
})();
