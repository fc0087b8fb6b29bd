"""The node's side: what `povfarm node` (farm/node.py) runs besides its polling loop.

- task: a leased unit as the node receives it (`Task.from_wire`), and how its run ended;
- render: one unit's POV-Ray run, from bundle to delivered rows; frame_caches: the photon maps and radiosity
  caches a node's strips of one frame share;
- povray, sandbox, probe: the POV-Ray program, its confinement (bubblewrap) and the check that it works;
- photons: a scene's photon block told to save or load its map; statefile and gamma: the blocks POV-Ray
  writes to its render state file while it renders, as the final image's pixels;
- delivery, downloads, heartbeats: results going up, bundles coming down, leases renewed.
"""
