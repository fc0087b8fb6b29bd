// POV-Ray's logs of the job on screen (jobs.log), one block per run of a unit, and the scene's messages of
// each frame once (jobs.messages), under the image. Reads the job on screen from window.povfarm (app.js)
// and calls the API through it; polls every few seconds while the job runs, and stops once it has ended
// and everything is read. A controller without the feature "unit_logs" keeps no logs: the panel stays hidden.
"use strict";

(() => {
  const POLL_MS = 2000;
  const HIDDEN_POLL_MS = 15000;
  const MAX_RUNS = 500;                    // runs shown at most (the newest are dropped past it)
  const FINISHED = new Set(["done", "failed", "canceled"]);
  const $ = (id) => document.getElementById(id);

  const logs = { job: 0, cursor: 0, runs: 0, complete: false, enabled: null };

  function reset(job) {
    Object.assign(logs, { job, cursor: 0, runs: 0, complete: false });
    $("log-runs").replaceChildren();
    $("log-messages").textContent = "";
    $("log-note").textContent = "";
  }

  async function enabled() {
    if (logs.enabled === null) {
      const version = await window.povfarm.call("api.version");
      logs.enabled = (version.features || []).includes("unit_logs");
    }
    return logs.enabled;
  }

  function runBlock(entry) {
    const block = document.createElement("details");
    block.className = "log-run " + entry.outcome;
    const summary = document.createElement("summary");
    const frames = entry.frame === entry.frame_last ? `frame ${entry.frame}` : `frames ${entry.frame}-${entry.frame_last}`;
    const kind = entry.kind === "rows" ? "" : ` (${entry.kind})`;
    summary.textContent = `unit ${entry.unit}${kind} · ${frames} · attempt ${entry.attempt} · ${entry.node} · `
      + `${entry.outcome}, ${entry.ending} · ${entry.seconds.toFixed(2)} s`;
    const text = document.createElement("pre");
    const command = document.createElement("div");
    command.className = "log-command";
    command.textContent = "$ " + entry.command.join(" ");
    text.append(command);
    for (const [stream, line] of entry.lines) {
      const span = document.createElement("span");
      span.className = "log-" + stream;
      span.textContent = line + "\n";
      text.append(span);
    }
    if (entry.cut) {
      const cut = document.createElement("span");
      cut.className = "log-cut";
      cut.textContent = `[${entry.cut}]\n`;
      text.append(cut);
    }
    block.append(summary, text);
    return block;
  }

  async function readMore(job) {
    for (;;) {
      const reply = await window.povfarm.call("jobs.log", job, { after: logs.cursor });
      if (job !== logs.job) return false;
      for (const entry of reply.logs) {
        if (logs.runs < MAX_RUNS) $("log-runs").append(runBlock(entry));
        logs.runs += 1;
      }
      logs.cursor = reply.cursor;
      if (logs.runs > MAX_RUNS) $("log-note").textContent = `the first ${MAX_RUNS} of ${logs.runs} runs: povfarm log ${job} prints them all`;
      if (!reply.more || !reply.logs.length) return reply.logs.length > 0;
    }
  }

  async function showMessages(job) {
    const frames = await window.povfarm.call("jobs.messages", job);
    if (job !== logs.job) return;
    const several = frames.length > 1;
    $("log-messages").textContent = frames.filter((f) => f.text).map((f) => (several ? `frame ${f.frame}:\n` : "") + f.text).join("");
  }

  async function step() {
    const state = window.povfarm.state();
    if (!state.job || !window.povfarm.call) return;
    if (!(await enabled())) return;
    $("logs").hidden = false;
    if (state.job !== logs.job) reset(state.job);
    if (logs.complete) return;
    const ended = FINISHED.has(state.jobState);    // read before the logs: whatever ended it is in them
    if (await readMore(logs.job)) await showMessages(logs.job);
    logs.complete = ended;
  }

  async function loop() {
    for (;;) {
      try {
        if (window.povfarm && window.povfarm.state().role) await step();
      } catch (err) {
        // the page's own link indicator says when the controller is away; try again later
      }
      await new Promise((resolve) => setTimeout(resolve, document.hidden ? HIDDEN_POLL_MS : POLL_MS));
    }
  }

  loop();
})();
