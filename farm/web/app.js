// The farm's page: jobs, nodes and the selected job's image as it renders, over the farm's XML-RPC API.
//
// - Signing in keeps the token in sessionStorage (this tab only) and finds its role: a submit token may
//   call bundles.has, a view token may not.
// - The image comes from the feed stream (GET /feed) the pygame viewer reads too: one response stays
//   open and brings each strip as it is stored. A controller without it is asked by viewer.watch long
//   polls instead (one call waits until strips are stored or the job changes).
// - The jobs and nodes tables are refreshed every few seconds (less often in a hidden tab).
// - A call that cannot reach the controller shows "reconnecting" and is retried with growing delays.
"use strict";

(() => {
  const { RpcClient, RpcError, FAULT } = window.povrpc;
  const { colour } = window.povcolours;
  const { EtaShown } = window.poveta;
  const { duration, byteSize, uploadRate, clockTime } = window.povwords;
  const { frameCanvas, paintedRows, hasPixels, stepFrames, stopPlaying, rowRectangles } = window.povcanvas;
  const { Feed, FINISHED, BACKOFF_MS, sleep } = window.povfeed;

  const TOKEN_KEY = "povfarm.token";
  const REFRESH_MS = 2000;                 // jobs and nodes tables
  const HIDDEN_REFRESH_MS = 15000;         // ... while the tab is hidden

  const $ = (id) => document.getElementById(id);

  const app = {
    client: null, role: "", generation: 0,
    jobs: [], nodes: [],
    follow: true, pinned: 0,          // follow the newest job, or show the pinned one
    view: null,                       // the job on screen: its feed, frames and canvases
    linkOk: true, newsAt: 0,          // whether the controller answers; when it last did (ms)
    etas: new Map(),                  // job id -> its EtaShown
    idle: null,                       // aborts the stream that waits for a first job (awaitFirstJob)
    wake: null,                       // resolves the tables' wait early (an action, the tab shown again)
  };
  // The job on screen and its pixels (feed.js), painted by this page's functions.
  const feed = new Feed(app, {
    say, setLink, callFailed, measureEta, chooseFrame, drawFrame, renderView, renderJobs, sizeCanvas,
    shown: () => {
      $("overlay").replaceChildren();
      $("job-error").hidden = true;
      say("");
    },
  });

  // ---- sign in -------------------------------------------------------------------------------------

  async function signIn(token, remember) {
    const client = new RpcClient(token);
    await client.call("api.version");                          // 401 for a wrong token
    let role = "view";
    try {
      await client.call("bundles.has", "sha256:" + "0".repeat(64));
      role = "submit";
    } catch (err) {
      if (err.code !== FAULT.FORBIDDEN) throw err;
    }
    try {
      await client.call("jobs.list");
    } catch (err) {
      if (err.code === FAULT.FORBIDDEN) throw new RpcError(err.code, "this token cannot watch the farm (a node token?)");
      throw err;
    }
    if (remember) sessionStorage.setItem(TOKEN_KEY, token);
    app.client = client;
    app.role = role;
    app.generation += 1;
    $("sign-in").hidden = true;
    $("farm").hidden = false;
    $("sign-out").hidden = false;
    $("role").textContent = role === "submit" ? "submit token" : "view token: read only";
    $("actions").hidden = role !== "submit";
    $("submit").hidden = role !== "submit";
    setLink(true);
    tablesLoop(app.generation);
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    app.generation += 1;
    app.client = null;
    feed.stopView();
    $("farm").hidden = true;
    $("sign-in").hidden = false;
    $("sign-out").hidden = true;
    $("link").hidden = true;
    $("role").textContent = "";
    $("sign-in-error").textContent = message || "";
  }

  // While the controller cannot be reached, the figures on the page are as of its last answer: they are
  // marked stale (dimmed, and said so with the time) and the ETAs stop counting down.
  function setLink(ok) {
    const changed = ok !== app.linkOk;
    app.linkOk = ok;
    if (ok) app.newsAt = Date.now();
    const link = $("link");
    link.hidden = false;
    link.textContent = ok ? "connected" : "reconnecting…";
    link.className = "link " + (ok ? "ok" : "down");
    if (!changed) return;
    const now = Date.now() / 1000;
    for (const eta of app.etas.values()) {
      if (ok) eta.resume(now);
      else eta.hold(now);
    }
    $("farm").classList.toggle("stale", !ok);
    $("farm").title = ok ? "" : `the controller cannot be reached: figures as of ${clockTime(app.newsAt / 1000)}`;
    renderJobs();
    if (app.view && app.view.info) renderView(app.view);
  }

  // A failed call: unreachable means reconnecting; a refused token signs out; anything else is shown.
  function callFailed(err) {
    if (err.code === FAULT.UNREACHABLE) setLink(false);
    else if (err.code === FAULT.UNAUTHORIZED) signOut("The controller no longer accepts this token.");
    else say(err.message, true);
  }

  function say(text, bad = false) {
    const message = $("message");
    message.textContent = text;
    message.className = "message" + (bad ? " bad" : "");
  }

  // ---- jobs and nodes tables ----------------------------------------------------------------------

  async function tablesLoop(generation) {
    let delay = BACKOFF_MS[0];
    while (generation === app.generation) {
      try {
        const [jobs, nodes] = await Promise.all([app.client.call("jobs.list"), app.client.call("nodes.list")]);
        if (generation !== app.generation) return;
        setLink(true);
        delay = BACKOFF_MS[0];
        app.jobs = jobs;
        app.nodes = nodes;
        for (const job of jobs) measureEta(job);
        chooseJob();
        renderJobs();
        renderNodes();
        await showDisk(generation);
        await pause(document.hidden ? HIDDEN_REFRESH_MS : REFRESH_MS);
      } catch (err) {
        if (generation !== app.generation) return;
        callFailed(err);
        await pause(delay);
        delay = Math.min(delay * 2, BACKOFF_MS[1]);
      }
    }
  }

  function pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() { clearTimeout(timer); app.wake = null; resolve(); }
      app.wake = done;
    });
  }

  function refreshSoon() {
    if (app.wake) app.wake();
  }

  function chooseJob() {
    const newest = app.jobs.reduce((best, job) => Math.max(best, job.id), 0);
    const wanted = app.follow ? newest : app.pinned;
    if (wanted && (!app.view || app.view.job !== wanted)) feed.showJob(wanted);
    else if (!wanted && app.follow) feed.awaitFirstJob();
    $("follow").classList.toggle("on", app.follow);
  }

  function jobRow(job) {
    const live = app.view && app.view.job === job.id && app.view.info ? app.view.info : job;
    return Object.assign({}, job, live);
  }

  function renderJobs() {
    const body = $("jobs-body");
    const rows = [];
    const now = Date.now() / 1000;
    for (const raw of [...app.jobs].sort((a, b) => b.id - a.id)) {
      const job = jobRow(raw);
      const tr = document.createElement("tr");
      tr.className = "job" + (app.view && app.view.job === job.id ? " selected" : "");
      tr.dataset.job = job.id;
      const [elapsed, eta] = timing(job, now);
      const progress = document.createElement("td");
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("i");
      fill.style.width = `${Math.round(job.progress * 100)}%`;
      bar.append(fill);
      progress.append(bar, `${Math.round(job.progress * 100)}%`);
      const state = document.createElement("span");
      state.className = "state " + job.state;
      state.textContent = job.state;
      const stateCell = document.createElement("td");
      stateCell.append(state);
      tr.append(cell(job.id, "num"), cell(job.name), stateCell, progress,
        cell(FINISHED.has(job.state) ? `${job.strips_done}/${job.strips_total}` : `${job.strips_done} of ${job.strips_total} so far`, "num"),
        cell(`${job.frames_done}/${job.frames_total}`, "num"),
        cell(job.priority, "num"), cell(clockTime(job.submitted)), cell(duration(elapsed), "num"),
        cell(FINISHED.has(job.state) ? "" : etaText(job, eta), "num"));
      tr.addEventListener("click", () => pinJob(job.id));
      rows.push(tr);
      if (job.state === "failed" && job.error) {
        const error = document.createElement("tr");
        error.className = "job-error";
        const td = cell(job.error.length > 400 ? job.error.slice(0, 400) + "…" : job.error);
        td.colSpan = 10;
        td.title = job.error;
        error.append(td);
        rows.push(error);
      }
    }
    body.replaceChildren(...rows);
  }

  function renderNodes() {
    const now = Date.now() / 1000;
    const rows = [...app.nodes].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map((node) => {
      const tr = document.createElement("tr");
      const version = (node.povray || "").split("\n")[0];
      const povray = node.povray_flavour === "pvengine" ? `${version} (pvengine)` : version;
      tr.append(cell(node.name), cell(node.state), cell(currentWork(node)), cell(node.strips_done, "num"),
        cell(node.strips_failed, "num"), cell(`${duration(Math.max(0, now - node.last_seen))} ago`, "num"),
        cell(uploadRate(node.upload_bps), "num"), cell(povray.length > 40 ? povray.slice(0, 40) + "…" : povray), cell(node.sandbox), cell(node.slots, "num"),
        cell(((node.tags || []).join(",") || "-") + (node.tags_overridden ? "*" : "")));
      tr.title = node.error || node.sandbox_warning || "";
      return tr;
    });
    $("nodes-body").replaceChildren(...rows);
  }

  // What a node renders now, in words: its units' ids ("2/1/0,2/1/3": job/frame/index) by job and frame,
  // with the rows (or the preview, the radiosity pretrace) of those in the job on screen.
  function currentWork(node) {
    if (!node.current) return "";
    const groups = new Map();
    for (const id of node.current.split(",")) {
      const [job, frame, index] = id.split("/").map(Number);
      const key = `${job}/${frame}`;
      if (!groups.has(key)) groups.set(key, { job, frame, indexes: [] });
      groups.get(key).indexes.push(index);
    }
    return [...groups.values()].map(({ job, frame, indexes }) => {
      const info = (app.view && app.view.job === job && app.view.info) || app.jobs.find((j) => j.id === job) || {};
      const words = [`job ${job}` + (info.name ? ` ${info.name}` : "")];
      if (info.frames_total > 1 || info.frames_total === undefined) words.push(`frame ${frame}`);
      const shown = app.view && app.view.job === job
        ? app.view.inFlight.filter((s) => s.node === node.name && s.frame === frame) : [];
      words.push(shown.length ? shown.map((s) => (s.kind === "preview" ? "preview" : s.kind === "pretrace"
        ? "radiosity pretrace" : `rows ${s.row_start}–${s.row_end - 1}`)).join(", ")
        : `strip${indexes.length > 1 ? "s" : ""} ${indexes.join(", ")}`);
      return words.join(", ");
    }).join("; ");
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = String(text);
    if (className) td.className = className;
    return td;
  }

  // (seconds since the job started, seconds left as shown), null when unknown.
  function timing(job, now) {
    if (!job.started) return [null, null];
    const elapsed = Math.max(0, (job.finished || now) - job.started);
    const eta = app.etas.get(job.id);
    if (FINISHED.has(job.state) || !eta) return [elapsed, null];
    return [elapsed, eta.left(now)];
  }

  // A job's status came: its estimate of the seconds left (the controller's, else from the fraction done).
  function measureEta(job) {
    if (FINISHED.has(job.state) || !job.started) return;
    const now = Date.now() / 1000;
    let estimate = job.eta;
    const guess = estimate === undefined || estimate === null;
    if (guess) {
      const elapsed = Math.max(0, now - job.started);
      estimate = job.progress > 0 ? (elapsed * (1 - job.progress)) / job.progress : null;
    }
    if (!app.etas.has(job.id)) app.etas.set(job.id, new EtaShown());
    app.etas.get(job.id).measure(estimate, now, guess);
  }

  function etaText(job, eta) {
    const shown = app.etas.get(job.id);
    return duration(eta) + (shown && shown.held ? " (stale)" : "");
  }

  // The controller's disk use (farm.status; a controller without it shows nothing), under the nodes.
  async function showDisk(generation) {
    let status;
    try {
      status = await app.client.call("farm.status");
    } catch (err) {
      return;
    }
    if (generation !== app.generation) return;
    const disk = status.disk;
    const parts = [["images", "images"], ["bundles", "bundles"], ["database", "database"]]
      .map(([key, label]) => `${byteSize(disk[key])} ${label}`);
    $("farm-disk").textContent = `Controller disk: ${byteSize(disk.total)} (${parts.join(", ")}); ` +
      `${byteSize(disk.free)} free` + (status.purge_after ? `; ended jobs purged after ${status.purge_after}` : "");
  }

  function pinJob(id) {
    app.follow = false;
    app.pinned = id;
    chooseJob();
    renderJobs();
  }

  // ---- the live image (its feed: feed.js; its frames' pixels: canvas.js) ----------------------------

  // The newest frame with pixels (final rows, live blocks or a preview: never an empty one while one has
  // pixels); unless the user stepped to one or plays them.
  function chooseFrame(view) {
    if (view.framePinned && view.frames.has(view.frame)) return;
    view.framePinned = false;
    stopPlaying(view);
    const shown = stepFrames(view);
    view.frame = shown.length ? shown[shown.length - 1] : (view.frame || view.info.first_frame || 1);
  }

  function sizeCanvas(view) {
    const canvas = $("image");
    canvas.width = view.width;
    canvas.height = view.height;
    view.drawn = null;
    fitCanvas();
  }

  function fitCanvas() {
    const canvas = $("image");
    const room = $("viewer").clientWidth - 24;
    const fits = Math.min(room / canvas.width, (0.7 * window.innerHeight) / canvas.height);
    // Shrunk, pixels are averaged (dropping some would alias); enlarged, only by a whole factor, each pixel
    // a crisp square of the same size.
    const scale = fits < 1 ? fits : Math.floor(fits);
    canvas.style.width = `${Math.max(1, Math.floor(canvas.width * scale))}px`;
    canvas.style.height = `${Math.max(1, Math.floor(canvas.height * scale))}px`;
    canvas.style.imageRendering = scale < 1 ? "auto" : "pixelated";
  }

  function drawFrame(view) {
    const canvas = $("image");
    const ctx = canvas.getContext("2d");
    const frame = frameCanvas(view, view.frame);
    if (frame.preview) {
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(frame.preview, 0, 0, view.width, view.height);
      for (const [x, y, w, h] of frame.blocks) ctx.putImageData(frame.img, 0, 0, x, y, w, h);
      for (const [x, y, w, h] of frame.finals) ctx.putImageData(frame.img, 0, 0, x, y, w, h);
    } else {
      ctx.putImageData(frame.img, 0, 0);
    }
    view.drawn = view.frame;
    canvas.dataset.job = view.job;
    canvas.dataset.frame = view.frame;
    canvas.dataset.rows = paintedRows(frame);
  }

  function renderView(view) {
    const info = view.info;
    $("job-title").textContent = `job ${info.id} · ${info.name} (${info.scene}) · ${info.width}×${info.height}`;
    const state = $("job-state");
    state.textContent = info.state;
    state.className = "state " + info.state;
    const [elapsed, eta] = timing(info, Date.now() / 1000);
    const strips = FINISHED.has(info.state) ? `${info.strips_done}/${info.strips_total} strips`
      : `${info.strips_done} of ${info.strips_total} strips so far`;
    const parts = [strips, `${Math.round(info.progress * 100)}%`, `elapsed ${duration(elapsed)}`];
    if (!FINISHED.has(info.state)) parts.push(`ETA ${etaText(info, eta)}`);
    const live = app.nodes.filter((n) => n.state === "idle" || n.state === "busy").length;
    parts.push(`${live} node${live === 1 ? "" : "s"} live`);
    if (!app.linkOk) parts.push(`stale: as of ${clockTime(app.newsAt / 1000)}`);
    $("job-status").textContent = parts.join(" · ");
    const error = $("job-error");
    error.hidden = !info.error;
    error.textContent = info.error || "";
    renderOverlay(view);
    renderFrameControls(view);
    const done = info.state === "done";
    $("download-png").disabled = !done;
    const animated = info.frames_total > 1;
    $("download-apng").hidden = !animated;
    $("download-apng").disabled = !done;
    $("action-pause").disabled = FINISHED.has(info.state) || info.state === "paused";
    $("action-resume").disabled = info.state !== "paused";
    $("action-cancel").disabled = FINISHED.has(info.state);
    $("action-priority").disabled = FINISHED.has(info.state);
    const priority = $("priority");
    if (document.activeElement !== priority) priority.value = info.priority;
  }

  function renderOverlay(view) {
    const boxes = [];
    if (!FINISHED.has(view.info.state)) {
      for (const strip of view.inFlight) {
        if (strip.frame !== view.frame) continue;
        const box = document.createElement("div");
        const whole = strip.kind === "preview";     // its rows are the preview's own: it covers the frame
        box.className = whole ? "in-flight preview" : "in-flight";
        const c = colour(strip.node);
        box.style.borderColor = c;
        box.style.top = whole ? "0" : `${(100 * strip.row_start) / view.height}%`;
        box.style.height = whole ? "100%" : `${(100 * (strip.row_end - strip.row_start)) / view.height}%`;
        box.dataset.node = strip.node;
        // A sheared frame's strip (farm/shear.py) is blocks all over the frame, and a band of a folded
        // radiosity pre-pass rows at the top and at the bottom (its pieces, in the frame's rows): a thin box
        // around each run. A pre-pass band's rows are the frame's own, sheared or not.
        const rects = strip.pieces && strip.pieces.length > 1
          ? strip.pieces.map(([start, end]) => [0, start, view.width, end - start])
          : view.shear && !whole && strip.kind !== "pretrace" ? rowRectangles(view, strip.row_start, strip.row_end) : null;
        if (rects) {
          for (const [x, y, w, h] of rects) {
            const part = document.createElement("div");
            part.className = "in-flight part";
            part.dataset.node = strip.node;
            Object.assign(part.style, { borderColor: c, left: `${(100 * x) / view.width}%`, width: `${(100 * w) / view.width}%`,
              top: `${(100 * y) / view.height}%`, height: `${(100 * h) / view.height}%` });
            boxes.push(part);
          }
          // Only its label, at its first column's blocks.
          Object.assign(box.style, { border: "none", top: `${(100 * rects[0][1]) / view.height}%`, height: "0" });
        }
        const label = document.createElement("span");
        label.style.background = c;
        const doing = { pretrace: " radiosity pretrace", preview: " preview" }[strip.kind] || "";
        label.textContent = `${strip.node}${doing} ${Math.round(strip.progress * 100)}%`;
        box.append(label);
        boxes.push(box);
      }
    }
    $("overlay").replaceChildren(...boxes);
  }

  function renderFrameControls(view) {
    const info = view.info;
    const animated = info.frames_total > 1;
    $("frame-controls").hidden = !animated;
    if (!animated) return;
    const steps = stepFrames(view);
    const at = steps.indexOf(view.frame);
    $("frame-label").textContent = `frame ${view.frame} (${info.frames_done}/${info.frames_total} done)`;
    $("frame-prev").disabled = at <= 0;
    $("frame-next").disabled = at < 0 || at >= steps.length - 1;
    $("frame-play").textContent = view.playing ? "\u275a\u275a" : "\u25b6\u25b6";
    $("frame-play").disabled = steps.length < 2;
    $("frame-follow").disabled = !view.framePinned;
  }

  function stepFrame(direction, wrap = false) {
    const view = app.view;
    if (!view || !view.info) return;
    if (!wrap) stopPlaying(view);
    const steps = stepFrames(view);
    let next = steps[steps.indexOf(view.frame) + direction];
    if (next === undefined && wrap) next = steps[0];
    if (next === undefined) return;
    view.frame = next;
    view.framePinned = true;
    drawFrame(view);
    renderView(view);
  }

  // Play the frames with pixels in turn, while the job runs too (▶▶), or follow the newest again (⏭).
  const PLAY_EVERY_MS = 100;
  function togglePlay() {
    const view = app.view;
    if (!view || !view.info) return;
    if (view.playing) {
      stopPlaying(view);
    } else {
      view.framePinned = true;
      view.playing = setInterval(() => (app.view === view ? stepFrame(1, true) : stopPlaying(view)), PLAY_EVERY_MS);
    }
    renderView(view);
  }

  function followFrames() {
    const view = app.view;
    if (!view || !view.info) return;
    stopPlaying(view);
    view.framePinned = false;
    chooseFrame(view);
    drawFrame(view);
    renderView(view);
  }

  // ---- downloads (downloads.js) -------------------------------------------------------------------

  async function download(save) {
    const view = app.view;
    if (!view || !view.info) return;
    try {
      await save(app.client, view);
    } catch (err) {
      callFailed(err);
    }
  }

  // ---- actions (submit token) ---------------------------------------------------------------------

  async function act(method, ...args) {
    const view = app.view;
    if (!view) return;
    try {
      await app.client.call(method, view.job, ...args);
      say(`${method.replace("jobs.", "").replace("_", " ")}: job ${view.job}`);
      refreshSoon();
    } catch (err) {
      callFailed(err);
    }
  }

  // ---- wiring -------------------------------------------------------------------------------------

  function start() {
    $("sign-in-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      $("sign-in-error").textContent = "";
      try {
        await signIn(token, true);
        $("token").value = "";
      } catch (err) {
        $("sign-in-error").textContent = err.code === FAULT.UNAUTHORIZED ? "The controller refused this token." : err.message;
      }
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    $("follow").addEventListener("click", () => { app.follow = true; chooseJob(); renderJobs(); });
    $("frame-prev").addEventListener("click", () => stepFrame(-1));
    $("frame-next").addEventListener("click", () => stepFrame(1));
    $("frame-play").addEventListener("click", togglePlay);
    $("frame-follow").addEventListener("click", followFrames);
    $("download-png").addEventListener("click", () => download(window.povdownloads.png));
    $("download-apng").addEventListener("click", () => download(window.povdownloads.apng));
    $("action-pause").addEventListener("click", () => act("jobs.pause"));
    $("action-resume").addEventListener("click", () => act("jobs.resume"));
    $("action-cancel").addEventListener("click", () => act("jobs.cancel"));
    $("action-priority").addEventListener("click", () => act("jobs.set_priority", parseInt($("priority").value, 10)));
    window.povsubmit.wire(() => app.client, (id) => { pinJob(id); refreshSoon(); }, callFailed);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshSoon(); });
    window.addEventListener("resize", fitCanvas);
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) resume(saved);
  }

  // A reload with a token in this tab: sign in again, waiting for the controller if it is away.
  async function resume(token) {
    let delay = BACKOFF_MS[0];
    for (;;) {
      try {
        await signIn(token, false);
        return;
      } catch (err) {
        if (err.code !== FAULT.UNREACHABLE) {
          signOut(err.code === FAULT.UNAUTHORIZED ? "The controller no longer accepts this token." : err.message);
          return;
        }
        setLink(false);
        await sleep(delay);
        delay = Math.min(delay * 2, BACKOFF_MS[1]);
      }
    }
  }

  // For tests and the curious: what is on screen.
  window.povfarm = {
    state: () => ({
      role: app.role, link: app.linkOk, job: app.view ? app.view.job : 0,
      jobState: app.view && app.view.info ? app.view.info.state : "",
      frame: app.view ? app.view.frame : null, cursor: app.view ? app.view.cursor : 0,
      rows: app.view && app.view.frame !== null ? paintedRows(app.view.frames.get(app.view.frame)) : 0,
      pixels: app.view && app.view.frame !== null ? hasPixels(app.view.frames.get(app.view.frame)) : false,
      framesWithPixels: app.view ? stepFrames(app.view) : [], playing: Boolean(app.view && app.view.playing),
      drained: app.view ? app.view.drained : false,
      awaiting: Boolean(app.idle),                  // no job yet: watching for the first one
      via: app.view ? app.view.via || "" : "",       // the feed: "stream", or "polls" (an older controller)
    }),
    call: (method, ...params) => app.client.call(method, ...params),
    colour, currentWork, EtaShown,      // what tests/test_web.py compares with the Python viewer's
    // Paint a viewer.watch reply as if the feed had sent it (rows: base64 of zlib data).
    paint: (reply) => feed.applyFeed(app.view, Object.assign({}, reply, {
      strips: reply.strips.map((s) => Object.assign({}, s, { rows: window.povrpc.base64ToBytes(s.rows) })),
    })),
  };

  start();
})();
