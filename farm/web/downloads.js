// The job on screen saved from the page: the frame shown as its PNG (named as POV-Ray names the frame's
// file), or an animation's frames as one animated PNG.
"use strict";

(() => {
  const { makeApng } = window.povzip;

  function saveBytes(bytes, name) {
    const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  function stem(info) {
    return info.scene.replace(/^.*\//, "").replace(/\.[^.]*$/, "");
  }

  function frameName(info, number) {
    return info.frame_digits ? `${stem(info)}${String(number).padStart(info.frame_digits, "0")}.png` : `${stem(info)}.png`;
  }

  // The frame shown (a still's image: frame 0), fetched with `client`.
  async function png(client, view) {
    const number = view.info.frames_total > 1 ? view.frame : 0;
    saveBytes(await client.call("jobs.fetch", view.job, number), frameName(view.info, number));
  }

  // Every frame of the animation, as one animated PNG of 10 frames a second.
  async function apng(client, view) {
    const pngs = [];
    for (let n = view.info.first_frame; n <= view.info.last_frame; n++) {
      pngs.push(await client.call("jobs.fetch", view.job, n));
    }
    saveBytes(makeApng(pngs, 100), `${stem(view.info)}-animation.png`);
  }

  window.povdownloads = { png, apng };
})();
