// The ETA a viewer shows, as farm/viewing/eta.py does it for the pygame viewer.
"use strict";

(() => {
  const ETA_SMOOTHING = 6;                 // seconds: how fast a shown ETA follows the controller's estimates

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

  window.poveta = { EtaShown };
})();
