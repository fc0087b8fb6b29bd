// The job on screen, its pixels as they come: the feed stream (GET /feed), one response that stays open
// and brings each piece as it is stored (final rows, the preview, live blocks), or, from a controller
// without it, viewer.watch long polls; following the farm, the newest job once the shown one is over.
// As farm/viewing/feed.py does it for the pygame viewer.
"use strict";

(() => {
  const { FAULT, NoStream, feedRecords, inflate } = window.povrpc;
  const { pieceRowBytes, unfilter, paintPiece, paintBlock, stopPlaying } = window.povcanvas;

  const POLL_TIMEOUT = 25;                 // seconds one viewer.watch may wait (the controller caps it at 30)
  const BACKOFF_MS = [500, 5000];          // retry delays grow from the first to the second
  const FINISHED = new Set(["done", "failed", "canceled"]);
  const LAST_CURSOR = 2 ** 31 - 1;         // a feed cursor past every piece: only what comes next
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // The feed of `app` (its client, view, follow, idle), painting through `ui`: say, setLink, callFailed,
  // measureEta, chooseFrame, drawFrame, renderView, renderJobs, sizeCanvas, and shown(view) (a job shown).
  class Feed {
    constructor(app, ui) { this.app = app; this.ui = ui; }

    // Following with no job yet: a stream on "the newest job" watches it from its submit (its first units
    // send live blocks at once) and names it the moment it exists.
    stopView() {
      if (this.app.view) stopPlaying(this.app.view);
      if (this.app.view) this.app.view.abort.abort();
      this.app.view = null;
      if (this.app.idle) this.app.idle.abort();
      this.app.idle = null;
    }

    // No job yet: as followNewest does once a job is over, a stream on "the newest job" from its end tells
    // the controller that a viewer watches what comes next (its preview, its strips cut to paint early), and
    // names the first job the moment it is submitted.
    async awaitFirstJob() {
      if (this.app.view || this.app.idle) return;
      const idle = this.app.idle = new AbortController();
      try {
        for await (const records of feedRecords(this.app.client.token, 0, LAST_CURSOR, idle.signal)) {
          const first = records.find(({ header }) => header.type === "job" && header.job && header.job.id);
          if (first && this.app.follow && !this.app.view) return this.showJob(first.header.job.id);
        }
      } catch (err) {
        // Aborted (a job shown, signed out) or the link broke: the next refresh of the tables tries again.
      } finally {
        if (this.app.idle === idle) this.app.idle = null;
      }
    }

    showJob(id) {
      this.stopView();
      const view = {
        job: id, cursor: 0, liveCursor: 0, info: null, inFlight: [], frames: new Map(), frame: null,
        framePinned: false, width: 0, height: 0, channels: 3, bits: 8, abort: new AbortController(), drained: false,
      };
      this.app.view = view;
      this.ui.shown(view);
      this.streamLoop(view);
    }

    async streamLoop(view) {
      let delay = BACKOFF_MS[0];
      while (view === this.app.view) {
        try {
          for await (const records of feedRecords(this.app.client.token, view.job, view.cursor, view.abort.signal, true)) {
            if (view !== this.app.view) return;
            view.via = "stream";
            this.ui.setLink(true);
            delay = BACKOFF_MS[0];
            if (await this.applyRecords(view, records)) {          // the job ended and every strip is painted
              if (this.app.follow) this.followNewest(view);
              return;
            }
          }
        } catch (err) {
          if (err.name === "AbortError" || view !== this.app.view) return;
          if (err instanceof NoStream) return this.watchLoop(view);
          this.ui.callFailed(err);
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
    async followNewest(view) {
      try {
        for await (const records of feedRecords(this.app.client.token, 0, LAST_CURSOR, view.abort.signal)) {
          if (view !== this.app.view || !this.app.follow) return;
          const next = records.find(({ header }) => header.type === "job" && header.job && header.job.id > view.job);
          if (next) return this.showJob(next.header.job.id);
        }
      } catch (err) {
        // Aborted (another job shown) or the link broke: the jobs list picks the next job up as before.
      }
    }

    // Records of one read as viewer.watch replies: pieces go with the status before them; a status is
    // applied when it comes (the first of a job comes before its pieces, later ones after them).
    async applyRecords(view, records) {
      let pieces = [], live = [];
      const flush = async () => {
        if (!(pieces.length || live.length) || !view.info) return;
        const cursor = pieces.length ? pieces[pieces.length - 1].cursor : view.cursor;
        await this.applyFeed(view, { job: view.info, cursor, strips: pieces, in_flight: view.inFlight, live });
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
          await this.applyFeed(view, { job: header.job, cursor: view.cursor, strips: [], in_flight: header.in_flight });
          // The first status of a job that had already ended comes before its pieces: only the end says
          // that every piece is in.
          view.drained = false;
        } else if (header.type === "end") {
          await flush();
          view.drained = true;
          this.ui.renderView(view);
          return true;
        }
      }
      await flush();
      return false;
    }

    async watchLoop(view) {
      let delay = BACKOFF_MS[0];
      while (view === this.app.view) {
        let reply;
        try {
          reply = await this.app.client.callWith({ signal: view.abort.signal }, "viewer.watch", view.job, view.cursor,
            POLL_TIMEOUT, view.liveCursor);
        } catch (err) {
          if (err.name === "AbortError" || view !== this.app.view) return;
          this.ui.callFailed(err);
          if (err.code === FAULT.UNKNOWN_JOB) return;
          await sleep(delay);
          delay = Math.min(delay * 2, BACKOFF_MS[1]);
          continue;
        }
        delay = BACKOFF_MS[0];
        if (view !== this.app.view) return;
        view.via = "polls";
        this.ui.setLink(true);
        await this.applyFeed(view, reply);
        if (view.drained) return;         // the job ended and every strip is painted: nothing more will come
      }
    }

    async applyFeed(view, reply) {
      const info = reply.job;
      if (!info || !info.id) return;
      if (!view.info || info.width !== view.width || info.height !== view.height) {
        Object.assign(view, { width: info.width, height: info.height, channels: info.channels || 3,
          bits: info.bits || 8, shear: info.shear || 0, block: info.block || 32, frames: new Map() });
        this.ui.sizeCanvas(view);
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
      if (view !== this.app.view) return;
      const dirty = new Set();
      for (const entry of pieces) {
        if (entry && paintPiece(view, entry.piece, entry.rows)) dirty.add(entry.piece.frame);
      }
      for (const entry of blocks) {          // after the final rows: a block never covers them
        if (entry && paintBlock(view, entry.block, entry.rows)) dirty.add(entry.block.frame);
      }
      if (reply.live_cursor !== undefined) view.liveCursor = reply.live_cursor;
      view.info = info;
      this.ui.measureEta(info);
      view.cursor = reply.cursor;
      view.inFlight = reply.in_flight || [];
      view.drained = FINISHED.has(info.state) && !reply.strips.length;
      this.ui.chooseFrame(view);
      if (dirty.has(view.frame) || view.drawn !== view.frame) this.ui.drawFrame(view);
      this.ui.renderView(view);
      this.ui.renderJobs();
    }
  }

  window.povfeed = { Feed, FINISHED, BACKOFF_MS, sleep };
})();
