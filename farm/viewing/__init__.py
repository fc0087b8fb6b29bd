"""The parts of `povfarm viewer` (its entry point is `farm.viewer.run_viewer`), each testable on its own:

- `canvas`: the pixels of one frame, as rendered and as the screen shows them (pure);
- `state`: what the viewer shows, kept up to date from the controller's replies (pure, no pygame, no
  network, an injectable clock);
- `feed`: the network side, in threads, reaching the window through one queue;
- `window`: the pygame window; pygame is imported only when it opens.
"""
