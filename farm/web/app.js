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
  const { RpcClient, RpcError, FAULT, NoStream, feedRecords, inflate } = window.povrpc;
  const { zipFiles, repackZip, makeApng } = window.povzip;

  const TOKEN_KEY = "povfarm.token";
  const POLL_TIMEOUT = 25;                 // seconds one viewer.watch may wait (the controller caps it at 30)
  const REFRESH_MS = 2000;                 // jobs and nodes tables
  const HIDDEN_REFRESH_MS = 15000;         // ... while the tab is hidden
  const BACKOFF_MS = [500, 5000];          // retry delays grow from the first to the second
  const FINISHED = new Set(["done", "failed", "canceled"]);
  const LAST_CURSOR = 2 ** 31 - 1;         // a feed cursor past every piece: only what comes next
  const CHECKER = 8;
  const UNRENDERED = [0x2c, 0x36];         // dark checkerboard: rows nobody has rendered yet
  // A node's colour from its name, as farm/viewing/colours.py derives it for the pygame viewer (same
  // palette, same hash: tests/test_web.py checks they agree).
  const NODE_COLOURS = ["#ffb800", "#00c8ff", "#ff54a8", "#78e850", "#ba8cff", "#ff7a40", "#40e0c8", "#f0f060"];

  const ETA_SMOOTHING = 6;                 // seconds: how fast a shown ETA follows the controller's estimates

  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

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
    stopView();
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
    if (wanted && (!app.view || app.view.job !== wanted)) showJob(wanted);
    else if (!wanted && app.follow) awaitFirstJob();
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

  // The ETA shown for one job, as farm/viewing/eta.py's ShownEta does it for the pygame viewer: each
  // estimate of the controller moves it by the share of the gap the time since the last one earns, it
  // counts down between them, and it is held still while the controller is out of reach.
  class EtaShown {
    constructor() { this.value = null; this.at = 0; this.guessed = true; this.heldAt = null; }
    get held() { return this.heldAt !== null; }
    left(now) {
      if (this.value === null) return null;
      const until = this.heldAt === null ? now : Math.min(now, this.heldAt);
      return Math.max(0, this.value - Math.max(0, until - this.at));
    }
    // A guess (from the fraction done) is shown only until the controller's first measured estimate.
    measure(estimate, now, guess = false) {
      if (estimate === null || estimate === undefined) return;
      estimate = Math.max(0, Number(estimate));
      const shown = this.left(now);
      if (shown === null || (this.guessed && !guess)) [this.value, this.guessed] = [estimate, guess];
      else this.value = shown + (1 - Math.exp(-Math.max(0, now - this.at) / ETA_SMOOTHING)) * (estimate - shown);
      this.at = now;
      this.heldAt = null;
    }
    hold(now) { if (this.heldAt === null) this.heldAt = now; }
    resume(now) {
      if (this.heldAt === null) return;
      this.at += Math.max(0, now - this.heldAt);
      this.heldAt = null;
    }
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

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    const s = Math.round(seconds);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}` : `${m}:${String(r).padStart(2, "0")}`;
  }

  // A node's measured upload rate in bits per second, as links are sold ("-" until it reports one).
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

  function byteSize(bytes) {
    for (const [unit, scale] of [["TB", 1e12], ["GB", 1e9], ["MB", 1e6], ["kB", 1e3]]) {
      if (bytes >= scale) return `${Number((bytes / scale).toPrecision(3))} ${unit}`;
    }
    return `${Math.round(bytes || 0)} B`;
  }

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

  function pinJob(id) {
    app.follow = false;
    app.pinned = id;
    chooseJob();
    renderJobs();
  }

  // ---- the live image -----------------------------------------------------------------------------

  // Following with no job yet: a stream on "the newest job" watches it from its submit (its first units
  // send live blocks at once) and names it the moment it exists.
  function stopView() {
    if (app.view) stopPlaying(app.view);
    if (app.view) app.view.abort.abort();
    app.view = null;
    if (app.idle) app.idle.abort();
    app.idle = null;
  }

  // No job yet: as followNewest does once a job is over, a stream on "the newest job" from its end tells
  // the controller that a viewer watches what comes next (its preview, its strips cut to paint early), and
  // names the first job the moment it is submitted.
  async function awaitFirstJob() {
    if (app.view || app.idle) return;
    const idle = app.idle = new AbortController();
    try {
      for await (const records of feedRecords(app.client.token, 0, LAST_CURSOR, idle.signal)) {
        const first = records.find(({ header }) => header.type === "job" && header.job && header.job.id);
        if (first && app.follow && !app.view) return showJob(first.header.job.id);
      }
    } catch (err) {
      // Aborted (a job shown, signed out) or the link broke: the next refresh of the tables tries again.
    } finally {
      if (app.idle === idle) app.idle = null;
    }
  }

  function showJob(id) {
    stopView();
    const view = {
      job: id, cursor: 0, liveCursor: 0, info: null, inFlight: [], frames: new Map(), frame: null, framePinned: false,
      width: 0, height: 0, channels: 3, bits: 8, abort: new AbortController(), drained: false,
    };
    app.view = view;
    $("overlay").replaceChildren();
    $("job-error").hidden = true;
    say("");
    streamLoop(view);
  }

  async function streamLoop(view) {
    let delay = BACKOFF_MS[0];
    while (view === app.view) {
      try {
        for await (const records of feedRecords(app.client.token, view.job, view.cursor, view.abort.signal, true)) {
          if (view !== app.view) return;
          view.via = "stream";
          setLink(true);
          delay = BACKOFF_MS[0];
          if (await applyRecords(view, records)) {          // the job ended and every strip is painted
            if (app.follow) followNewest(view);
            return;
          }
        }
      } catch (err) {
        if (err.name === "AbortError" || view !== app.view) return;
        if (err instanceof NoStream) return watchLoop(view);
        callFailed(err);
        if (err.code === FAULT.UNKNOWN_JOB) return;
        await sleep(delay);
        delay = Math.min(delay * 2, BACKOFF_MS[1]);
      }
    }
  }

  // Following the farm once the shown job is over: a stream on "the newest job" (job 0) from its end
  // tells the controller that a viewer watches whatever comes next, so a new job gets its preview and
  // strips cut to paint early (unwatched on a one-box farm, a still is one render that shows only at its
  // end), and it names the new job the moment it starts.
  async function followNewest(view) {
    try {
      for await (const records of feedRecords(app.client.token, 0, LAST_CURSOR, view.abort.signal)) {
        if (view !== app.view || !app.follow) return;
        const next = records.find(({ header }) => header.type === "job" && header.job && header.job.id > view.job);
        if (next) return showJob(next.header.job.id);
      }
    } catch (err) {
      // Aborted (another job shown) or the link broke: the jobs list picks the next job up as before.
    }
  }

  // Records of one read as viewer.watch replies: pieces go with the status before them; a status is
  // applied when it comes (the first of a job comes before its pieces, later ones after them).
  async function applyRecords(view, records) {
    let pieces = [], live = [];
    const flush = async () => {
      if (!(pieces.length || live.length) || !view.info) return;
      const cursor = pieces.length ? pieces[pieces.length - 1].cursor : view.cursor;
      await applyFeed(view, { job: view.info, cursor, strips: pieces, in_flight: view.inFlight, live });
      pieces = [];
      live = [];
    };
    for (const { header, payload } of records) {
      if (header.type === "piece" && header.kind === "live") {
        live.push(Object.assign({}, header, { rows: payload }));
      } else if (header.type === "piece") {
        pieces.push(Object.assign({}, header, { rows: payload }));
      } else if (header.type === "job") {
        await flush();
        await applyFeed(view, { job: header.job, cursor: view.cursor, strips: [], in_flight: header.in_flight });
        // The first status of a job that had already ended comes before its pieces: only the end says
        // that every piece is in.
        view.drained = false;
      } else if (header.type === "end") {
        await flush();
        view.drained = true;
        renderView(view);
        return true;
      }
    }
    await flush();
    return false;
  }

  async function watchLoop(view) {
    let delay = BACKOFF_MS[0];
    while (view === app.view) {
      let reply;
      try {
        reply = await app.client.callWith({ signal: view.abort.signal }, "viewer.watch", view.job, view.cursor,
          POLL_TIMEOUT, view.liveCursor);
      } catch (err) {
        if (err.name === "AbortError" || view !== app.view) return;
        callFailed(err);
        if (err.code === FAULT.UNKNOWN_JOB) return;
        await sleep(delay);
        delay = Math.min(delay * 2, BACKOFF_MS[1]);
        continue;
      }
      delay = BACKOFF_MS[0];
      if (view !== app.view) return;
      view.via = "polls";
      setLink(true);
      await applyFeed(view, reply);
      if (view.drained) return;         // the job ended and every strip is painted: nothing more will come
    }
  }

  async function applyFeed(view, reply) {
    const info = reply.job;
    if (!info || !info.id) return;
    if (!view.info || info.width !== view.width || info.height !== view.height) {
      Object.assign(view, { width: info.width, height: info.height, channels: info.channels || 3,
        bits: info.bits || 8, frames: new Map() });
      sizeCanvas(view);
    }
    const pieces = await Promise.all(reply.strips.map(async (piece) => {
      try {
        const inflated = await inflate(piece.rows);
        const filtered = piece.encoding === "filtered";
        return { piece, rows: filtered ? unfilter(inflated, pieceRowBytes(view, piece), view) : inflated };
      } catch (err) {
        console.warn(`job ${view.job}: a strip cannot be inflated`, err);
        return null;
      }
    }));
    const blocks = await Promise.all((reply.live || []).map(async (block) => {
      try {
        return { block, rows: await inflate(block.rows) };
      } catch (err) {
        return null;
      }
    }));
    if (view !== app.view) return;
    const dirty = new Set();
    for (const entry of pieces) {
      if (entry && paintPiece(view, entry.piece, entry.rows)) dirty.add(entry.piece.frame);
    }
    for (const entry of blocks) {          // after the final rows: a block never covers them
      if (entry && paintBlock(view, entry.block, entry.rows)) dirty.add(entry.block.frame);
    }
    if (reply.live_cursor !== undefined) view.liveCursor = reply.live_cursor;
    view.info = info;
    measureEta(info);
    view.cursor = reply.cursor;
    view.inFlight = reply.in_flight || [];
    view.drained = FINISHED.has(info.state) && !reply.strips.length;
    chooseFrame(view);
    if (dirty.has(view.frame) || view.drawn !== view.frame) drawFrame(view);
    renderView(view);
    renderJobs();
  }

  function frameCanvas(view, number) {
    let frame = view.frames.get(number);
    if (!frame) {
      const img = new ImageData(view.width, view.height);
      fillChecker(img);
      frame = { img, spans: [], preview: null, blocks: [] };
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
    toRgba(rows, (end - start) * view.width, view.channels, view.bits, frame.img.data, start * view.width * 4);
    frame.spans = mergeSpan(frame.spans, [start, end]);
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
    for (let y = top; y <= bottom; y++) {
      if (frame.spans.some(([start, end]) => y >= start && y < end)) continue;
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

  // The newest frame with pixels (final rows, live blocks or a preview: never an empty one while one has
  // pixels); unless the user stepped to one or plays them.
  function chooseFrame(view) {
    if (view.framePinned && view.frames.has(view.frame)) return;
    view.framePinned = false;
    stopPlaying(view);
    const shown = stepFrames(view);
    view.frame = shown.length ? shown[shown.length - 1] : (view.frame || view.info.first_frame || 1);
  }

  function hasPixels(frame) {
    return Boolean(frame && (frame.spans.length || frame.blocks.length || frame.preview));
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
      for (const [start, end] of frame.spans) ctx.putImageData(frame.img, 0, 0, 0, start, view.width, end - start);
    } else {
      ctx.putImageData(frame.img, 0, 0);
    }
    view.drawn = view.frame;
    canvas.dataset.job = view.job;
    canvas.dataset.frame = view.frame;
    canvas.dataset.rows = paintedRows(frame);
  }

  // 32-bit FNV-1a of the name's UTF-8 bytes, its high half folded into the low one.
  function nameHash(name) {
    let value = 0x811c9dc5;
    for (const byte of new TextEncoder().encode(name)) value = Math.imul(value ^ byte, 0x01000193) >>> 0;
    return (value ^ (value >>> 16)) >>> 0;
  }

  function colour(node) {
    return NODE_COLOURS[nameHash(String(node)) % NODE_COLOURS.length];
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

  function stepFrames(view) {
    return [...view.frames.keys()].filter((n) => hasPixels(view.frames.get(n))).sort((a, b) => a - b);
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

  function stopPlaying(view) {
    if (view.playing) clearInterval(view.playing);
    view.playing = null;
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

  // ---- downloads ----------------------------------------------------------------------------------

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

  function frameName(info, number) {
    const stem = info.scene.replace(/^.*\//, "").replace(/\.[^.]*$/, "");
    return info.frame_digits ? `${stem}${String(number).padStart(info.frame_digits, "0")}.png` : `${stem}.png`;
  }

  async function downloadPng() {
    const view = app.view;
    if (!view || !view.info) return;
    try {
      const number = view.info.frames_total > 1 ? view.frame : 0;
      saveBytes(await app.client.call("jobs.fetch", view.job, number), frameName(view.info, number));
    } catch (err) {
      callFailed(err);
    }
  }

  async function downloadApng() {
    const view = app.view;
    if (!view || !view.info) return;
    try {
      const pngs = [];
      for (let n = view.info.first_frame; n <= view.info.last_frame; n++) {
        pngs.push(await app.client.call("jobs.fetch", view.job, n));
      }
      const stem = view.info.scene.replace(/^.*\//, "").replace(/\.[^.]*$/, "");
      saveBytes(makeApng(pngs, 100), `${stem}-animation.png`);
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

  // ---- submit a scene -----------------------------------------------------------------------------

  let bundle = null;     // {zip: Uint8Array, names: [str]} of the chosen files

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
      const digest = await app.client.call("bundles.upload", bundle.zip);
      const id = await app.client.call("jobs.submit", submitSpec(digest));
      submitMessage(`job ${id} queued`);
      pinJob(id);
      refreshSoon();
    } catch (err) {
      if (err.code === FAULT.UNREACHABLE || err.code === FAULT.UNAUTHORIZED) callFailed(err);
      submitMessage(err.message, true);
    } finally {
      $("submit-button").disabled = false;
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
    $("download-png").addEventListener("click", downloadPng);
    $("download-apng").addEventListener("click", downloadApng);
    $("action-pause").addEventListener("click", () => act("jobs.pause"));
    $("action-resume").addEventListener("click", () => act("jobs.resume"));
    $("action-cancel").addEventListener("click", () => act("jobs.cancel"));
    $("action-priority").addEventListener("click", () => act("jobs.set_priority", parseInt($("priority").value, 10)));
    $("submit-files").addEventListener("change", filesChosen);
    $("submit-form").addEventListener("submit", submitScene);
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
    paint: (reply) => applyFeed(app.view, Object.assign({}, reply, {
      strips: reply.strips.map((s) => Object.assign({}, s, { rows: window.povrpc.base64ToBytes(s.rows) })),
    })),
  };

  start();
})();
