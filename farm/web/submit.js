// Submitting a scene from the page (a submit token): the chosen files zipped in the page (or a chosen .zip
// repacked), the scene picked among its .pov files, uploaded with bundles.upload, submitted with jobs.submit.
"use strict";

(() => {
  const { RpcError, FAULT } = window.povrpc;
  const { zipFiles, repackZip } = window.povzip;
  const $ = (id) => document.getElementById(id);

  let bundle = null;     // {zip: Uint8Array, names: [str]} of the chosen files
  let page = null;       // {client(), queued(id), failed(err)}: see wire

  async function filesChosen() {
    const files = [...$("submit-files").files];
    const select = $("submit-scene");
    select.replaceChildren();
    bundle = null;
    $("submit-result").textContent = "";
    if (!files.length) return;
    try {
      if (files.length === 1 && /\.zip$/i.test(files[0].name)) {
        bundle = repackZip(new Uint8Array(await files[0].arrayBuffer()));
      } else {
        const loose = await Promise.all(files.map(async (f) => ({ name: f.name, bytes: new Uint8Array(await f.arrayBuffer()) })));
        bundle = { zip: zipFiles(loose), names: loose.map((f) => f.name).sort() };
      }
    } catch (err) {
      submitMessage(String(err.message || err), true);
      return;
    }
    const scenes = bundle.names.filter((n) => /\.pov$/i.test(n));
    for (const name of scenes) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      select.append(option);
    }
    if (!scenes.length) submitMessage("no .pov scene among the chosen files", true);
  }

  function submitMessage(text, bad = false) {
    const result = $("submit-result");
    result.textContent = text;
    result.className = "message" + (bad ? " bad" : "");
  }

  function submitSpec(digest) {
    const scene = $("submit-scene").value;
    const strips = $("submit-strips").value.trim() || "auto";
    const spec = {
      bundle: digest, scene,
      width: parseInt($("submit-width").value, 10), height: parseInt($("submit-height").value, 10),
      options: $("submit-options").value.split(/\s+/).filter(Boolean),
      priority: parseInt($("submit-priority").value || "0", 10),
      strips: strips === "auto" ? "auto" : parseInt(strips, 10),
      name: $("submit-name").value.trim() || scene.replace(/^.*\//, "").replace(/\.[^.]*$/, ""),
    };
    const frames = $("submit-frames").value.trim();
    if (frames) {
      const match = /^(\d+)\s*-\s*(\d+)$/.exec(frames);
      if (!match) throw new RpcError(FAULT.BAD_ARGUMENT, "frames must look like FIRST-LAST, e.g. 1-30");
      spec.animation = { first: parseInt(match[1], 10), last: parseInt(match[2], 10) };
    }
    return spec;
  }

  async function submitScene(event) {
    event.preventDefault();
    if (!bundle || !$("submit-scene").value) {
      submitMessage("choose a .pov scene (and its files) or a .zip of the scene's folder first", true);
      return;
    }
    $("submit-button").disabled = true;
    submitMessage("uploading…");
    try {
      const digest = await page.client().call("bundles.upload", bundle.zip);
      const id = await page.client().call("jobs.submit", submitSpec(digest));
      submitMessage(`job ${id} queued`);
      page.queued(id);
    } catch (err) {
      if (err.code === FAULT.UNREACHABLE || err.code === FAULT.UNAUTHORIZED) page.failed(err);
      submitMessage(err.message, true);
    } finally {
      $("submit-button").disabled = false;
    }
  }

  // The form's events, for the page: `client()` its signed-in client, `queued(id)` shows a job just
  // submitted, `failed(err)` says the controller is out of reach or refused the token.
  function wire(client, queued, failed) {
    page = { client, queued, failed };
    $("submit-files").addEventListener("change", filesChosen);
    $("submit-form").addEventListener("submit", submitScene);
  }

  window.povsubmit = { wire };
})();
